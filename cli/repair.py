"""``repair``: remove a backdoor by Neural Cleanse unlearning, Fine-Pruning, or both; save the repaired model."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.common import (add_model_arguments, add_output_arguments, add_scale_argument, conversions, drive, fit_to_model, open_model,
                        open_optional, say, say_conversions)
from cli.common import count, positive, rate, share
from core.detect.model_level.cleanse import CleanseSettings
from core.detect.model_level.judge import judge
from core.detect.model_level.mmbd import MMBDSettings
from core.intake.data import Arrays, load_arrays
from core.errors import DataError
from core.intake.fit import choose_scale
from core.repair.repair import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_FRACTION,
    DEFAULT_HOLDOUT,
    DEFAULT_LEARNING_RATE,
    DEFAULT_RESTARTS,
    METHODS,
    RepairSettings,
    repair,
)

NAME = "repair"
HELP = "repair a backdoored model with clean data: unlearn the reversed trigger (Neural Cleanse), fine-prune, or both"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--clean", required=True, help="labelled clean validation data (trained on, except a held-out share)")
    parser.add_argument("--method", choices=METHODS, default="unlearn", help="default %(default)s; both = fine-prune, then unlearn")
    parser.add_argument("--poisoned", help="suspected-poisoned data, to report attack success rate (never trained on)")
    parser.add_argument("--target", type=count(0), help="the attacker's target class for --poisoned (default: its labels)")
    parser.add_argument("--target-class", type=count(0), nargs="+", metavar="CLASS",
                        help="unlearn these classes' reversed triggers instead of the classes Neural Cleanse flags")
    parser.add_argument("--classes", type=count(1), default=CleanseSettings().candidates, help="Neural Cleanse candidate classes K (default %(default)s)")
    parser.add_argument("--fraction", type=rate, default=DEFAULT_FRACTION, help="share of each batch stamped with the trigger (default %(default)g)")
    parser.add_argument("--epochs", type=count(0), default=DEFAULT_EPOCHS, help="unlearning epochs (default %(default)s)")
    parser.add_argument("--learning-rate", type=positive, default=DEFAULT_LEARNING_RATE, help="Adam rate, cosine-decayed (default %(default)g)")
    parser.add_argument("--batch-size", type=count(1), default=DEFAULT_BATCH_SIZE, help="default %(default)s")
    parser.add_argument("--restarts", type=count(0), default=DEFAULT_RESTARTS,
                        help="extra reversed triggers per flagged class (other seeds) to unlearn as well (default %(default)s)")
    parser.add_argument("--holdout", type=share, default=DEFAULT_HOLDOUT, help="share of clean data kept out of training to measure the result (default %(default)g)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="repaired model to write (.keras or .h5); a JSON record goes to OUT.json")
    add_scale_argument(parser)
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    if not 0 <= args.holdout < 1 or not 0 < args.fraction < 1 or args.epochs < 0 or args.restarts < 0:
        raise DataError("--holdout must lie in [0, 1), --fraction in (0, 1), and --epochs and --restarts be >= 0")
    clean = open_optional(args.clean)
    poisoned = open_optional(args.poisoned)
    loaded = open_model(args)
    fits = fit_to_model(args, loaded, clean=clean, poisoned=poisoned)
    say_conversions(args, fits)
    if not clean.labelled:
        raise DataError(f"{clean.path}: clean data must be labelled (unlearning keeps each image's true label)")
    scale, note = choose_scale(loaded, clean, args.scale)
    say(args, note)
    arrays = load_arrays(clean, loaded.input_shape)
    pois = load_arrays(poisoned, loaded.input_shape) if poisoned is not None else None
    cleanse_settings = CleanseSettings(candidates=args.classes, seed=args.seed)
    verdict, suspects = None, None
    if not args.target_class and args.method != "fine-prune":
        # the model-level verdict first (as the cleanse command), so that the classes to unlearn are the combined
        # verdict's when Neural Cleanse alone flags none; its Neural Cleanse result is reused, not run again
        judged = drive(judge(loaded, Arrays(arrays.x[: cleanse_settings.max_images], arrays.y[: cleanse_settings.max_images], [], []),
                             scale, cleanse_settings=cleanse_settings, mmbd_settings=MMBDSettings(seed=args.seed)), args)
        verdict, suspects = judged.cleanse, tuple(judged.verdict.targets) or None
        say(args, f"verdict: {judged.verdict.summary}")
    settings = RepairSettings(
        method=args.method, classes=tuple(args.target_class) if args.target_class else None, fraction=args.fraction,
        epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size, holdout=args.holdout,
        restarts=args.restarts, seed=args.seed, cleanse=cleanse_settings, suspects=suspects,
    )
    result = drive(repair(
        loaded, arrays.x, arrays.y, scale, settings, verdict=verdict,
        x_poisoned=None if pois is None else pois.x, y_poisoned=None if pois is None else pois.y, target=args.target,
        out=Path(args.out), inputs=[args.clean, args.poisoned, getattr(args, "arch", None)],
    ), args)
    out = result.as_dict()
    out["skipped"] = [s.as_dict() for s in list(arrays.skipped) + (list(pois.skipped) if pois is not None else [])]
    out["conversions"] = conversions(fits)
    if result.cleanse is not None:
        say(args, result.cleanse.describe())
    for stage in result.stages:
        m = stage.metrics
        acc = "n/a" if m.clean_accuracy is None else f"{m.clean_accuracy:.4f}"
        asr = "n/a" if m.attack_success_rate is None else f"{m.attack_success_rate:.4f}"
        say(args, f"{stage.stage:>12}: clean accuracy {acc}, attack success rate {asr}")
    say(args, f"attack success measured on {result.asr_source}")
    if result.note:
        say(args, result.note)
    say(args, f"saved {result.saved} (record {result.record_path})")
    return out
