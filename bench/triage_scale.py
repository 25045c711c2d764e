"""Triage throughput in this process, on a local Dask cluster of 1 worker and of 2 (issue 24), and the verdicts compared.

    python bench/triage_scale.py [--zoo /work/zoo] [--models 20] [--modes 0 1 2] [--out DIR] [--methods cleanse mmbd warp]

Takes ``--models`` of the zoo's 3-channel models (every third by name, for a mix of clean and backdoored
ones and of architectures), links their model files into one folder, and runs ``main.py triage`` on it
once per mode (0: in-process, N: ``--workers N``), each with a fresh results store and the zoo's
``patch/clean_valid.h5`` as clean data. Prints, per mode, the wall time, seconds per model, models per hour
and the speed-up over in-process, measured in this one run, with the load average before and after;
then whether every mode gave every model the same verdict and targets. Results go to ``DIR/results.json``.

The machine is shared: read the speed-ups as ratios measured under the load shown, not as absolute rates.
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

ROOT = Path(__file__).resolve().parent.parent


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def pick(zoo: Path, count: int) -> list[Path]:
    """Every third 3-channel zoo model by name, up to ``count``."""
    found = []
    for spec in sorted(zoo.glob("*/spec.json")):
        if json.loads(spec.read_text())["spec"].get("channels") == 3:
            model = next((spec.parent / n for n in ("model.keras", "model.h5") if (spec.parent / n).is_file()), None)
            if model is not None:
                found.append(model)
    return found[::3][:count]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="/work/zoo")
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--modes", type=int, nargs="+", default=[0, 1, 2], help="0: in-process; N: --workers N")
    parser.add_argument("--methods", nargs="+", help="the checks (default: triage's, i.e. every model-level method)")
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "triage-scale"))
    args = parser.parse_args(argv)
    zoo, out = Path(args.zoo), Path(args.out)
    folder = out / "models"
    folder.mkdir(parents=True, exist_ok=True)
    for model in pick(zoo, args.models):
        link = folder / f"{model.parent.name}{model.suffix}"
        if not link.exists():
            link.symlink_to(model)
    clean = zoo / "patch" / "clean_valid.h5"
    print(f"{len(list(folder.iterdir()))} models in {folder}; clean data {clean}; methods {' '.join(args.methods or ['(default)'])}; {os.cpu_count()} CPUs",
          flush=True)
    runs = {}
    for mode in args.modes:
        store = out / f"mode{mode}.sqlite"
        for stale in out.glob(f"mode{mode}.sqlite*"):
            stale.unlink()
        command = [sys.executable, str(ROOT / "main.py"), "triage", "--models", str(folder), "--clean", str(clean), "--store", str(store),
                   "--json", "--quiet"] + (["--methods", *args.methods] if args.methods else []) + (["--workers", str(mode)] if mode else [])
        before = loadavg()
        cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TROJANSCOPE_HOME": str(out / "home")})
        wall = time.perf_counter() - started
        cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the worker processes included: each was waited for
        cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
        if done.returncode != 0:
            print(f"mode {mode}: exit {done.returncode}\n{done.stderr[-3000:]}", flush=True)
            continue
        result = json.loads(done.stdout)
        runs[mode] = {"wall": wall, "cpu": cpu, "load_before": before, "load_after": loadavg(), "result": result}
        n = len(result["results"])
        print(f"mode {'in-process' if not mode else f'{mode} workers'}: {wall:.0f} s for {n} models ({wall / max(n, 1):.1f} s/model, "
              f"{3600 * n / wall:.0f} models/h, {cpu / max(n, 1):.1f} CPU s/model); load {before} -> {loadavg()}; "
              f"failed {result['failed']}, skipped {len(result['skipped'])}", flush=True)
    (out / "results.json").write_text(json.dumps({str(k): v for k, v in runs.items()}, indent=1))
    if 0 in runs:
        base = runs[0]["wall"]
        print("\n| mode | wall (s) | s/model | models/hour | speed-up | CPU s/model | load before -> after |\n"
              "| --- | --- | --- | --- | --- | --- | --- |")
        for mode, r in runs.items():
            n = len(r["result"]["results"])
            print(f"| {'in-process' if not mode else f'--workers {mode}'} | {r['wall']:.0f} | {r['wall'] / n:.1f} | {3600 * n / r['wall']:.0f} | "
                  f"{base / r['wall']:.2f}x | {r.get('cpu', float('nan')) / n:.1f} | {r['load_before']} -> {r['load_after']} |")
        verdicts = {mode: {Path(x["source"]).name: (x["verdict"], tuple(x["targets"])) for x in r["result"]["results"]} for mode, r in runs.items()}
        for mode, v in verdicts.items():
            differ = sorted(k for k in verdicts[0] if v.get(k) != verdicts[0][k])
            print(f"{'in-process' if not mode else f'--workers {mode}'}: {len(v)} verdicts, "
                  + ("all the same as in-process" if not differ else f"{len(differ)} differ from in-process: {differ}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
