"""Input-level acceptance (issue 11): STRIP, SCALE-UP, TeCo and combined on the zoo's BadNets.

    python bench/scan_acceptance.py --zoo [--names a,b] [--methods strip,scaleup,teco,combined] [--seed N] [--json out.json]
    python bench/scan_acceptance.py --demo /tmp/demo5

For every single-target BadNet (and, with --all, every zoo model), each
method is calibrated with its *default* settings on the model's clean_valid
split only, then measured on data calibration never saw:

- FRR: share of clean_test images flagged (the analyst's false rejections);
- residual ASR: share of poisoned_test images (triggered, attacker labels)
  that are *not* flagged and still classified as the attacker's label;
- seconds: calibration plus both scans, on this machine.

The targeted detectors (``masking``, ``target_features``, ``reference``, and within ``combined``)
need the verdict's suspected targets (and masking their reversed triggers): by default each model is first judged as ``cleanse --save-triggers`` would (Neural
Cleanse + MM-BD on clean_valid, default settings) and the masks of the verdict's targets are
cached beside the model (``triggers.npz``, ``triggers.json``); ``--no-triggers`` measures without
them (combined = STRIP + feature space + SCALE-UP, as before 27 Nov 2026, third session).
The targeted detectors watch only the inputs the model sends to those targets.

Acceptance: residual ASR <= 5% and FRR <= 3% for every single-target BadNet.
Everything is seeded; re-running prints the same numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from core.detect.input_level import scanner  # noqa: E402
from core.detect.input_level import masking  # noqa: E402
from core.detect.input_level.calibration import conservative_threshold  # noqa: E402
from core.intake.data import Arrays, load_arrays, open_data  # noqa: E402
from core.jobs import run_job  # noqa: E402
from core.intake.models import load_model  # noqa: E402

SINGLE_TARGET_EXCLUDED = ("clean", "two_triggers", "all_to_all")


def cases_from_zoo(names: list[str] | None, include_all: bool) -> list[dict]:
    sys.path.insert(0, str(ROOT / "bench"))
    import zoo  # bench/zoo.py (issue 11, part 1)

    root = zoo.zoo_dir()
    if (root / "READY").is_file():
        entries = zoo.build_zoo(names=names)
    else:  # never build here (another job builds the zoo): take what is already cached
        entries = [e for e in (zoo.cached(s, root / s.name) for s in zoo.ZOO if names is None or s.name in names) if e is not None]
        print(f"zoo not READY: measuring the {len(entries)} models already built", file=sys.stderr)
    out = []
    for e in entries:
        spec = e.spec
        if not include_all and (not spec.backdoored or spec.attack in SINGLE_TARGET_EXCLUDED or len(spec.targets) != 1):
            continue
        out.append({"name": spec.name, "attack": spec.attack, "targets": tuple(spec.targets), "model": e.model,
                    "clean_valid": e.clean_valid, "clean_test": e.clean_test, "poisoned_test": getattr(e, "poisoned_test", None),
                    "folder": Path(e.model).parent})
    return out


def cases_from_demo(folder: str) -> list[dict]:
    from core.demo import export_demo

    b = run_job(export_demo(Path(folder)))
    return [{"name": "demo", "attack": "patch", "targets": (b.info["target"],), "model": b.model, "clean_valid": b.clean_valid,
             "clean_test": b.clean_test, "poisoned_test": b.poisoned_test}]


def verdict_triggers(case: dict) -> masking.Triggers | None:
    """The masks of the verdict's targets, as `cleanse --save-triggers` writes them (cached beside the model)."""
    folder = case.get("folder") or Path(case["model"]).parent
    record, saved = folder / "triggers.json", folder / "triggers.npz"
    if not record.is_file():
        from core.intake.fit import choose_scale
        from core.detect.model_level.judge import judge

        loaded = load_model(case["model"])
        valid = open_data(case["clean_valid"])
        scale, _note = choose_scale(loaded, valid, "auto")
        found = run_job(judge(loaded, load_arrays(valid, loaded.input_shape), scale))
        triggers = masking.triggers_from(found.cleanse, found.verdict.targets, loaded.summary.sha256)
        if triggers.classes:
            masking.save_triggers(triggers, saved)
        record.write_text(json.dumps({"targets": list(triggers.classes), "summary": found.verdict.summary,
                                      "seconds": round(found.seconds, 1)}))
    info = json.loads(record.read_text())
    print(f"{case['name']}: verdict {info['summary']!r}, masks of {info['targets']}", file=sys.stderr, flush=True)
    return masking.load_triggers(saved) if info["targets"] else None


def subsample(arrays: Arrays, limit: int | None) -> Arrays:
    """A seeded random subset of ``limit`` images (all when None): the same one for every method."""
    if limit is None or len(arrays.x) <= limit:
        return arrays
    keep = np.sort(np.random.default_rng(12345).permutation(len(arrays.x))[:limit])
    return type(arrays)(arrays.x[keep], None if arrays.y is None else arrays.y[keep], [arrays.sources[i] for i in keep] if arrays.sources else [], [])


def measure(case: dict, methods: list[str], limit: int | None = None, triggers: masking.Triggers | None = None,
            seed: int = 0) -> list[dict]:
    """One row per method, each exactly as ``scanner.calibrate`` + ``scanner.classify`` would give it.

    STRIP's 100-overlay scores are computed once: the combined profile's STRIP detector scored the same
    clean images (same seed, same split) that STRIP alone calibrates on, so STRIP alone is that
    detector re-thresholded at the full FRR and confidence (what ``strip.profile_from`` does).
    Every other detector is calibrated on its own, as its method would.
    """
    loaded = load_model(case["model"])
    clean_test = subsample(load_arrays(open_data(case["clean_test"]), loaded.input_shape), limit)
    poisoned = subsample(load_arrays(open_data(case["poisoned_test"]), loaded.input_shape), limit) if case["poisoned_test"] else None
    defaults = scanner.ScanSettings(method="strip", seed=seed)
    profiles, seconds = {}, {}
    if triggers is None:
        methods = [m for m in methods if m not in scanner.WITH_TRIGGERS]  # the verdict named no target to watch
    for method in methods:
        if method == "strip":
            continue
        started = time.perf_counter()
        settings = scanner.ScanSettings(method=method, triggers=triggers, seed=seed)
        profiles[method] = run_job(scanner.calibrate(loaded, open_data(case["clean_valid"]), settings))
        seconds[method] = time.perf_counter() - started
    if "strip" in methods:
        comb = profiles.get("combined") or run_job(scanner.calibrate(loaded, open_data(case["clean_valid"]),
                                                                     scanner.ScanSettings(method="combined", triggers=triggers, seed=seed)))
        det = comb.detectors["strip"]
        cal = conservative_threshold(det.scores, defaults.frr, defaults.confidence, "low")
        alone = dataclasses.replace(det, threshold=cal.threshold, frr=defaults.frr, confidence=defaults.confidence)
        profiles["strip"] = scanner.ScanProfile("strip", {"strip": alone}, defaults.frr, defaults.confidence)
    cache: dict = {}  # (detector, threshold-free) scores of the held-out sets, computed once per detector profile

    def scores(name: str, det: object, x: np.ndarray, key: str) -> tuple[np.ndarray, np.ndarray]:
        k = (name, id(det.scores), key)
        if k not in cache:
            started = time.perf_counter()
            cache[k] = det.score_fn(loaded)(x)
            cache[(k, "s")] = time.perf_counter() - started
        return cache[k]

    rows = []
    for method in methods:
        profile = profiles[method]
        flag_c = np.zeros(len(clean_test.x), bool)
        flag_p = None if poisoned is None else np.zeros(len(poisoned.x), bool)
        pred = None
        for name, det in profile.detectors.items():
            s_c, _ = scores(name, det, clean_test.x, "clean")
            flag_c |= scanner.is_flagged(s_c, det)
            if poisoned is not None:
                s_p, probs = scores(name, det, poisoned.x, "poisoned")
                flag_p |= scanner.is_flagged(s_p, det)
                pred = probs.argmax(axis=1)
        est = profile.frr_estimate()
        used = [v for k, v in cache.items() if isinstance(k[0], tuple) and k[0][0] in profile.detectors]
        row = {"model": case["name"], "attack": case["attack"], "method": method, "frr_clean_test": float(np.mean(flag_c)),
               "n_clean_test": len(clean_test.x), "frr_expected": est.expected, "frr_interval": [est.low, est.high], "frr_bound": est.bound,
               "asr_before": None, "residual_asr": None, "n_poisoned": None if poisoned is None else len(poisoned.x),
               "seconds": round(seconds.get(method, seconds.get("combined", 0.0)) + sum(used), 1)}
        if poisoned is not None:
            row["asr_before"] = float(np.mean(pred == poisoned.y))
            row["residual_asr"] = float(np.mean((pred == poisoned.y) & ~flag_p))
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--zoo", action="store_true", help="the zoo of bench/zoo.py (waits for nothing: builds what is missing)")
    src.add_argument("--demo", help="the demo BadNet, exported to this folder")
    parser.add_argument("--names", help="comma-separated zoo model names")
    parser.add_argument("--all", action="store_true", help="also clean, two-target and all-to-all models (FRR only / informative)")
    parser.add_argument("--methods", default=",".join(scanner.METHODS))
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--limit", type=int, help="measure on a seeded random subset of this many clean_test and poisoned_test images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clean split (STRIP overlays, calibration order, reference training)")
    parser.add_argument("--no-triggers", action="store_true", help="no reversed triggers: no masking, combined without it")
    args = parser.parse_args()
    cases = cases_from_zoo(args.names.split(",") if args.names else None, args.all) if args.zoo else cases_from_demo(args.demo)
    methods = args.methods.split(",")
    print(f"{'model':<22} {'attack':<13} {'method':<9} {'FRR test':>8} {'expected (95% interval)':>24} {'ASR before':>10} {'residual':>9} {'s':>6}  pass")
    rows, failures = [], []
    for case in cases:
        triggers = None if args.no_triggers else verdict_triggers(case)
        for r in measure(case, methods, args.limit, triggers, args.seed):
            method = r["method"]
            rows.append(r)
            ok = r["frr_clean_test"] <= 0.03 and (r["residual_asr"] is None or r["residual_asr"] <= 0.05)
            if not ok:
                failures.append(f"{r['model']}/{method}")
            pct = lambda v: "   -" if v is None else f"{v:.1%}"  # noqa: E731
            lo, hi = r["frr_interval"]
            print(f"{r['model']:<22} {r['attack']:<13} {method:<9} {r['frr_clean_test']:>8.1%} {r['frr_expected']:>9.2%} ({lo:.2%}-{hi:.2%}) "
                  f"{pct(r['asr_before']):>10} {pct(r['residual_asr']):>9} {r['seconds']:>6.1f}  {'yes' if ok else 'NO'}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    by_method = {m: [r for r in rows if r["method"] == m] for m in methods}
    for m, rs in by_method.items():
        passed = [r for r in rs if r["frr_clean_test"] <= 0.03 and (r["residual_asr"] is None or r["residual_asr"] <= 0.05)]
        print(f"{m}: {len(passed)}/{len(rs)} models meet FRR <= 3% and residual ASR <= 5%")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
