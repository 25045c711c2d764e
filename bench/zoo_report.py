"""Issue 11 acceptance: every detector and the combined verdict on the zoo, as one table.

    python bench/zoo_report.py [--zoo DIR] [--only NAME ...] [--fresh] [--markdown]

For each zoo model (bench/zoo.py, built first if missing) runs, with default
settings and the model's ``clean_valid`` data only (never ``clean_test``,
never the poisoned data): Neural Cleanse (core.detect.model_level.cleanse), MM-BD (core.detect.model_level.mmbd)
and their combination (core.detect.model_level.verdict), the same calls as ``python main.py
cleanse``. Prints one row per model, then per method: true-positive rate
(backdoored models called "backdoored" or "suspicious"), false-positive rate
(clean models called so), ROC AUC of the suspicion score, how many BadNets had
their target(s) named, and seconds per model: wall time on this machine (the
load average is printed: its 2 cores are shared) and CPU time (user + system,
all threads: the load-independent figure; on 2 dedicated cores the wall time
is at least half of it).

Each model's results are cached as ``detectors.json`` in its zoo folder (keyed
by the model's spec and the detector settings), so re-printing the table is
instant; ``--fresh`` recomputes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.zoo import ZooEntry, build_zoo  # noqa: E402

RESULTS_VERSION = 4  # 2: oneDNN kernels; 3: Neural Cleanse's label-specific step; 4: batched Neural Cleanse + warp inversion (issue 22)


def run_detectors(entry: ZooEntry) -> dict[str, Any]:
    """Every model-level detector on one model, default settings, clean_valid only: the raw statistics."""
    from core.detect.model_level.cleanse import CleanseSettings, cleanse
    from core.detect.model_level.mmbd import mmbd
    from core.detect.model_level.warp import warp_inversion
    from core.intake.data import load_arrays, open_data
    from core.intake.fit import pair
    from core.intake.models import load_model
    from core.jobs import run_job

    loaded = load_model(entry.model)
    clean = open_data(entry.clean_valid)
    arrays = load_arrays(clean, loaded.input_shape, limit=CleanseSettings().max_images)
    pairing = pair(loaded, arrays, "auto")
    record: dict[str, Any] = {"version": RESULTS_VERSION, "key": _key(entry), "scale": pairing.scale}
    for name, job in (("cleanse", lambda: cleanse(loaded, arrays, pairing.scale, pixel_max=pairing.pixel_max)),
                      ("mmbd", lambda: mmbd(loaded, arrays, pairing.scale, pixel_max=pairing.pixel_max)),
                      ("warp", lambda: warp_inversion(loaded, arrays, pairing.scale, pixel_max=pairing.pixel_max))):
        started, cpu = time.perf_counter(), time.process_time()
        result = run_job(job())
        record[name] = {k: v for k, v in result.as_dict().items() if k != "settings"}
        record[f"{name}_seconds"] = time.perf_counter() - started
        record[f"{name}_cpu_seconds"] = time.process_time() - cpu
    return record


def _key(entry: ZooEntry) -> str:
    from core.detect.model_level.cleanse import CleanseSettings
    from core.detect.model_level.mmbd import MMBDSettings
    from core.detect.model_level.warp import WarpSettings

    settings = [dataclasses.asdict(s()) for s in (CleanseSettings, MMBDSettings, WarpSettings)]
    return json.dumps([entry.spec.key(), *settings], sort_keys=True)


def results_for(entry: ZooEntry, fresh: bool) -> dict[str, Any]:
    path = entry.root / "detectors.json"
    if not fresh and path.is_file():
        record = json.loads(path.read_text())
        if record.get("version") == RESULTS_VERSION and record.get("key") == _key(entry):
            return record
    record = run_detectors(entry)
    tmp = path.with_name(".detectors.json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
    return record


def verdicts(record: dict[str, Any]) -> dict[str, Any]:
    """Evidence of each method and the combined verdict, rebuilt from the cached JSON."""
    from core.detect.model_level.cleanse import CleanseResult, LabelSpecific, ReversedTrigger
    from core.detect.model_level.mmbd import MMBDResult, detect
    from core.detect.model_level.verdict import LABEL_SPECIFIC, combine, from_cleanse, from_detectors, from_label_specific, from_mmbd

    c = record["cleanse"]
    nc = CleanseResult(
        verdict=c["verdict"], flagged_classes=c["flagged_classes"],
        anomaly_index={int(k): (float("inf") if v is None else v) for k, v in c["anomaly_index"].items()},
        norms={int(k): v for k, v in c["norms"].items()}, candidates=c["candidates"], screened_out=c["screened_out"],
        screening=c["screening"], triggers={}, median=c["median_norm"], mad=c["mad"], threshold_norm=c["threshold_norm"],
        num_classes=c["num_classes"], scale=c["scale"], n_images=c["n_images"], seconds=c["seconds"],
    )
    ls = c["label_specific"]
    nc.label_specific = LabelSpecific(
        ReversedTrigger(-1, np.zeros(0), np.zeros(0), ls["norm"], ls["moved"], ls["reached"], 0),
        ls["smallest_targeted_norm"], ls["moved"], {int(k): v for k, v in ls["destinations"].items()},
        {int(k): v for k, v in ls["shares"].items()}, ls["seconds"])
    m = record["mmbd"]
    margins = {int(k): v for k, v in m["margins"].items()}
    found = detect(margins)  # the statistics are a pure function of the margins: re-tested with the current code
    mm = MMBDResult(found.flagged, margins, found.p_values, found.null_shape, found.null_scale, m["num_classes"], m["scale"],
                    m["seconds"], {}, m.get("clean_margin"), found.raw_p_values)
    return {"Neural Cleanse": from_cleanse(nc), LABEL_SPECIFIC: from_label_specific(nc), "MM-BD": from_mmbd(mm),
            "combined": combine(from_detectors(nc, mm))}


def roc_auc(scores: list[float], labels: list[bool]) -> float:
    """Probability that a random backdoored model scores above a random clean one (ties count half)."""
    pos = [s for s, backdoored in zip(scores, labels) if backdoored]
    neg = [s for s, backdoored in zip(scores, labels) if not backdoored]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", help="zoo folder (default: the shared cache, see bench/zoo.py)")
    parser.add_argument("--only", nargs="+", metavar="NAME")
    parser.add_argument("--fresh", action="store_true", help="recompute cached detector results")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--wait", action="store_true",
                        help="do not build: wait for each model to appear (another process running bench/zoo.py builds them)")
    args = parser.parse_args(argv)
    rows = []
    for entry in _entries(args):
        record = results_for(entry, args.fresh)
        v = verdicts(record)
        rows.append((entry, record, v))
        comb = v["combined"]
        truth = entry.spec.truth
        print(f"{entry.spec.name:28s} truth {truth:8s} | NC {v['Neural Cleanse'].level:11s} {_cls(v['Neural Cleanse'].classes):6s} "
              f"| LS {v['label-specific check'].level:11s} | MM-BD {v['MM-BD'].level:11s} {_cls(v['MM-BD'].classes):6s} | combined {comb.level:11s} {_cls(comb.targets):6s} "
              f"score {comb.score:.3f} | {record['cleanse_seconds'] + record['mmbd_seconds']:5.1f} s", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} (2 cores shared)")
    table = summary(rows)
    print(_markdown(table) if args.markdown else _plain(table))
    print(triage_line(rows))
    return 0


def triage_line(rows: list) -> str:
    """The order ``triage`` gives these models (core.detect.model_level.triage.rank on the same verdicts) and whether it separates them."""
    from core.detect.model_level.triage import TriageRow, rank

    by_name = {e.spec.name: e for e, _r, _v in rows}
    judged = [TriageRow(e.spec.name, v["combined"].machine_verdict, v["combined"].level, v["combined"].score,
                        v["combined"].targets, "", 0.0, 10, (28, 28, e.spec.channels), "") for e, _r, v in rows]
    order = [r.source for r in rank(judged)]
    marks = ["B" if by_name[n].spec.backdoored else "c" for n in order]
    last_bad = max((i for i, m in enumerate(marks) if m == "B"), default=-1)
    first_clean = min((i for i, m in enumerate(marks) if m == "c"), default=len(marks))
    inverted = [n for i, n in enumerate(order) if marks[i] == "B" and i > first_clean]
    verdict = ("every backdoored model above every clean one" if last_bad < first_clean
               else f"backdoored models ranked below a clean one: {inverted}")
    return f"triage order (B backdoored, c clean): {''.join(marks)} -- {verdict}\n  " + ", ".join(order)


def _entries(args: argparse.Namespace):
    """The zoo's entries in order: built here, or (``--wait``) as another process finishes each."""
    if not args.wait:
        yield from build_zoo(args.zoo, args.only)
        return
    from bench.zoo import ZOO, cached, zoo_dir

    root = zoo_dir(args.zoo)
    specs = [next(s for s in ZOO if s.name == n) for n in args.only] if args.only else ZOO  # --only: in its order
    for spec in specs:
        while (entry := cached(spec, root / spec.name)) is None:
            time.sleep(10)
        yield entry


def _cls(classes: tuple) -> str:
    return ",".join(map(str, classes)) or "-"


def summary(rows: list) -> list[dict[str, Any]]:
    out = []
    labels = [e.spec.backdoored for e, _r, _v in rows]
    for method in ("Neural Cleanse", "label-specific check", "MM-BD", "combined"):
        levels = [(v[method].level, _targets(v[method])) for _e, _r, v in rows]
        scores = [v[method].score for _e, _r, v in rows]
        bad = [e for e, _r, _v in rows if e.spec.backdoored]
        hit = [e for (e, _r, _v), (lvl, _t) in zip(rows, levels) if e.spec.backdoored and lvl != "no evidence"]
        fp = [e for (e, _r, _v), (lvl, _t) in zip(rows, levels) if not e.spec.backdoored and lvl != "no evidence"]
        fp_bd = [e for (e, _r, _v), (lvl, _t) in zip(rows, levels) if not e.spec.backdoored and lvl == "backdoored"]
        named = [e for (e, _r, _v), (lvl, t) in zip(rows, levels) if e.spec.backdoored and lvl != "no evidence" and _named(e, t)]
        parts = {"Neural Cleanse": ("cleanse",), "label-specific check": (), "MM-BD": ("mmbd",), "combined": ("cleanse", "mmbd")}[method]
        if parts:
            seconds = [sum(r[f"{p}_seconds"] for p in parts) for _e, r, _v in rows]
            cpu = [sum(r.get(f"{p}_cpu_seconds", float("nan")) for p in parts) for _e, r, _v in rows]
        else:  # a step inside Neural Cleanse's job (its seconds are included in Neural Cleanse's): wall time only
            seconds = [r["cleanse"]["label_specific"]["seconds"] for _e, r, _v in rows]
            cpu = [float("nan")] * len(rows)
        clean_n = len(rows) - len(bad)
        out.append({
            "method": method,
            "TPR": f"{len(hit)}/{len(bad)}",
            "FPR (any flag)": f"{len(fp)}/{clean_n}",
            "clean called backdoored": f"{len(fp_bd)}/{clean_n}",
            "ROC AUC": f"{roc_auc(scores, labels):.3f}",
            "targets named": f"{len(named)}/{len(bad)}",
            "wall s/model (mean, max)": f"{np.mean(seconds):.0f}, {np.max(seconds):.0f}",
            "CPU s/model (mean, max)": f"{np.mean(cpu):.0f}, {np.max(cpu):.0f}" if parts else "within Neural Cleanse's",
        })
    return out


def _targets(e: Any) -> tuple:
    return getattr(e, "targets", None) or getattr(e, "classes", ())


def _named(entry: ZooEntry, named: tuple) -> bool:
    """Every true target named (all-to-all: may be judged without a single target)."""
    if entry.spec.all_to_all:
        return True
    return set(entry.spec.targets) <= set(named)


def _plain(table: list[dict[str, Any]]) -> str:
    keys = list(table[0])
    widths = [max(len(k), *(len(str(r[k])) for r in table)) for k in keys]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(str(r[k]).ljust(w) for k, w in zip(keys, widths)) for r in table]
    return "\n".join(lines)


def _markdown(table: list[dict[str, Any]]) -> str:
    keys = list(table[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in table]
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
