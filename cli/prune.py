"""``prune``: Fine-Pruning (Liu et al., 2018) -- prune dormant channels, fine-tune, save."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.common import (add_model_arguments, add_output_arguments, add_scale_argument, conversions, drive, fit_to_model, open_model,
                        open_optional, say, say_conversions)
from cli.common import count, percent, positive, rate, share
from core.intake.data import load_arrays
from core.errors import DataError
from core.intake.fit import choose_scale
from core.repair.pruning import (
    DEFAULT_AUGMENT,
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_HOLDOUT,
    DEFAULT_LEARNING_RATE,
    DEFAULT_MAX_ACC_DROP,
    PruneSettings,
    fine_prune,
)

NAME = "prune"
HELP = "remove a backdoor by Fine-Pruning: prune dormant channels of a conv layer, then fine-tune on clean data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--clean", required=True, help="labelled clean validation data: ranks channels and fine-tunes")
    parser.add_argument("--poisoned", help="suspected-poisoned data, to report attack success rate (never trained on)")
    parser.add_argument("--target", type=count(0), help="the attacker's target class (default: the poisoned data's labels)")
    parser.add_argument("--layer", help="Conv2D layer to prune (default: the last conv layer feeding the dense head)")
    rule = parser.add_mutually_exclusive_group()
    rule.add_argument("--max-acc-drop", type=percent, default=DEFAULT_MAX_ACC_DROP * 100,
                      help="prune as far as clean accuracy stays within this many points (default %(default)g)")
    rule.add_argument("--prune-fraction", type=rate, help="prune this fraction of the channels instead (0..1)")
    rule.add_argument("--prune-count", type=count(1), help="prune this many channels instead")
    parser.add_argument("--fine-tune-epochs", type=count(0), default=DEFAULT_EPOCHS, help="epochs of fine-tuning (default %(default)s; 0: prune only)")
    parser.add_argument("--learning-rate", type=positive, default=DEFAULT_LEARNING_RATE, help="Adam learning rate, cosine-decayed (default %(default)g)")
    parser.add_argument("--batch-size", type=count(1), default=DEFAULT_BATCH_SIZE, help="fine-tuning batch size (default %(default)s)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=DEFAULT_AUGMENT, help="random shifts while fine-tuning (default on)")
    parser.add_argument("--holdout", type=share, default=DEFAULT_HOLDOUT, help="share of clean data kept out of fine-tuning to measure the result (default %(default)g)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="repaired model to write (.keras, or .h5); a JSON record goes to OUT.json")
    add_scale_argument(parser)
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    if not 0 <= args.holdout < 1:
        raise DataError(f"--holdout must lie in [0, 1); received {args.holdout}")
    clean = open_optional(args.clean)
    poisoned = open_optional(args.poisoned)
    loaded = open_model(args)
    fits = fit_to_model(args, loaded, clean=clean, poisoned=poisoned)
    say_conversions(args, fits)
    if not clean.labelled:
        raise DataError(f"{clean.path}: clean data must be labelled to rank channels and fine-tune")
    scale, note = choose_scale(loaded, clean, args.scale)
    say(args, note)
    shape = loaded.input_shape
    arrays = load_arrays(clean, shape)
    pois = load_arrays(poisoned, shape) if poisoned is not None else None
    settings = PruneSettings(
        layer=args.layer, max_acc_drop=args.max_acc_drop / 100.0, fraction=args.prune_fraction, count=args.prune_count,
        epochs=args.fine_tune_epochs, learning_rate=args.learning_rate, batch_size=args.batch_size,
        augment=args.augment, holdout=args.holdout, seed=args.seed,
    )
    result = drive(fine_prune(
        loaded, arrays.x, arrays.y, scale, settings,
        x_poisoned=None if pois is None else pois.x, y_poisoned=None if pois is None else pois.y, target=args.target,
        out=Path(args.out), inputs=[args.clean, args.poisoned, getattr(args, "arch", None)],
    ), args)
    out = result.as_dict()
    skipped = list(arrays.skipped) + (list(pois.skipped) if pois is not None else [])
    out["skipped"] = [s.as_dict() for s in skipped]
    out["conversions"] = conversions(fits)
    say(args, f"pruned {len(result.pruned_channels)}/{result.channels_total} channels of {result.layer} ({result.sweep.stop_rule})")
    for stage in ("before", "after_prune", "after_fine_tune"):
        m = getattr(result, stage)
        asr = "n/a" if m.attack_success_rate is None else f"{m.attack_success_rate:.4f}"
        say(args, f"{stage:>16}: clean accuracy {m.clean_accuracy:.4f}, attack success rate {asr}")
    say(args, f"saved {result.saved} (record {result.record_path})")
    return out
