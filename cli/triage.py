"""``triage``: rank every model file in a folder by suspicion (the ``cleanse`` checks on each)."""

from __future__ import annotations

import argparse

from cli.common import add_output_arguments, add_scale_argument, drive, open_optional, say
from cli.common import count
from core.detect.model_level.cleanse import CleanseSettings
from core.errors import DataError
from core.intake.data import Conversion
from core.detect.model_level.judge import METHODS
from core.detect.model_level.mmbd import MMBDSettings
from core.detect.model_level.triage import triage
from core.detect.model_level.verdict import NO_EVIDENCE, inconclusive_mark, targets_label

NAME = "triage"
HELP = "rank every model in a folder by suspicion: backdoored, suspicious, no evidence (skips unreadable or hostile files)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", required=True, help="folder of model files (.keras, .h5; searched recursively)")
    parser.add_argument("--clean", required=True, help="clean validation data, converted to each model's input shape")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                        help="model-level checks: cleanse (Neural Cleanse), mmbd (MM-BD); default both")
    parser.add_argument("--max-images", type=count(2), default=CleanseSettings().max_images, help="clean images read (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    add_scale_argument(parser)
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    if args.max_images < 2:
        raise DataError(f"--max-images must be at least 2; received {args.max_images}")
    clean = open_optional(args.clean)
    job = triage(args.models, clean, args.scale, args.methods,
                 CleanseSettings(max_images=args.max_images, seed=args.seed), MMBDSettings(seed=args.seed),
                 conversion=Conversion(resize=args.resize, channels=args.channels))
    result = drive(job, args)
    for n, row in enumerate(result.rows, start=1):
        targets = targets_label(row.targets, row.summary)
        # the words the product promises ("no evidence found"), never "clean"; the JSON keeps the machine value
        verdict = (row.level + (" found" if row.level == NO_EVIDENCE else "")) + inconclusive_mark(row.summary)
        say(args, f"{n:3d}. {verdict:26s} score {row.score:.2f} targets {targets:8s} {row.seconds:6.1f} s  {row.source}")
    for s in result.skipped:
        say(args, f"  skipped {s.source}: {s.reason}")
    say(args, f"{len(result.rows)} models judged, {len(result.skipped)} skipped, {result.seconds:.0f} s")
    return result.as_dict()
