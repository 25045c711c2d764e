"""``strip``: calibrate the STRIP entropy detector on clean data and scan inputs with it."""

from __future__ import annotations

import argparse
import sys

from cli.common import (add_model_arguments, add_output_arguments, add_scale_argument, conversions, drive, fit_to_model, open_model,
                        open_scan_target, say, say_conversions, skipped_list)
from cli.common import count, flag_text, positive, rate, reject_class
from core.detect.input_level import strip
from core.intake.data import open_data

NAME = "strip"
HELP = "flag trojaned inputs by their low prediction entropy under superimposition (STRIP)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--clean", help="clean validation data to calibrate on (HDF5, .npz or folder)")
    parser.add_argument("--profile", help="use a saved profile instead of calibrating (no --clean needed)")
    parser.add_argument("--frr", type=rate, default=strip.DEFAULT_FRR, help="false rejection rate allowed on clean inputs calibration never saw (default %(default)s)")
    parser.add_argument("--confidence", type=rate, default=strip.DEFAULT_CONFIDENCE,
                        help="probability that the false rejection rate holds on unseen clean inputs (default %(default)s)")
    parser.add_argument("--overlays", type=count(1), default=strip.DEFAULT_OVERLAYS, help="clean images superimposed on each input (default 100)")
    parser.add_argument("--seed", type=int, default=strip.DEFAULT_SEED, help="seed for drawing the overlays (default 0)")
    parser.add_argument("--input-weight", type=positive, default=strip.DEFAULT_INPUT_WEIGHT, help="weight of the scanned input in a blend (default %(default)s)")
    parser.add_argument("--overlay-weight", type=positive, default=strip.DEFAULT_OVERLAY_WEIGHT, help="weight of the overlay in a blend (default %(default)s)")
    parser.add_argument("--max-clean", type=count(2), default=strip.DEFAULT_MAX_CLEAN, help="clean images to calibrate on at most (default %(default)s)")
    parser.add_argument("--chunk", type=count(1), help="blended images per model call (memory bound; default from the input size)")
    parser.add_argument("--scan", help="data to scan: a folder of images (recursive), HDF5 or .npz")
    parser.add_argument("--save-profile", metavar="PROF", help="save the calibration (overlays, threshold, model hash) to PROF (.npz)")
    add_scale_argument(parser)
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    target = open_scan_target(args)
    loaded = open_model(args)
    clean_source = open_data(args.clean) if args.clean and not args.profile else None
    fits = fit_to_model(args, loaded, clean=clean_source, scan=target)
    say_conversions(args, fits)
    calibration_skipped: list = []
    if args.profile:
        profile = strip.load_profile(args.profile)
    else:
        clean = clean_source
        settings = strip.StripSettings(args.overlays, args.frr, args.confidence, args.seed,
                                       strip.BlendWeights(args.input_weight, args.overlay_weight), args.max_clean, args.chunk)
        profile = drive(strip.calibrate(loaded, clean, settings, args.scale), args)
        calibration_skipped = list(profile.skipped)
    for warning in strip.check_profile(loaded, profile):
        print(warning, file=sys.stderr)
    saved = str(strip.save_profile(profile, args.save_profile)) if args.save_profile else None
    if target is not None:
        result = drive(strip.scan(loaded, profile, target, args.chunk, thumbnails=False), args)
    else:
        result = strip.ScanResult(profile, [], [], strip.check_profile(loaded, profile))
    out = result.as_dict()
    out["skipped"] = skipped_list(result.skipped) + skipped_list(calibration_skipped)
    out["calibration"] = {
        "n_clean": int(len(profile.clean_entropies)),
        "skipped": skipped_list(calibration_skipped),
        "notes": list(profile.notes),
    }
    out["saved_profile"] = saved
    out["conversions"] = conversions(fits)
    say(args, f"threshold {profile.threshold:.4f} bits for FRR {profile.frr:.2%}: {profile.frr_estimate().describe()}, "
              f"{profile.n_overlays} overlays, weights {profile.weights.input:g}/{profile.weights.overlay:g}, scale {profile.scale}")
    if target is not None:
        say(args, f"scanned {len(result.rows)}, flagged {result.flagged}; a flagged input gets {reject_class(profile.num_classes)}")
        for row in result.rows:
            say(args, f"{row.source}#{row.index}\t{row.entropy:.4f}\t{flag_text(row.flagged, profile.num_classes)}\t{row.label}")
    for item in out["skipped"]:
        say(args, f"skipped {item['source']}: {item['reason']}")
    if saved:
        say(args, f"profile saved to {saved}")
    return out
