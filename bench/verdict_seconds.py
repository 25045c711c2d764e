"""How long the whole model-level verdict takes per model, by architecture (issue 22: at most 60 s on 2 cores).

    python bench/verdict_seconds.py [--zoo DIR] [--per-arch N]

Runs ``core.detect.model_level.judge`` -- Neural Cleanse with its
label-specific step, the clean twin, MM-BD and warp inversion, with default settings, the
model's clean_valid data -- on the first N zoo models of each architecture
(plain, wide, BN + GAP, deep), one after another, and prints each model's wall
and CPU seconds and the load average before and after. Run it on an otherwise
idle machine: the wall time is the figure an analyst waits; the CPU time
(user + system, all threads) is the load-independent one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.zoo import ARCHS, ZOO, cached, zoo_dir  # noqa: E402


def main(argv: Optional[list[str]] = None) -> int:
    from core.detect.model_level.judge import judge
    from core.intake.data import load_arrays, open_data
    from core.intake.fit import pair
    from core.intake.models import load_model
    from core.jobs import run_job

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", help="zoo folder (default: the shared cache, see bench/zoo.py)")
    parser.add_argument("--per-arch", type=int, default=2, help="models per architecture (default %(default)s)")
    args = parser.parse_args(argv)
    root = zoo_dir(args.zoo)
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    worst = 0.0
    for arch in ARCHS:
        specs = [s for s in ZOO if s.arch == arch and s.half == "dev"][: args.per_arch]
        for spec in specs:
            entry = cached(spec, root / spec.name)
            if entry is None:
                continue
            loaded = load_model(entry.model)
            arrays = load_arrays(open_data(entry.clean_valid), loaded.input_shape, limit=2000)
            started, cpu = time.perf_counter(), time.process_time()
            pairing = pair(loaded, arrays, "auto")
            verdict = run_job(judge(loaded, arrays, pairing.scale, pixel_max=pairing.pixel_max)).verdict
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            worst = max(worst, wall)
            print(f"{spec.name:26s} {arch:6s} {wall:6.1f} s wall {cpu:6.1f} s CPU  {verdict.summary}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}; slowest {worst:.1f} s wall (budget 60 s)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
