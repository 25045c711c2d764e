"""Issue 22 acceptance: the model-level verdict on both halves of the split zoo, side by side, with intervals.

    python bench/zoo_report.py [--zoo DIR] [--half dev|test|both] [--only NAME ...] [--fresh] [--markdown] [--rows]

For each zoo model (bench/zoo.py) runs, with default settings and the model's
``clean_valid`` data only (never ``clean_test``, never the poisoned data),
every model-level detector -- Neural Cleanse with its label-specific step,
Neural Cleanse on a clean twin, MM-BD, warp inversion -- the calls
``python main.py cleanse`` makes, and
judges them with the verdict's levels (core/detect/model_level/levels.json,
fitted on the dev half by bench/fit_levels.py). For each half it prints:

- working BadNets (attack success >= 50% on their poisoned test set; the
  others are listed as failed implants) called "backdoored" or "suspicious"
  with a true target named (all-to-all: the alarm alone), overall and per
  attack kind, with 95% Clopper-Pearson intervals;
- clean models called "backdoored", and "suspicious", with intervals;
- the ROC AUC of the verdict's score, with a 95% bootstrap interval;
- seconds per model for the whole verdict: wall time (the load average is
  printed: the machine's 2 cores may be shared) and CPU time.

The dev half is where rules are fitted; the test half is locked: measured
once per rule change (docs/zoo.md keeps the record). Each model's raw
statistics are cached as ``detectors.json`` in its zoo folder (keyed by the
model's spec and the detector settings), so re-judging after a rule change is
instant; ``--fresh`` recomputes them.
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

from bench.zoo import ZOO, ZooEntry, build_zoo, cached, zoo_dir  # noqa: E402

RESULTS_VERSION = 4  # 2: oneDNN kernels; 3: Neural Cleanse's label-specific step; 4: batched Neural Cleanse + warp inversion (issue 22)
WORKING_ASR = 0.5  # below this attack success the backdoor did not implant: not counted as a BadNet


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
    """The model's cached statistics, computing what is missing (every detector, or only the clean twin's part)."""
    path = entry.root / "detectors.json"
    record = None
    if not fresh and path.is_file():
        record = json.loads(path.read_text())
        if record.get("version") != RESULTS_VERSION or record.get("key") != _key(entry):
            record = None
    if record is not None and "twin" in record:
        return record
    record = record or run_detectors(entry)
    record.update(run_twin(entry))
    tmp = path.with_name(".detectors.json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
    return record


def run_twin(entry: ZooEntry) -> dict[str, Any]:
    """Neural Cleanse on a clean twin of the model (core.detect.model_level.judge.twin_cleanse): its norms per class."""
    from core.detect.model_level.cleanse import CleanseSettings
    from core.detect.model_level.judge import twin_cleanse
    from core.intake.data import load_arrays, open_data
    from core.intake.fit import pair
    from core.intake.models import load_model
    from core.jobs import run_job

    loaded = load_model(entry.model)
    arrays = load_arrays(open_data(entry.clean_valid), loaded.input_shape, limit=CleanseSettings().max_images)
    pairing = pair(loaded, arrays, "auto")
    started, cpu = time.perf_counter(), time.process_time()
    result = run_job(twin_cleanse(loaded, arrays, pairing.scale, CleanseSettings(), None, pairing.pixel_max))
    return {"twin": {"norms": {str(k): round(v, 4) for k, v in result.norms.items()}, "median_norm": result.median},
            "twin_seconds": time.perf_counter() - started, "twin_cpu_seconds": time.process_time() - cpu}


def results_from(record: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """(CleanseResult, MMBDResult, WarpResult, the twin's CleanseResult) rebuilt from the cached JSON: the verdict's inputs."""
    from core.detect.model_level.cleanse import CleanseResult, LabelSpecific, ReversedTrigger
    from core.detect.model_level.mmbd import MMBDResult, detect
    from core.detect.model_level.warp import WarpResult

    c = record["cleanse"]
    nc = CleanseResult(
        verdict=c["verdict"], flagged_classes=c["flagged_classes"],
        anomaly_index={int(k): (float("inf") if v is None else v) for k, v in c["anomaly_index"].items()},
        norms={int(k): v for k, v in c["norms"].items()}, candidates=c["candidates"], screened_out=c["screened_out"],
        screening=c["screening"], triggers={}, median=c["median_norm"], mad=c["mad"], threshold_norm=c["threshold_norm"],
        num_classes=c["num_classes"], scale=c["scale"], n_images=c["n_images"], seconds=c["seconds"],
    )
    ls = c["label_specific"]
    if ls is not None:
        nc.label_specific = LabelSpecific(
            ReversedTrigger(-1, np.zeros(0), np.zeros(0), ls["norm"], ls["moved"], ls["reached"], 0),
            ls["smallest_targeted_norm"], ls["moved"], {int(k): v for k, v in ls["destinations"].items()},
            {int(k): v for k, v in ls["shares"].items()}, ls["seconds"])
    m = record["mmbd"]
    margins = {int(k): v for k, v in m["margins"].items()}
    found = detect(margins)  # MM-BD's own p-values are a pure function of the margins: re-tested with the current code
    mm = MMBDResult(found.flagged, margins, found.p_values, found.null_shape, found.null_scale, m["num_classes"], m["scale"],
                    m["seconds"], {}, m.get("clean_margin"), found.raw_p_values)
    w = record["warp"]
    warp = WarpResult({int(k): v for k, v in w["shifts"].items()}, {int(k): v for k, v in w["reached"].items()},
                      {int(k): v for k, v in w["anomaly_index"].items()}, w["median_shift"], w["top_class"], w["num_classes"],
                      w["seconds"])
    twin = None
    if record.get("twin"):
        norms = {int(k): v for k, v in record["twin"]["norms"].items()}
        twin = CleanseResult("clean", [], {}, norms, sorted(norms), [], {}, {}, record["twin"]["median_norm"], 0.0, 0.0,
                             nc.num_classes, nc.scale, nc.n_images, record.get("twin_seconds", 0.0))
    return nc, mm, warp, twin


def model_statistics(record: dict[str, Any]) -> dict[str, Optional[float]]:
    """Each detector's statistic (core.detect.model_level.statistics), as the verdict reads it."""
    from core.detect.model_level.statistics import ls_statistic, mmbd_statistic, nc_statistic, twin_statistic, warp_statistic

    nc, mm, warp, twin = results_from(record)
    found = nc.label_specific
    return {"nc": nc_statistic(nc.norms)[0], "mmbd": mmbd_statistic(mm.margins)[0], "warp": warp_statistic(warp.shifts)[0],
            "twin": twin_statistic(nc.norms, twin.norms)[0] if twin is not None else None,
            "ls": ls_statistic(found.ratio, found.trigger.reached)[0] if found is not None else None}


def judged(record: dict[str, Any], lv: Any = None) -> Any:
    """The combined verdict (core.detect.model_level.verdict) of one model from its cached statistics."""
    from core.detect.model_level.verdict import combine, from_detectors

    nc, mm, warp, twin = results_from(record)
    return combine(from_detectors(nc, mm, warp, lv=lv, twin_result=twin), lv=lv)


@dataclasses.dataclass
class Row:
    entry: ZooEntry
    record: dict[str, Any]
    verdict: Any

    @property
    def spec(self) -> Any:
        return self.entry.spec

    @property
    def asr(self) -> Optional[float]:
        return self.entry.metrics.get("attack_success_rate")

    @property
    def working(self) -> bool:
        """A clean model, or a BadNet whose backdoor implanted."""
        return not self.spec.backdoored or (self.asr or 0.0) >= WORKING_ASR

    @property
    def caught(self) -> bool:
        """Backdoored or suspicious, with a true target named (all-to-all: the alarm is enough)."""
        if self.verdict.level == "no evidence":
            return False
        return self.spec.all_to_all or bool(set(self.spec.targets) & set(self.verdict.targets))

    @property
    def seconds(self) -> float:
        return sum(self.record.get(f"{d}_seconds", 0.0) for d in ("cleanse", "twin", "mmbd", "warp"))

    @property
    def cpu_seconds(self) -> float:
        return sum(self.record.get(f"{d}_cpu_seconds", 0.0) for d in ("cleanse", "twin", "mmbd", "warp"))


def roc_auc(scores: list[float], labels: list[bool]) -> float:
    """Probability that a random backdoored model scores above a random clean one (ties count half)."""
    pos = np.array([s for s, backdoored in zip(scores, labels) if backdoored])
    neg = np.array([s for s, backdoored in zip(scores, labels) if not backdoored])
    if not len(pos) or not len(neg):
        return float("nan")
    return float(((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])).mean())


def auc_interval(scores: list[float], labels: list[bool], draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the AUC, resampling backdoored and clean models separately."""
    rng = np.random.default_rng(seed)
    pos = np.array([s for s, b in zip(scores, labels) if b])
    neg = np.array([s for s, b in zip(scores, labels) if not b])
    values = []
    for _ in range(draws):
        p, n = rng.choice(pos, len(pos)), rng.choice(neg, len(neg))
        values.append(float(((p[:, None] > n[None]) + 0.5 * (p[:, None] == n[None])).mean()))
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def half_summary(rows: list[Row]) -> dict[str, Any]:
    """The acceptance figures of one half."""
    from core.detect.model_level.levels import Rate

    bad = [r for r in rows if r.spec.backdoored and r.working]
    failed = [r.spec.name for r in rows if r.spec.backdoored and not r.working]
    clean = [r for r in rows if not r.spec.backdoored]
    kinds: dict[str, list[Row]] = {}
    for r in bad:
        kinds.setdefault(r.spec.attack, []).append(r)
    scored = [r for r in rows if r.working]
    scores, labels = [r.verdict.score for r in scored], [r.spec.backdoored for r in scored]
    return {
        "caught": Rate.of(sum(r.caught for r in bad), len(bad)),
        "per_kind": {k: (sum(r.caught for r in v), len(v)) for k, v in sorted(kinds.items())},
        "missed": [r.spec.name for r in bad if not r.caught],
        "failed_implants": failed,
        "clean_backdoored": Rate.of(sum(r.verdict.level == "backdoored" for r in clean), len(clean)),
        "clean_suspicious": Rate.of(sum(r.verdict.level == "suspicious" for r in clean), len(clean)),
        "clean_flagged": [f"{r.spec.name} ({r.verdict.level})" for r in clean if r.verdict.level != "no evidence"],
        "auc": roc_auc(scores, labels),
        "auc_interval": auc_interval(scores, labels) if len(set(labels)) == 2 else (float("nan"), float("nan")),
        "seconds": (float(np.mean([r.seconds for r in rows])), float(np.max([r.seconds for r in rows]))),
        "cpu_seconds": (float(np.mean([r.cpu_seconds for r in rows])), float(np.max([r.cpu_seconds for r in rows]))),
        "models": len(rows),
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", help="zoo folder (default: the shared cache, see bench/zoo.py)")
    parser.add_argument("--half", choices=("dev", "test", "both"), default="both",
                        help="which half to judge (the test half is locked: measure it once per rule change)")
    parser.add_argument("--only", nargs="+", metavar="NAME")
    parser.add_argument("--fresh", action="store_true", help="recompute cached detector statistics")
    parser.add_argument("--markdown", action="store_true", help="print the summary as Markdown")
    parser.add_argument("--rows", action="store_true", help="print one line per model too")
    parser.add_argument("--demo", action="store_true", help="judge the demo's BadNet and its clean control as well")
    args = parser.parse_args(argv)
    halves = ("dev", "test") if args.half == "both" else (args.half,)
    by_half: dict[str, list[Row]] = {h: [] for h in halves}
    for entry in _entries(args, halves):
        record = results_for(entry, args.fresh)
        row = Row(entry, record, judged(record))
        by_half[entry.spec.half].append(row)
        if args.rows:
            print(_row_line(row), flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} (2 cores)")
    summaries = {h: half_summary(rows) for h, rows in by_half.items() if rows}
    print(_table(summaries, args.markdown))
    for h, s in summaries.items():
        print(f"{h}: missed {s['missed'] or 'none'}; clean flagged {s['clean_flagged'] or 'none'}; "
              f"failed implants (ASR < {WORKING_ASR:.0%}, not counted) {s['failed_implants'] or 'none'}")
    if args.demo:
        for line in demo_lines():
            print(line)
    return 0


def demo_lines() -> list[str]:
    """The demo's two models (python main.py demo), judged as the cleanse command judges them."""
    from core.demo import cached_demo
    from core.detect.model_level.judge import judge
    from core.intake.data import load_arrays, open_data
    from core.intake.fit import pair
    from core.intake.models import load_model
    from core.jobs import run_job

    bundle = run_job(cached_demo())
    lines = []
    for name, path in (("demo BadNet (target 7)", bundle.model), ("demo clean control", bundle.clean_model)):
        loaded = load_model(path)
        arrays = load_arrays(open_data(bundle.clean_valid), loaded.input_shape, limit=2000)
        pairing = pair(loaded, arrays, "auto")
        j = run_job(judge(loaded, arrays, pairing.scale, pixel_max=pairing.pixel_max))
        lines.append(f"{name:24s} {j.verdict.summary} (p {j.verdict.p:.3g}; {j.seconds:.0f} s)")
    return lines


def _row_line(row: Row) -> str:
    v = row.verdict
    asr = "   - " if row.asr is None else f"{row.asr:5.2f}"
    targets = ",".join(map(str, v.targets)) or "-"
    mark = "" if not row.spec.backdoored else ("  caught" if row.caught else ("  MISSED" if row.working else "  (failed implant)"))
    return (f"{row.spec.name:26s} {row.spec.arch:6s} truth {row.spec.truth:9s} ASR {asr} | {v.level:11s} {targets:6s} "
            f"p {v.p if v.p is not None else float('nan'):8.2g} score {v.score:.3f} | {row.seconds:5.1f} s{mark}")


def _entries(args: argparse.Namespace, halves: tuple[str, ...]):
    """The zoo's built entries of the chosen halves, in the zoo's order."""
    if args.only:
        yield from (e for e in build_zoo(args.zoo, args.only) if e.spec.half in halves)
        return
    root = zoo_dir(args.zoo)
    for spec in ZOO:
        if spec.half in halves:
            entry = cached(spec, root / spec.name)
            if entry is None:
                entry = build_zoo(args.zoo, [spec.name])[0]
            yield entry


def _table(summaries: dict[str, dict[str, Any]], markdown: bool) -> str:
    halves = list(summaries)
    lines = [("figure", *[f"{h} half" for h in halves])]

    def add(name: str, fn: Any) -> None:
        lines.append((name, *[fn(summaries[h]) for h in halves]))

    add("models", lambda s: str(s["models"]))
    add("BadNets caught (target named)", lambda s: s["caught"].words())
    kinds = sorted({k for s in summaries.values() for k in s["per_kind"]})
    for k in kinds:
        add(f"  {k}", lambda s, k=k: "{}/{}".format(*s["per_kind"].get(k, (0, 0))))
    add("clean called backdoored", lambda s: s["clean_backdoored"].words())
    add("clean called suspicious", lambda s: s["clean_suspicious"].words())
    add("ROC AUC (95% bootstrap)", lambda s: f"{s['auc']:.3f} ({s['auc_interval'][0]:.3f}-{s['auc_interval'][1]:.3f})")
    add("wall s/model (mean, max)", lambda s: "{:.0f}, {:.0f}".format(*s["seconds"]))
    add("CPU s/model (mean, max)", lambda s: "{:.0f}, {:.0f}".format(*s["cpu_seconds"]))
    if markdown:
        out = ["| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(lines[0])]
        out += ["| " + " | ".join(line) + " |" for line in lines[1:]]
        return "\n".join(out)
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
