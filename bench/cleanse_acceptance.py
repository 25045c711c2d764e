"""Issue 7 acceptance, one command: Neural Cleanse verdicts, unlearning repair, and the 1,283-class timing.

    python bench/cleanse_acceptance.py [--demo DIR] [--skip-deepid] [--only demo|clean|repair|deepid]

1. builds (or reuses) the demo in DIR (``python main.py demo --out DIR``);
2. ``cleanse`` (defaults) on the demo BadNet: verdict, flagged classes, time (target: backdoored, 7 flagged);
3. ``cleanse`` (defaults) on the clean control ``clean_model.keras`` (target: clean);
4. ``repair`` (defaults, clean data only: clean_valid.h5) then ``evaluate`` of the saved model on
   clean_test.h5 / poisoned_test.h5 (target: attack success < 5%, <= 2 points of clean accuracy lost);
5. ``cleanse`` (default K = 10) on the CSAW DeepID architecture
   (../shared/fixtures/csaw/fine_pruned_sunglasses_model.h5, 1,283 classes) with 200 random
   clean inputs of its 55x47x3 shape (target: < 10 minutes).

Every step goes through the real CLI (``python main.py ...``) in a subprocess and prints one line
with its figures and wall time, plus the load average, because the machine's 2 cores are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CSAW = ROOT.parent / "shared" / "fixtures" / "csaw" / "fine_pruned_sunglasses_model.h5"


CPU = {"last": 0.0}  # CPU seconds (user + sys) of the last command: the load-independent figure


def cli(*args: str) -> tuple[dict, float]:
    started = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), *args, "--json", "--quiet"],
                          capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU["last"] = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args[:1])} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout), seconds


def load() -> str:
    return "load average %.1f %.1f %.1f" % os.getloadavg()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default=str(Path(tempfile.gettempdir()) / "demo7"))
    parser.add_argument("--skip-deepid", action="store_true")
    parser.add_argument("--only", choices=["demo", "clean", "repair", "deepid"])
    args = parser.parse_args()
    demo = Path(args.demo)

    def want(step: str) -> bool:
        return args.only in (None, step)

    sys.path.insert(0, str(ROOT))
    from core.demo import DEMO_VERSION

    stale = (demo / "demo.json").is_file() and json.loads((demo / "demo.json").read_text()).get("version") != DEMO_VERSION
    if stale or not (demo / "demo.json").is_file():
        subprocess.run([sys.executable, str(ROOT / "main.py"), "demo", "--out", str(demo)], check=True,
                       stdout=subprocess.DEVNULL, cwd=ROOT)
    target = json.loads((demo / "demo.json").read_text())["target"]
    print(f"cores: {os.cpu_count()}, {load()}", flush=True)

    if want("demo"):
        out, secs = cli("cleanse", "--model", str(demo / "badnet.keras"), "--clean", str(demo / "clean_valid.h5"))
        ok = out["verdict"] == "backdoored" and target in out["flagged_classes"]
        print(f"[{'PASS' if ok else 'FAIL'}] demo BadNet: verdict {out['verdict']}, flagged {out['flagged_classes']} "
              f"(true target {target}), index {out['anomaly_index'].get(str(target))}, norms "
              f"{ {k: round(v, 1) for k, v in out['norms'].items()} }, {out['seconds']:.1f} s in the job / {secs:.1f} s "
              f"wall, CPU {CPU['last']:.0f} s; {load()}", flush=True)
    if want("clean"):
        out, secs = cli("cleanse", "--model", str(demo / "clean_model.keras"), "--clean", str(demo / "clean_valid.h5"))
        ok = out["verdict"] == "clean"
        low = min(out["norms"], key=lambda k: out["norms"][k])
        print(f"[{'PASS' if ok else 'FAIL'}] clean control: verdict {out['verdict']}, flagged {out['flagged_classes']}, "
              f"smallest norm class {low} (index {out['anomaly_index'][low]}), {out['seconds']:.1f} s; {load()}", flush=True)
    if want("repair"):
        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp) / "badnet.unlearned.keras"
            before, _ = cli("evaluate", "--model", str(demo / "badnet.keras"), "--clean", str(demo / "clean_test.h5"),
                            "--poisoned", str(demo / "poisoned_test.h5"))
            rep, secs = cli("repair", "--model", str(demo / "badnet.keras"), "--clean", str(demo / "clean_valid.h5"),
                            "--out", str(saved))
            after, _ = cli("evaluate", "--model", str(saved), "--clean", str(demo / "clean_test.h5"),
                           "--poisoned", str(demo / "poisoned_test.h5"))
        drop = before["clean_accuracy"] - after["clean_accuracy"]
        ok = after["attack_success_rate"] < 0.05 and drop <= 0.02
        print(f"[{'PASS' if ok else 'FAIL'}] repair (defaults, clean_valid.h5 only): flagged {rep['flagged_classes']}; "
              f"on clean_test/poisoned_test: clean accuracy {before['clean_accuracy']:.4f} -> {after['clean_accuracy']:.4f} "
              f"({-drop * 100:+.1f} points), attack success {before['attack_success_rate']:.4f} -> "
              f"{after['attack_success_rate']:.4f}; repair's own figures (held-out clean, reversed-trigger ASR): "
              f"{rep['before']} -> {rep['after']}; {secs:.1f} s; {load()}", flush=True)
    if want("deepid") and not args.skip_deepid:
        if not CSAW.is_file():
            print(f"[SKIP] {CSAW} not found")
            return 0
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "random_clean.npz"
            x = np.random.default_rng(0).uniform(0, 255, (200, 55, 47, 3)).astype(np.float32)
            np.savez(data, x=x)
            out, secs = cli("cleanse", "--model", str(CSAW), "--clean", str(data), "--scale", "255")
        ok = secs < 600 and len(out["candidates"]) == 10
        print(f"[{'PASS' if ok else 'FAIL'}] DeepID 1,283 classes, K=10: {secs:.0f} s wall (target < 600), screening "
              f"{out['screening'].get('seconds')} s, {len(out['screened_out'])} screened out, candidates {out['candidates']}, "
              f"verdict {out['verdict']}; CPU time {CPU['last']:.0f} s (user+sys); {load()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
