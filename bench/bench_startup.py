"""Start-up time: from process start to the main window on screen, against a 2-second budget.

    python bench/bench_startup.py [--runs 3] [--importtime]

Each run starts a fresh interpreter (``QT_QPA_PLATFORM=offscreen``) that runs
``main.py`` exactly as an analyst would, with two probes: ``QApplication.exec``
is replaced by one ``processEvents()`` (the window's first paint, queued by
``show()``), the time, and an immediate exit; and when gui.app starts
``core.intake.tf_env.preload_in_background`` it records whether TensorFlow is already
in ``sys.modules`` (it must not be: it is imported on a background thread once
the window is up).
The figure is process start to first paint done; the clock starts in this
process just before the child is spawned, so interpreter start-up is included.

Prints every run, the median, and the ratio median / budget (below 1.0 passes).
``--importtime`` adds the ten slowest imports of one extra run (``-X importtime``),
which is how to find what to make lazy when the budget is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 2.0

# Runs in the child: main.py with QApplication.exec swapped for a probe.
CHILD = r"""
import os, sys, json, time, runpy
marks = {}
import core.intake.tf_env as tf_env
_preload = tf_env.preload_in_background

def preload_probe():
    # gui.app starts the background import once the window is up: is TensorFlow already in?
    marks["preload_at"] = time.time()
    marks["tensorflow_imported"] = "tensorflow" in sys.modules
    return _preload()

tf_env.preload_in_background = preload_probe
from PySide6.QtWidgets import QApplication

def probe(self=None):
    app = QApplication.instance()
    marks["exec_at"] = time.time()  # window constructed and show() called
    app.processEvents()
    marks["painted_at"] = time.time()
    marks["cpu_seconds"] = time.process_time()  # CPU time, less sensitive than wall time to a busy machine
    marks.setdefault("tensorflow_imported", "tensorflow" in sys.modules)
    marks["window_visible"] = any(w.isVisible() and type(w).__name__ == "MainWindow" for w in app.topLevelWidgets())
    print("STARTUP " + json.dumps(marks), flush=True)
    os._exit(0)  # do not wait for the background TensorFlow import

QApplication.exec = probe
sys.argv = ["main.py"]
runpy.run_path(sys.argv_main, run_name="__main__")
"""


def _env(home: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(QT_QPA_PLATFORM="offscreen", TROJANSCOPE_HOME=home, XDG_CONFIG_HOME=os.path.join(home, "config"))
    return env


def one_run(home: str) -> dict:
    """Spawn one child and return its probe record plus the measured seconds."""
    code = f"import sys; sys.argv_main = {str(ROOT / 'main.py')!r}\n" + CHILD
    started = time.time()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(home), capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("STARTUP ")]
    if not lines:
        raise SystemExit(f"the child did not reach the event loop (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    record = json.loads(lines[-1][len("STARTUP "):])
    record["seconds"] = record["painted_at"] - started
    record["shown_seconds"] = record["exec_at"] - started
    return record


def slowest_imports(home: str, top: int = 10) -> list[tuple[float, str]]:
    """Cumulative import times (s) of the slowest top-level-ish modules in one start."""
    code = f"import sys; sys.argv_main = {str(ROOT / 'main.py')!r}\n" + CHILD
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=ROOT, env=_env(home),
                          capture_output=True, text=True, timeout=120)
    rows = []
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        raw_name = parts[2][1:]  # one space after the bar, then two spaces per nesting level
        if raw_name.startswith(" "):
            continue  # nested import: counted in its parent's cumulative time
        rows.append((int(parts[1]) / 1e6, raw_name.strip()))
    return sorted(rows, reverse=True)[:top]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--importtime", action="store_true", help="also list the slowest imports of one run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="trojanscope-bench-") as home:
        one_run(home)  # warm the OS file cache; not counted (an analyst's second launch)
        records = [one_run(home) for _ in range(args.runs)]
        for n, r in enumerate(records, 1):
            print(f"run {n}: {r['seconds']:.2f} s to the main window shown and painted (show() called at {r['shown_seconds']:.2f} s; "
                  f"{r['cpu_seconds']:.2f} s of CPU); "
                  f"TensorFlow imported by then: "
                  f"{'yes' if r['tensorflow_imported'] else 'no'}; window visible: {'yes' if r['window_visible'] else 'no'}")
        median = statistics.median(r["seconds"] for r in records)
        cpu = statistics.median(r["cpu_seconds"] for r in records)
        tf_any = any(r["tensorflow_imported"] for r in records)
        print(f"start-up median {median:.2f} s over {len(records)} runs; ratio to the {BUDGET_S:g} s budget: "
              f"{median / BUDGET_S:.2f} ({'within' if median <= BUDGET_S else 'OVER'} budget); "
              f"TensorFlow imported before the window: {'yes' if tf_any else 'no'}")
        print(f"median CPU time to first paint {cpu:.2f} s (ratio {cpu / BUDGET_S:.2f}): about the wall time on an idle machine; "
              f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        if args.importtime:
            print("slowest imports (cumulative seconds, top level):")
            for seconds, name in slowest_imports(home):
                print(f"  {seconds:6.3f}  {name}")
    return 0 if median <= BUDGET_S and not tf_any else 1


if __name__ == "__main__":
    sys.exit(main())
