"""STRIP acceptance on the demo BadNet, reproducible with one command.

    python bench/strip_acceptance.py [--demo /tmp/demo5] [--sweep]

Calibrates on the demo's clean_valid with the defaults (N=100 overlays, FRR
1%, seed 0), then measures on data never used for calibration:

- false rejection: clean test images flagged;
- false acceptance: poisoned test images not flagged;
- attack success after filtering: poisoned images both accepted and
  classified as the target;
- the guarded classifier through the real CLI (``main.py classify``) on the
  PNGs of the demo scan folder, against ``scan_manifest.csv``.

``--sweep`` repeats the filter figures for alternative blend weights (how the
defaults were chosen). Everything is seeded; re-running prints the same numbers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.detect.input_level import strip  # noqa: E402
from core.intake.data import Arrays, load_arrays, open_data  # noqa: E402
from core.demo import DemoBundle, export_demo, read_manifest  # noqa: E402
from core.jobs import run_job  # noqa: E402
from core.intake.models import LoadedModel, load_model  # noqa: E402

# (input weight, overlay weight, clip) -- the last is the course's unclipped addWeighted(1.5, 1).
SWEEP = [(1.0, 1.0, True), (0.5, 0.5, True), (1.0, 0.5, True), (0.7, 0.3, True), (1.5, 1.0, True), (1.5, 1.0, False)]


def measure(
    loaded: LoadedModel, bundle: DemoBundle, clean_test: Arrays, poisoned: Arrays, weights: strip.BlendWeights, clip: bool,
    args: argparse.Namespace,
) -> dict:
    started = time.perf_counter()
    profile = run_job(strip.calibrate(loaded, open_data(bundle.clean_valid), strip.StripSettings(args.overlays, args.frr, seed=args.seed, weights=weights), "255"))
    if not clip:  # emulate no clipping: a range no blend reaches
        profile = strip.StripProfile(**{**profile.__dict__, "pixel_max": 1e9})
        profile = _recalibrate_unclipped(loaded, bundle, profile, args)
    target = bundle.info["target"]
    lab_c, _, pred_c = strip.classify(loaded, profile, clean_test.x)
    lab_p, _, pred_p = strip.classify(loaded, profile, poisoned.x)
    n = loaded.num_classes
    return {
        "weights": f"{weights.input:g}/{weights.overlay:g}{'' if clip else ' (no clip)'}",
        "threshold": round(profile.threshold, 4),
        "empirical_threshold": round(profile.empirical_threshold, 4),
        "frr_clean_test": float(np.mean(lab_c == n)),
        "false_acceptance": float(np.mean(lab_p != n)),
        "asr_before": float(np.mean(pred_p == target)),
        "asr_after_filtering": float(np.mean(lab_p == target)),
        "clean_accuracy_guarded": float(np.mean(lab_c == clean_test.y)),
        "seconds": round(time.perf_counter() - started, 1),
        "_profile": profile,
    }


def _recalibrate_unclipped(loaded: LoadedModel, bundle: DemoBundle, profile: strip.StripProfile, args: argparse.Namespace) -> strip.StripProfile:
    arrays = load_arrays(open_data(bundle.clean_valid), loaded.input_shape)
    rng = np.random.default_rng(args.seed)
    rank = np.empty(len(arrays.x), np.int64)
    rank[rng.permutation(len(arrays.x))] = np.arange(len(arrays.x))
    x = arrays.x[np.argsort(rank)]
    _, ent, _ = strip.classify(loaded, profile, x[args.overlays:])
    t, m, s, e = strip.fit_threshold(ent, args.frr)
    return strip.StripProfile(**{**profile.__dict__, "threshold": t, "fit_mean": m, "fit_std": s, "empirical_threshold": e, "clean_entropies": ent})


def classify_scan_folder(bundle: DemoBundle, profile: strip.StripProfile) -> dict:
    """The guarded classifier as an analyst runs it: the real CLI on the PNGs."""
    manifest = read_manifest(bundle.manifest)
    with tempfile.TemporaryDirectory() as tmp:
        prof = strip.save_profile(profile, Path(tmp) / "demo_strip.npz")
        files = [str(bundle.scan_dir / m["file"]) for m in manifest]
        proc = subprocess.run(
            [sys.executable, str(ROOT / "main.py"), "classify", "--model", str(bundle.model), "--profile", str(prof), *files],
            capture_output=True, text=True, timeout=600,
        )
    if proc.returncode != 0:
        raise SystemExit(f"classify failed: {proc.stderr.strip()}")
    labels = [int(line) for line in proc.stdout.split()]
    n = 10
    trig = [lab for lab, m in zip(labels, manifest) if m["triggered"]]
    clean = [(lab, m["true_label"]) for lab, m in zip(labels, manifest) if not m["triggered"]]
    return {
        "triggered_images": len(trig),
        "triggered_printed_N": float(np.mean([lab == n for lab in trig])),
        "clean_images": len(clean),
        "clean_printed_true_digit": float(np.mean([lab == t for lab, t in clean])),
        "clean_printed_N": float(np.mean([lab == n for lab, _ in clean])),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default=str(Path(tempfile.gettempdir()) / "demo5"), help="demo folder (written first when missing)")
    parser.add_argument("--overlays", type=int, default=strip.DEFAULT_OVERLAYS)
    parser.add_argument("--frr", type=float, default=strip.DEFAULT_FRR)
    parser.add_argument("--seed", type=int, default=strip.DEFAULT_SEED)
    parser.add_argument("--sweep", action="store_true", help="also measure alternative blend weights")
    parser.add_argument("--skip-cli", action="store_true", help="skip the classify-on-PNGs check")
    args = parser.parse_args()
    bundle = run_job(export_demo(Path(args.demo)))
    loaded = load_model(bundle.model)
    clean_test = load_arrays(open_data(bundle.clean_test), loaded.input_shape)
    poisoned = load_arrays(open_data(bundle.poisoned_test), loaded.input_shape)
    print(f"demo {bundle.root}: {len(clean_test)} clean test, {len(poisoned)} poisoned test images, target {bundle.info['target']}; "
          f"N={args.overlays}, FRR={args.frr:.2%}, seed={args.seed}")
    default = strip.BlendWeights()
    combos = SWEEP if args.sweep else [(default.input, default.overlay, True)]
    rows = []
    header = f"{'weights':>18} {'threshold':>9} {'empirical':>9} {'FRR(test)':>9} {'FAR':>7} {'ASR before':>10} {'ASR after':>9} {'guarded acc':>11}"
    print(header)
    for a, b, clip in combos:
        row = measure(loaded, bundle, clean_test, poisoned, strip.BlendWeights(a, b), clip, args)
        rows.append(row)
        print(f"{row['weights']:>18} {row['threshold']:>9.4f} {row['empirical_threshold']:>9.4f} {row['frr_clean_test']:>9.2%} "
              f"{row['false_acceptance']:>7.2%} {row['asr_before']:>10.2%} {row['asr_after_filtering']:>9.2%} {row['clean_accuracy_guarded']:>11.2%}",
              flush=True)
    chosen = rows[0]
    verdict = {
        "weights": chosen["weights"],
        "frr_clean_test": chosen["frr_clean_test"],
        "asr_after_filtering": chosen["asr_after_filtering"],
        "pass_frr<=3%": chosen["frr_clean_test"] <= 0.03,
        "pass_asr_after<=5%": chosen["asr_after_filtering"] <= 0.05,
    }
    if not args.skip_cli:
        verdict["classify_scan_folder"] = classify_scan_folder(bundle, chosen["_profile"])
    print(json.dumps(verdict, indent=2))
    return 0 if verdict["pass_frr<=3%"] and verdict["pass_asr_after<=5%"] else 1


if __name__ == "__main__":
    sys.exit(main())
