"""The longest stretches without a progress event in a scanner calibration: what bounds how fast a cancel lands.

    python3 bench/progress_gaps.py [--model wanet] [--method reference]

A job is cancelled between its events (core.jobs.run_job), so the longest gap
between two events is the worst wait after the analyst presses Cancel. Uses a
zoo model (bench/zoo.py) and the reversed triggers its verdict named (cached by
bench/scan_acceptance.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import scan_acceptance  # noqa: E402

from core.detect.input_level import scanner  # noqa: E402
from core.intake.data import open_data  # noqa: E402
from core.jobs import run_job  # noqa: E402
from core.intake.models import load_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wanet", help="zoo model name (default %(default)s)")
    parser.add_argument("--method", default="reference", choices=scanner.METHODS)
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    case = scan_acceptance.cases_from_zoo([args.model], include_all=True)[0]
    triggers = scan_acceptance.verdict_triggers(case)
    loaded = load_model(case["model"])
    events: list[tuple[float, str]] = []
    started = time.perf_counter()
    run_job(scanner.calibrate(loaded, open_data(case["clean_valid"]), scanner.ScanSettings(method=args.method, triggers=triggers)),
            lambda e: events.append((time.perf_counter(), str(getattr(e, "message", e)))))
    total = time.perf_counter() - started
    gaps = sorted(((b[0] - a[0], a[1], b[1]) for a, b in zip(events, events[1:])), reverse=True)[: args.top]
    print(f"{args.method} on {args.model}: {len(events)} events in {total:.1f} s; longest gaps:")
    for gap, before, after in gaps:
        print(f"  {gap:5.2f} s  between {before[:70]!r} and {after[:70]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
