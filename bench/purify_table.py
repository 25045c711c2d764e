"""Markdown tables of bench/purify_acceptance.py's rows: one row per model, then one per kind with the acceptance.

    python bench/purify_table.py rows.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from purify_acceptance import IMAGE_WIDE, KIND_NAMES, LOCALIZED, SPEED_BAR, meets


def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def per_model(rows: list[dict]) -> str:
    out = ["| model | kind | arch | verdict targets | clean acc. | ASR before | flagged | recovered | cannot purify | ASR after "
           "| clean loss (guard) | clean loss (all purified) | purified/s | meets |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        meets = "—" if r["meets"] is None else ("yes" if r["meets"] else "**no**")
        out.append(f"| {r['model']} | {r['kind']} | {r['arch']} | {','.join(map(str, r['verdict_targets'])) or 'none'} "
                   f"| {pct(r['clean_accuracy'])} | {pct(r['asr_before'])} | {pct(r['flagged_triggered'])} "
                   f"| {pct(r['recovered_accuracy'])} | {pct(r['cannot_purify_triggered'])} | {pct(r['asr_after'])} "
                   f"| {r['clean_loss_points']:+.1f} | {r['clean_forced_loss_points']:+.1f} | {1 / max(r['seconds_per_purified'], 1e-9):.0f} "
                   f"| {meets} |")
    return "\n".join(out)


def per_kind(rows: list[dict]) -> str:
    kinds = list(dict.fromkeys(r["attack"] for r in rows))
    out = ["| kind | models | recovered / clean acc. (mean, worst) | ASR after (mean, worst) | cannot purify (mean) "
           "| clean loss guard (worst) | clean loss all purified (worst) | purified/s (slowest) | bar | models meeting it |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for kind in kinds:
        rs = [r for r in rows if r["attack"] == kind]
        ratio = [r["recovered_accuracy"] / r["clean_accuracy"] for r in rs]
        asr = [r["asr_after"] for r in rs]
        speed = [1 / max(r["seconds_per_purified"], 1e-9) for r in rs]
        if kind in LOCALIZED:
            bar = "recovered >= 90% of clean, ASR after <= 3%, loss <= 1 pt"
        elif kind in IMAGE_WIDE:
            bar = "recovered >= 80% of clean, loss <= 1 pt"
        else:
            bar = "(not in the acceptance)"
        met = [r for r in rs if r["meets"]]
        out.append(f"| {KIND_NAMES.get(kind, kind)} | {len(rs)} | {pct(sum(ratio) / len(ratio))}, {pct(min(ratio))} "
                   f"| {pct(sum(asr) / len(asr))}, {pct(max(asr))} | {pct(sum(r['cannot_purify_triggered'] for r in rs) / len(rs))} "
                   f"| {max(r['clean_loss_points'] for r in rs):+.1f} | {max(r['clean_forced_loss_points'] for r in rs):+.1f} "
                   f"| {sum(speed) / len(speed):.0f} ({min(speed):.0f}) | {bar} "
                   f"| {'—' if rs[0]['meets'] is None else f'{len(met)}/{len(rs)}'} |")
    return "\n".join(out)


def summary(rows: list[dict]) -> str:
    n = sum(r["n_purified"] for r in rows)
    seconds = sum(r["purify_seconds"] for r in rows)
    slow = [r["model"] for r in rows if 1 / max(r["seconds_per_purified"], 1e-9) < SPEED_BAR]
    loads = [r.get("load") for r in rows if r.get("load") is not None]
    return (f"- {n} flagged images purified in {seconds:.0f} s: {n / max(seconds, 1e-9):.0f} images per second over all models "
            f"(bar: {SPEED_BAR:.0f}); below the bar on {len(slow)} of {len(rows)} models{': ' + ', '.join(slow) if slow else ''}; "
            f"load average {min(loads):.1f}-{max(loads):.1f} while measuring (2 cores)" if loads else "")


def main() -> int:
    rows = json.loads(Path(sys.argv[1]).read_text())
    for r in rows:
        r["meets"] = meets(r)  # the acceptance as written now (rows measured earlier carry the rule of their day)
    print(per_kind(rows))
    print()
    print(summary(rows))
    print()
    print(per_model(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
