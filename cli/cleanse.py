"""``cleanse``: Neural Cleanse (Wang et al., 2019) -- is this model backdoored, and towards which class?"""

from __future__ import annotations

import argparse

from cli.common import add_model_arguments, add_output_arguments, add_scale_argument, drive, open_model, open_optional, say
from core.cleanse import CleanseSettings, cleanse
from core.data import load_arrays
from core.errors import DataError

NAME = "cleanse"
HELP = "judge a model backdoored or clean by reverse-engineering a trigger per class (Neural Cleanse)"
_DEFAULTS = CleanseSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--clean", required=True, help="clean validation data (labels optional; used to choose --scale auto)")
    parser.add_argument("--classes", type=int, default=_DEFAULTS.candidates,
                        help="K: with more classes than this, screen them all cheaply and optimise only the K most "
                             "suspicious (default %(default)s)")
    parser.add_argument("--only", type=int, nargs="+", metavar="CLASS", help="optimise exactly these classes (no screening)")
    parser.add_argument("--rounds", type=int, default=_DEFAULTS.max_rounds,
                        help=f"at most this many rounds of {_DEFAULTS.steps_per_round} optimisation steps per class (default %(default)s)")
    parser.add_argument("--max-images", type=int, default=_DEFAULTS.max_images, help="clean images read (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    add_scale_argument(parser)
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    if args.classes < 1 or args.rounds < 1 or args.max_images < 2:
        raise DataError("--classes and --rounds must be at least 1 and --max-images at least 2")
    clean = open_optional(args.clean)
    loaded = open_model(args)
    settings = CleanseSettings(candidates=args.classes, max_rounds=args.rounds, max_images=args.max_images, seed=args.seed)
    arrays = load_arrays(clean, loaded.input_shape, limit=args.max_images)
    source = clean if args.scale == "auto" else None
    scale = args.scale
    if source is not None:
        from core.evaluate import choose_scale

        scale, note = choose_scale(loaded, clean, "auto")
        say(args, note)
    result = drive(cleanse(loaded, arrays, scale, settings, classes=args.only), args)
    out = result.as_dict()
    out["skipped"] = [s.as_dict() for s in arrays.skipped]
    out["model"] = loaded.summary.path
    say(args, result.describe())
    for cls in result.candidates:
        mark = "  <- flagged" if cls in result.flagged_classes else ""
        say(args, f"class {cls:>5}: mask norm {result.norms[cls]:8.1f} px, anomaly index {result.anomaly_index[cls]:6.2f}{mark}")
    if result.screened_out:
        say(args, f"{len(result.screened_out)} classes screened out: {result.screening['method']}")
    say(args, f"{result.seconds:.1f} s")
    return out
