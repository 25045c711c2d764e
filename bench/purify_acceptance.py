"""Purification acceptance (issue 25): give flagged inputs their true label back, measured on the zoo's locked test half.

    python bench/purify_acceptance.py [--half test] [--names a,b] [--limit N] [--json rows.json]
    python bench/purify_table.py rows.json

For every backdoored zoo model of the half (``bench/zoo.py``; clean models have nothing to purify), as the
analyst would run it (``cleanse --save-triggers`` then ``purify``):

1. the verdict's reversed triggers: Neural Cleanse + MM-BD on ``clean_valid`` (default settings), the masks
   of the classes the verdict names (none for a verdict without a target: all-to-all);
2. the combined scan profile calibrated on ``clean_valid`` with those triggers (default FRR, seed 0): its
   masking detector's regions and its clean reference networks are the purification's evidence;
3. the triggered test images regenerated *with their true labels* (``poison(spec, x_test[victims], ...,
   default_rng(seed + 1000))``, exactly the images of ``poisoned_test.h5``, which the bench checks pixel for
   pixel) and ``clean_test`` go through the guarded classifier with purification
   (:func:`core.repair.purify.scan_and_purify`): an input nothing flags keeps the model's answer, a flagged
   one gets its purified label, or N when it cannot be purified. Both sets go through one scan together, as an
   analyst's folder would mix them (what the flagged inputs share is read from both).

Per model: the model's clean accuracy; on the triggered images, attack success before, recovered accuracy
(answer = true label; "cannot purify" counts as a failure) and attack success after (answer = the attacker's
label); on the clean images, the accuracy through the same guard and with *every* clean image purified as if
flagged (each against the model's own accuracy, in points); seconds per purified image (flagged inputs only:
the scan's cost is docs/scan.md's) and per image through scan and purification.

Steps 1 and 2 cost 20-60 s per model on two cores and are cached under ``--cache`` (default
``<user cache>/trojanscope/purify-bench``), never in the zoo. Everything is seeded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import zoo  # noqa: E402  (bench/zoo.py)
from core.detect.input_level import masking, scanner  # noqa: E402
from core.intake.data import ArraySource, load_arrays, open_data  # noqa: E402
from core.intake.inference import predict_labels  # noqa: E402
from core.intake.models import load_model  # noqa: E402
from core.jobs import run_job  # noqa: E402
from core.repair import purify  # noqa: E402

LOCALIZED = ("patch", "sunglasses", "frame", "random_patch", "two_triggers")
IMAGE_WIDE = ("blend", "wanet", "sig")
KIND_NAMES = {"patch": "patch", "sunglasses": "two-bar", "frame": "frame", "random_patch": "random position",
              "two_triggers": "two triggers", "blend": "blend", "wanet": "warp", "sig": "sinusoid", "low_rate": "low poisoning rate",
              "all_to_all": "all-to-all sticker", "all_to_all_mirror": "all-to-all blend"}
SPEED_BAR = 50.0  # images per second


def cache_root(given: Optional[str]) -> Path:
    if given:
        return Path(given)
    import platformdirs

    return Path(platformdirs.user_cache_dir("trojanscope")) / "purify-bench"


def as_built(spec: Any, root: Path) -> Any:
    """The entry of a model built from another version of its spec (the zoo is built by whoever changed bench/zoo.py
    last): its own spec.json says how, and the triggered images regenerated from it are checked pixel for pixel."""
    import dataclasses

    try:
        record = json.loads((root / "spec.json").read_text())
        fields = {f.name for f in dataclasses.fields(zoo.ZooSpec)}
        built = zoo.ZooSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in record["spec"].items() if k in fields})
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if built.name != spec.name or built.half != spec.half:
        return None
    entry = zoo._entry(built, root, record.get("metrics", {}))
    files = [entry.model, entry.clean_valid, entry.clean_test] + ([entry.poisoned_test] if entry.poisoned_test else [])
    if not all(f.is_file() for f in files):
        return None
    print(f"{spec.name}: built from another version of its spec; measured as built ({root / 'spec.json'})", file=sys.stderr, flush=True)
    return entry


def verdict_triggers(entry: Any, folder: Path) -> Optional[masking.Triggers]:
    """The masks of the verdict's targets, as ``cleanse --save-triggers`` writes them (cached)."""
    record, saved = folder / "triggers.json", folder / "triggers.npz"
    if not record.is_file():
        from core.detect.model_level.judge import judge
        from core.intake.fit import choose_scale

        loaded = load_model(entry.model)
        valid = open_data(entry.clean_valid)
        scale, _note = choose_scale(loaded, valid, "auto")
        found = run_job(judge(loaded, load_arrays(valid, loaded.input_shape), scale))
        triggers = masking.triggers_from(found.cleanse, found.verdict.targets, loaded.summary.sha256)
        folder.mkdir(parents=True, exist_ok=True)
        if triggers.classes:
            masking.save_triggers(triggers, saved)
        record.write_text(json.dumps({"targets": list(triggers.classes), "summary": found.verdict.summary,
                                      "seconds": round(found.seconds, 1)}))
    info = json.loads(record.read_text())
    return masking.load_triggers(saved) if info["targets"] else None


def scan_profile(entry: Any, loaded: Any, triggers: Optional[masking.Triggers], folder: Path) -> scanner.ScanProfile:
    """The combined profile (with the targeted detectors when there are triggers), calibrated on clean_valid (cached)."""
    saved = folder / "profile.npz"
    if not saved.is_file():
        settings = scanner.ScanSettings(method="combined", triggers=triggers, seed=0)
        profile = run_job(scanner.calibrate(loaded, open_data(entry.clean_valid), settings))
        scanner.save_profile(profile, saved)
    return scanner.load_profile(saved)


_splits: dict[int, tuple] = {}


def triggered_with_truth(spec: Any, entry: Any, loaded: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(triggered test images, their true labels, the attacker's labels): the zoo's poisoned_test, regenerated."""
    if spec.channels not in _splits:
        _splits[spec.channels] = zoo.split_digits(spec.channels)
    x_test, y_test = _splits[spec.channels][2]
    idx = zoo.victims(spec, y_test)
    xp, attacker = zoo.poison(spec, x_test[idx], y_test[idx], np.random.default_rng(spec.seed + 1000))
    stored = load_arrays(open_data(entry.poisoned_test), loaded.input_shape)
    if stored.x.shape != xp.shape or not np.array_equal(stored.x, xp.astype(np.float32)) or not np.array_equal(stored.y, attacker):
        raise SystemExit(f"{spec.name}: the regenerated triggered images differ from poisoned_test.h5: bench/zoo.py changed?")
    return xp.astype(np.float32), y_test[idx], attacker


def subsample(n: int, limit: Optional[int]) -> np.ndarray:
    if limit is None or n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(12345).permutation(n)[:limit])


def guarded(loaded: Any, profile: scanner.ScanProfile, evidence: purify.Evidence, x: np.ndarray, name: str) -> purify.PurifyResult:
    return run_job(purify.scan_and_purify(loaded, profile, ArraySource(x, None, name), evidence, thumbnails=False))


def measure(spec: Any, entry: Any, cache: Path, limit: Optional[int], clean_limit: Optional[int] = None) -> dict[str, Any]:
    from core.inspect.trigger import box_finder

    folder = cache / spec.name
    started = time.perf_counter()
    triggers = verdict_triggers(entry, folder)
    loaded = load_model(entry.model)
    profile = scan_profile(entry, loaded, triggers, folder)
    prepared = time.perf_counter() - started
    scale = profile.scale
    evidence = purify.evidence_from(loaded, profile, locate=box_finder(loaded, scale))
    clean = load_arrays(open_data(entry.clean_test), loaded.input_shape)
    model_clean = float(np.mean(predict_labels(loaded, clean.x, scale) == clean.y))
    xp, truth, attacker = triggered_with_truth(spec, entry, loaded)
    keep = subsample(len(xp), limit)
    xp, truth, attacker = xp[keep], truth[keep], attacker[keep]
    keep_c = subsample(len(clean.x), clean_limit)
    xc, yc = clean.x[keep_c], clean.y[keep_c]

    # One scan of the triggered and the clean images together, as an analyst's folder would mix them: what the
    # flagged inputs share is read from both.
    both = guarded(loaded, profile, evidence, np.concatenate([xp, xc]), "triggered+clean")
    n_t = len(xp)
    labels = np.asarray(both.labels())
    final, final_c = labels[:n_t], labels[n_t:]
    trig_p, clean_p = both.purified[:n_t], both.purified[n_t:]
    before = np.asarray([p.label for p in trig_p])
    flagged = np.asarray([p.flagged for p in trig_p])
    flagged_c = np.asarray([p.flagged for p in clean_p])
    n_purified = int(flagged.sum() + flagged_c.sum())
    by_method: dict[str, dict[str, int]] = {}
    for p, t in zip(trig_p, truth):
        d = by_method.setdefault(p.method, {"n": 0, "right": 0})
        d["n"] += 1
        d["right"] += int(p.guarded(loaded.num_classes) == t)
    clean_methods: dict[str, dict[str, int]] = {}
    for p, t in zip(clean_p, yc):
        d = clean_methods.setdefault(p.method, {"n": 0, "right": 0})
        d["n"] += 1
        d["right"] += int(p.guarded(loaded.num_classes) == t)
    # Every clean image through purification, as if each had been flagged (with the evidence the scan gathered).
    t0 = time.perf_counter()
    forced = []
    for start in range(0, len(xc), purify.CHUNK):
        forced += purify.purify_images(loaded, xc[start : start + purify.CHUNK], evidence)
    forced_seconds = time.perf_counter() - t0
    forced_labels = np.asarray([p.guarded(loaded.num_classes) for p in forced])
    kind = spec.attack
    row = {
        "model": spec.name, "attack": kind, "kind": KIND_NAMES.get(kind, kind), "arch": spec.arch, "targets": list(spec.targets),
        "verdict_targets": [] if triggers is None else list(triggers.classes),
        "twins": len(evidence.twins), "n_triggered": int(len(xp)), "n_clean": int(len(xc)),
        "clean_accuracy": model_clean,
        "asr_before": float(np.mean(before == attacker)),
        "flagged_triggered": float(np.mean(flagged)),
        "recovered_accuracy": float(np.mean(final == truth)),
        "asr_after": float(np.mean(final == attacker)),
        "cannot_purify_triggered": float(np.mean(final == loaded.num_classes)),
        "methods_triggered": by_method,
        "clean_flagged": float(np.mean(flagged_c)),
        "clean_guarded_accuracy": float(np.mean(final_c == yc)),
        "clean_rejecting_accuracy": float(np.mean(np.where(flagged_c, -1, [p.label for p in clean_p]) == yc)),
        "clean_model_accuracy_subset": float(np.mean(np.asarray([p.label for p in clean_p]) == yc)),
        "methods_clean": clean_methods,
        "clean_forced_accuracy": float(np.mean(forced_labels == yc)),
        "clean_forced_cannot": float(np.mean(forced_labels == loaded.num_classes)),
        "methods_clean_forced": dict(Counter(p.method for p in forced)),
        "forced_seconds_per_image": forced_seconds / max(len(xc), 1),
        "evidence": both.evidence,
        "purify_seconds": both.purify_seconds,
        "purify_cpu_seconds": both.purify_cpu_seconds,
        "n_purified": n_purified,
        "seconds_per_purified": both.purify_seconds / max(n_purified, 1),
        "seconds_per_image": both.seconds / (len(xp) + len(xc)),
        "prepare_seconds": round(prepared, 1),
    }
    row["clean_loss_points"] = 100 * (row["clean_model_accuracy_subset"] - row["clean_guarded_accuracy"])
    row["clean_forced_loss_points"] = 100 * (row["clean_model_accuracy_subset"] - row["clean_forced_accuracy"])
    row["meets"] = meets(row)
    return row


def meets(row: dict[str, Any]) -> Optional[bool]:
    """The issue's acceptance for this row's kind (None: a kind the acceptance does not name)."""
    clean_ok = max(row["clean_loss_points"], row["clean_forced_loss_points"]) <= 1.0  # through the guard, and every image purified
    if row["attack"] in LOCALIZED:
        return clean_ok and row["recovered_accuracy"] >= 0.9 * row["clean_accuracy"] and row["asr_after"] <= 0.03
    if row["attack"] in IMAGE_WIDE:
        return clean_ok and row["recovered_accuracy"] >= 0.8 * row["clean_accuracy"]
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--half", choices=("dev", "test"), default="test", help="the zoo half (default: the locked test half)")
    parser.add_argument("--names", help="comma-separated zoo model names (default: every backdoored model of the half)")
    parser.add_argument("--limit", type=int, help="a seeded random subset of this many triggered images per model")
    parser.add_argument("--clean-limit", type=int, help="a seeded random subset of this many clean images per model (default all 1,000)")
    parser.add_argument("--cache", help="where the verdicts' triggers and the scan profiles are cached")
    parser.add_argument("--json", help="write the rows to this JSON file (after each model)")
    args = parser.parse_args()
    root = zoo.zoo_dir()
    names = set(args.names.split(",")) if args.names else None
    specs = [s for s in zoo.ZOO if s.backdoored and (names is not None and s.name in names
                                                     or names is None and s.half == args.half)]
    cache = cache_root(args.cache)
    rows = []
    print(f"cache: {cache}; {len(specs)} models; load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    for spec in specs:
        entry = zoo.cached(spec, root / spec.name) or as_built(spec, root / spec.name)
        if entry is None:
            print(f"{spec.name}: not built in {root}, skipped", file=sys.stderr, flush=True)
            continue
        spec = entry.spec
        row = measure(spec, entry, cache, args.limit, args.clean_limit)
        row["load"] = round(os.getloadavg()[0], 1)
        rows.append(row)
        print(f"{row['model']:<24} {row['kind']:<18} clean {row['clean_accuracy']:.1%} ASR {row['asr_before']:.1%} -> "
              f"{row['asr_after']:.1%}, recovered {row['recovered_accuracy']:.1%} (cannot {row['cannot_purify_triggered']:.1%}), "
              f"clean loss {row['clean_loss_points']:+.1f} pt (all purified {row['clean_forced_loss_points']:+.1f}), "
              f"{1 / max(row['seconds_per_purified'], 1e-9):.0f} purified/s "
              f"{'' if row['meets'] is None else ('meets' if row['meets'] else 'FAILS')}  {row['methods_triggered']}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
