"""``purify``: scan inputs and give each flagged one its true label back (core/repair/purify.py), or say why it cannot."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional

from cli.common import (add_model_arguments, add_output_arguments, add_scale_argument, conversions, drive, fit_to_model, open_model,
                        say, say_conversions, skipped_list)
from cli.common import count, rate, reject_class, reversed_triggers
from core.detect.input_level import scanner, strip
from core.errors import DataError
from core.intake.data import open_data

NAME = "purify"
HELP = ("scan inputs (combined detectors) and give each flagged one its true label back: the trigger cut out and inpainted, "
        "or the clean reference model's answer for image-wide triggers; 'cannot purify' with the reason otherwise")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--clean", help="clean validation data to calibrate the scan on (HDF5, .npz or folder)")
    parser.add_argument("--profile", help="a scan profile saved by `scan --save-profile` instead of calibrating (its reversed "
                                          "triggers and clean reference networks are the evidence)")
    parser.add_argument("--scan", required=True, help="data to scan and purify: a folder of images (recursive), HDF5 or .npz")
    parser.add_argument("--triggers", metavar="FILE",
                        help="reversed triggers of the suspected targets (`cleanse --save-triggers FILE`): the regions cut out, "
                             "and the targeted detectors with the clean reference model (without it only salient boxes are tried, "
                             "and no reference can confirm an answer)")
    parser.add_argument("--out", metavar="DIR", help="write each flagged input's before, mask and after images and purify.json to DIR")
    parser.add_argument("--frr", type=rate, default=None, help="false rejection rate of the scan (default: 1%% per detector)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clean split (default 0)")
    parser.add_argument("--max-clean", type=count(2), default=strip.DEFAULT_MAX_CLEAN,
                        help="clean images to calibrate on at most (default %(default)s)")
    add_scale_argument(parser)
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    from core.inspect.trigger import box_finder
    from core.intake.atomic import refuse_overwriting
    from core.repair import purify

    if not args.clean and not args.profile:
        raise DataError("give --clean DATA to calibrate the scan on, or --profile PROF saved earlier")
    if args.triggers and args.profile:
        raise DataError("--triggers is used when calibrating; a saved --profile already holds its masks (or none)")
    if args.out:
        refuse_overwriting(args.out, args.model, args.clean, args.scan, args.profile, args.triggers)
        purify.check_output_folder(args.out)
    target = open_data(args.scan)
    loaded = open_model(args)
    clean = open_data(args.clean) if args.clean and not args.profile else None
    fits = fit_to_model(args, loaded, clean=clean, scan=target)
    say_conversions(args, fits)
    triggers = reversed_triggers(args, loaded)
    if args.profile:
        profile = scanner.load_profile(args.profile)
    else:
        settings = scanner.ScanSettings(method="combined", triggers=triggers, frr=args.frr, seed=args.seed, max_clean=args.max_clean,
                                        strip=strip.StripSettings(seed=args.seed, max_clean=args.max_clean))
        profile = drive(scanner.calibrate(loaded, clean, settings, args.scale), args)
    for warning in scanner.check_profile(loaded, profile):
        print(warning, file=sys.stderr)
    evidence = purify.evidence_from(loaded, profile, triggers, locate=box_finder(loaded, profile.scale))
    result = drive(purify.scan_and_purify(loaded, profile, target, evidence, thumbnails=False), args)
    out = result.as_dict()
    out["skipped"] = skipped_list(result.scan.skipped) + skipped_list(profile.skipped)
    out["conversions"] = conversions(fits)
    out["saved"] = str(purify.save_outputs(result, args.out, out)) if args.out else None
    _say(args, result, out["saved"])
    return out


def _say(args: argparse.Namespace, result: Any, saved: Optional[str]) -> None:
    from core.repair import purify

    n = result.num_classes
    flagged = [p for p in result.purified if p.flagged]
    say(args, result.evidence)
    say(args, f"scanned {len(result.purified)}, flagged {len(flagged)}: {sum(p.purified_label is not None for p in flagged)} purified, "
              f"{sum(p.purified_label is None for p in flagged)} cannot be purified (they get {reject_class(n)})")
    for row, p in zip(result.scan.rows, result.purified):
        name = f"{row.source}#{row.index}" if purify.in_array(row.source) else row.source
        if not p.flagged:
            say(args, f"{name}\t{p.label}\tok")
            continue
        got = f"cannot purify -> {n}" if p.purified_label is None else f"purified {p.purified_label}"
        say(args, f"{name}\t{p.label}\tflagged -> {got} ({p.method}): {p.reason}")
    for item in skipped_list(result.scan.skipped):
        say(args, f"skipped {item['source']}: {item['reason']}")
    if saved:
        say(args, f"before, mask and after images written to {saved}")
