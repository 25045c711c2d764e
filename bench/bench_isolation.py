"""What the isolated pre-scan (core/intake/isolation.py) costs per file: scan in a child vs in-process.

    python3 bench/bench_isolation.py [MODEL_OR_DATA ...]

Without arguments it builds a small .keras model and an .npz data file in a
temporary folder. Prints seconds per scan both ways and the ratio, measured in
this one run, plus the child's peak memory.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.intake import budget
from core.intake.isolation import run_isolated


def _files(folder: Path) -> list[Path]:
    import numpy as np

    from tests.hostile import tiny_model

    model = folder / "tiny.keras"
    tiny_model().save(model)
    data = folder / "data.npz"
    rng = np.random.default_rng(0)
    np.savez_compressed(data, x=rng.integers(0, 255, (2000, 28, 28, 3), dtype=np.uint8), y=rng.integers(0, 10, 2000))
    return [model, data]


def _target(path: Path) -> str:
    return "core.intake.data:prescan" if path.suffix in (".npz", ".h5") and "model" not in path.name and "weights" not in path.name else "core.intake.models:prescan"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(p) for p in sys.argv[1:]] or _files(Path(tmp))
        limits = budget.current()
        for path in paths:
            target = _target(path)
            inside, child = [], []
            cpu_before = _children_cpu()
            for _ in range(5):
                os.environ["TROJANSCOPE_ISOLATION"] = "0"
                started = time.perf_counter()
                run_isolated(target, (str(path),), str(path), limits)
                inside.append(time.perf_counter() - started)
                os.environ["TROJANSCOPE_ISOLATION"] = "1"
                started = time.perf_counter()
                run_isolated(target, (str(path),), str(path), limits)
                child.append(time.perf_counter() - started)
            cpu = (_children_cpu() - cpu_before) / 5
            a, b = statistics.median(inside), statistics.median(child)
            print(f"{path.name}: in-process {a:.3f} s, isolated child {b:.3f} s wall ({cpu:.3f} s CPU in the child), "
                  f"ratio {b / max(a, 1e-9):.1f}x, extra {b - a:.3f} s per load; load average {os.getloadavg()[0]:.1f}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak resident memory of a scan child: {peak:.0f} MB (counts the parent's pages the child shared before exec)")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
