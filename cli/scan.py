"""``scan``: input-level scanning with STRIP, SCALE-UP, TeCo, feature space, reversed-trigger masking, or combined (flag if any flags)."""

from __future__ import annotations

import argparse
import sys

from cli.common import (add_model_arguments, add_output_arguments, add_scale_argument, conversions, drive, fit_to_model, open_model,
                        open_scan_target, say, say_conversions, skipped_list)
from cli.common import count, flag_text, positive, rate, reject_class, reversed_triggers
from core.detect.input_level import scaleup
from core.detect.input_level import scanner
from core.detect.input_level import strip
from core.intake.data import open_data
from core.errors import DataError

NAME = "scan"
HELP = "flag trojaned inputs with STRIP, the feature-space detector, or both combined (SCALE-UP and TeCo for comparison); FRR calibrated to hold on unseen clean data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--method", choices=scanner.METHODS, default=scanner.DEFAULT_METHOD,
                        help=f"detector(s): combined = {' + '.join(scanner.COMBINED)}, flagged if any flags (default %(default)s); "
                             f"{' + '.join(scanner.WITH_TRIGGERS)} join it with --triggers (they watch the suspected targets); "
                             "scaleup and teco were measured weak on MNIST (docs/scan.md)")
    parser.add_argument("--triggers", metavar="FILE",
                        help="reversed triggers of the suspected targets (`cleanse --save-triggers FILE`): enables the "
                             "targeted detectors (reversed-trigger masking, feature space on the targets, the clean reference "
                             "model), alone (--method masking|target_features|reference) or within combined")
    parser.add_argument("--clean", help="clean validation data to calibrate on (HDF5, .npz or folder)")
    parser.add_argument("--profile", help="use a saved profile (any method) instead of calibrating")
    parser.add_argument("--frr", type=rate, default=None,
                        help="false rejection rate allowed on clean inputs calibration never saw "
                             f"(default {scanner.DEFAULT_FRR_PER_DETECTOR} per detector: {scanner.DEFAULT_FRR} for combined, "
                             f"{scanner.default_frr('combined', True)} with --triggers)")
    parser.add_argument("--confidence", type=rate, default=scanner.DEFAULT_CONFIDENCE,
                        help="probability that the false rejection rate holds (default %(default)s)")
    parser.add_argument("--overlays", type=count(1), default=strip.DEFAULT_OVERLAYS, help="STRIP: clean images superimposed on each input (default %(default)s)")
    parser.add_argument("--factors", type=positive, nargs="+", default=list(scaleup.DEFAULT_FACTORS),
                        help="SCALE-UP: pixel amplification factors (default %(default)s)")
    parser.add_argument("--seed", type=int, default=strip.DEFAULT_SEED, help="seed of the clean split and overlays (default 0)")
    parser.add_argument("--max-clean", type=count(2), default=strip.DEFAULT_MAX_CLEAN, help="clean images to calibrate on at most (default %(default)s)")
    parser.add_argument("--scan", help="data to scan: a folder of images (recursive), HDF5 or .npz")
    parser.add_argument("--save-profile", metavar="PROF", help="save the calibration (method, thresholds, model hash) to PROF (.npz)")
    add_scale_argument(parser)
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    target = open_scan_target(args)
    loaded = open_model(args)
    clean_source = open_data(args.clean) if args.clean and not args.profile else None
    fits = fit_to_model(args, loaded, clean=clean_source, scan=target)
    say_conversions(args, fits)
    if args.triggers and args.profile:
        raise DataError("--triggers is used when calibrating; a saved --profile already holds its masks (or none)")
    triggers = reversed_triggers(args, loaded)
    if args.profile:
        profile = scanner.load_profile(args.profile)
    else:
        settings = scanner.ScanSettings(
            method=args.method, triggers=triggers, frr=args.frr, confidence=args.confidence, seed=args.seed, max_clean=args.max_clean,
            strip=strip.StripSettings(n_overlays=args.overlays, seed=args.seed, max_clean=args.max_clean),
            scaleup=scaleup.ScaleUpSettings(factors=tuple(args.factors), seed=args.seed, max_clean=args.max_clean),
        )
        profile = drive(scanner.calibrate(loaded, clean_source, settings, args.scale), args)
    for warning in scanner.check_profile(loaded, profile):
        print(warning, file=sys.stderr)
    saved = str(scanner.save_profile(profile, args.save_profile)) if args.save_profile else None
    if target is not None:
        result = drive(scanner.scan(loaded, profile, target, thumbnails=False), args)
    else:
        result = scanner.ScannerResult(profile, [], [], scanner.check_profile(loaded, profile))
    out = result.as_dict()
    out["skipped"] = skipped_list(result.skipped) + skipped_list(profile.skipped)
    out["calibration"] = {"n_clean": int(len(profile.first.scores)), "skipped": skipped_list(profile.skipped), "notes": list(profile.notes)}
    out["saved_profile"] = saved
    out["conversions"] = conversions(fits)
    say(args, f"{scanner.LABELS[profile.method]}: thresholds {scanner.describe_thresholds(profile)}, for a false-rejection "
              f"rate of at most {profile.frr:.2%}; {profile.frr_estimate().describe()}")
    if target is not None:
        say(args, f"scanned {len(result.rows)}, flagged {result.flagged}; a flagged input gets {reject_class(profile.num_classes)}")
        for row in result.rows:
            scores = " ".join(f"{k}={v:.4f}" for k, v in row.scores.items())
            say(args, f"{row.source}#{row.index}\t{scores}\t{flag_text(row.flagged, profile.num_classes, row.flagged_by)}\t{row.label}")
    for item in out["skipped"]:
        say(args, f"skipped {item['source']}: {item['reason']}")
    if saved:
        say(args, f"profile saved to {saved}")
    return out
