"""``evaluate``: clean accuracy and attack success rate of a model."""

from __future__ import annotations

import argparse

from cli.common import (add_model_arguments, add_output_arguments, add_scale_argument, conversions, drive, fit_to_model, open_model,
                        open_optional, say, say_conversions)
from cli.common import count
from core.evaluate import evaluate
from core.intake.models import LoadedModel

NAME = "evaluate"
HELP = "measure clean accuracy and attack success rate"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--clean", help="labelled clean data (HDF5, .npz or folder)")
    parser.add_argument("--poisoned", help="suspected-poisoned data; its labels are the target unless --target")
    parser.add_argument("--target", type=count(0), help="the attacker's target class")
    add_scale_argument(parser)
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    clean = open_optional(args.clean)
    poisoned = open_optional(args.poisoned)
    loaded: LoadedModel = open_model(args)
    fits = fit_to_model(args, loaded, clean=clean, poisoned=poisoned)
    result = drive(evaluate(loaded, clean, poisoned, args.target, args.scale), args)
    out = result.as_dict()
    out["model"] = loaded.summary.as_dict()
    out["conversions"] = conversions(fits)
    say(args, loaded.summary.describe())
    say_conversions(args, fits)
    say(args, result.scale_note)
    if result.clean_accuracy is not None:
        say(args, f"clean accuracy: {result.clean_accuracy:.4f} on {result.n_clean} images")
    if result.attack_success_rate is not None:
        say(args, f"attack success rate: {result.attack_success_rate:.4f} on {result.n_poisoned} images (target {result.target})")
    for item in result.skipped:
        say(args, f"skipped {item.source}: {item.reason}")
    return out
