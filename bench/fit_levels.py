"""Fit the verdict's levels on the zoo's dev half: the clean models' nulls and the cut-offs (issue 22).

    python bench/fit_levels.py [--zoo DIR] [--write]

Reads every dev-half model's cached detector statistics (bench/zoo_report.py
computes what is missing; never the test half), fits each detector's null on
the dev half's clean models (core.detect.model_level.levels.fit) and prints
what the fitted levels give on the dev half: caught BadNets per kind, clean
models called backdoored or suspicious. ``--write`` stores them in
core/detect/model_level/levels.json, which the product reads. The locked test
half is then measured with ``python bench/zoo_report.py --half test``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.zoo import TEST_GENERATION, ZOO, ZOO_VERSION, cached, zoo_dir  # noqa: E402
from bench.zoo_report import Row, half_summary, judged, model_statistics, results_for  # noqa: E402


def dev_rows(zoo: Optional[str], available: bool = False) -> list[tuple[object, dict]]:
    """(entry, cached statistics) of every dev-half model; ``available``: only those already computed."""
    from bench.zoo_report import RESULTS_VERSION

    root = zoo_dir(zoo)
    out = []
    for spec in ZOO:
        if spec.half != "dev":
            continue
        entry = cached(spec, root / spec.name)
        if entry is None:
            raise SystemExit(f"{spec.name} is not built: run python bench/zoo.py --half dev first")
        if available:
            path = entry.root / "detectors.json"
            record = json.loads(path.read_text()) if path.is_file() else {}
            if record.get("version") == RESULTS_VERSION:
                out.append((entry, record))
            continue
        out.append((entry, results_for(entry, fresh=False)))
    return out


def main(argv: Optional[list[str]] = None) -> int:
    from core.detect.model_level.levels import LEVELS_FILE, fit

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", help="zoo folder (default: the shared cache, see bench/zoo.py)")
    parser.add_argument("--write", action="store_true", help=f"write the fitted levels to {LEVELS_FILE.relative_to(ROOT)}")
    parser.add_argument("--available", action="store_true", help="use only the models whose statistics are cached (a look while they compute)")
    args = parser.parse_args(argv)
    rows = dev_rows(args.zoo, args.available)
    clean = [model_statistics(record) for entry, record in rows if not entry.spec.backdoored]
    fitted_on = (f"zoo v{ZOO_VERSION} dev half ({len(clean)} clean models of {len(rows)}; the test half is generation "
                 f"{TEST_GENERATION}), {datetime.date.today().isoformat()}")
    lv = fit(clean, fitted_on=fitted_on)
    for name, null in lv.nulls.items():
        print(f"null {name:5s}: log(1 + s) ~ N({null.mean:.3f}, {null.sd:.3f}^2) over {null.n} clean models")
    print(f"combined: Fisher sum log(1 + S) ~ N({lv.combined_null.mean:.3f}, {lv.combined_null.sd:.3f}^2); verdict: backdoored p < 2%, "
          f"suspicious p < 10%; one detector alone: backdoored < {lv.backdoored_p:.4g}, suspicious < {lv.suspicious_p:.4g}")
    for level, e in lv.expected.items():
        print(f"clean dev models at '{level}' or stronger, each left out of its own fit: {lv.measured_dev[level]['k']} of "
              f"{lv.measured_dev[level]['n']} = {e['rate']:.1%} (95% interval {e['low']:.1%}-{e['high']:.1%}; target {e['target']:.0%})")
    summary = half_summary([Row(entry, record, judged(record, lv)) for entry, record in rows])
    print(f"dev half with these levels: caught {summary['caught'].words()}; per kind "
          + ", ".join(f"{k} {a}/{b}" for k, (a, b) in summary["per_kind"].items()))
    print(f"  clean backdoored {summary['clean_backdoored'].words()}, suspicious {summary['clean_suspicious'].words()}; "
          f"AUC {summary['auc']:.3f}; missed {summary['missed']}; clean flagged {summary['clean_flagged']}")
    if args.write:
        tmp = LEVELS_FILE.with_name(f".{LEVELS_FILE.name}.tmp")
        tmp.write_text(json.dumps(lv.as_dict(), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, LEVELS_FILE)
        print(f"wrote {LEVELS_FILE}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
