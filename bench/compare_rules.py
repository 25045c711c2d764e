"""How two ways of combining the detectors compare on the zoo's dev half, each clean model left out of its own fit.

    python bench/compare_rules.py [--zoo DIR]

The verdict (core/detect/model_level/verdict.py) combines the detectors' tails by Fisher's sum judged
against clean models; the rule it replaced took the smallest tail, corrected for the number of detectors
(Bonferroni/Sidak). Both are the product's own code: the second is the same levels without their combined
null. For each rule, every clean dev model is judged by levels fitted on the other clean dev models
(leave-one-out: none judges itself), every BadNet by levels fitted on all of them; printed: BadNets caught
with a true target (per kind), clean models at each level, the AUC. Reads the cached detector statistics
(bench/zoo_report.py computes what is missing) and never the test half. docs/zoo.md quotes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.fit_levels import dev_rows  # noqa: E402
from bench.zoo_report import Row, half_summary, judged, model_statistics  # noqa: E402

RULES = ("Fisher's sum (the verdict)", "smallest tail (Sidak)")


def leave_one_out(rows: list[tuple[object, dict]], rule: str) -> list[Row]:
    """Every dev model judged under ``rule``: clean ones by levels fitted without them, BadNets by levels fitted on all."""
    from core.detect.model_level.levels import fit

    def levels_without(skip: Optional[int]):
        clean = [model_statistics(record) for i, (entry, record) in enumerate(rows)
                 if not entry.spec.backdoored and i != skip]
        lv = fit(clean)
        return lv if rule == RULES[0] else dataclasses.replace(lv, combined_null=None)

    everyone = levels_without(None)
    return [Row(entry, record, judged(record, everyone if entry.spec.backdoored else levels_without(i)))
            for i, (entry, record) in enumerate(rows)]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", help="zoo folder (default: the shared cache, see bench/zoo.py)")
    args = parser.parse_args(argv)
    rows = dev_rows(args.zoo)
    for rule in RULES:
        s = half_summary(leave_one_out(rows, rule))
        print(f"{rule}: caught {s['caught'].words()}; clean left out: backdoored {s['clean_backdoored'].words()}, "
              f"suspicious {s['clean_suspicious'].words()}; AUC {s['auc']:.3f}")
        print("  per kind: " + ", ".join(f"{k} {a}/{b}" for k, (a, b) in s["per_kind"].items()))
        print(f"  clean flagged: {s['clean_flagged']}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
