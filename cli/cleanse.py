"""``cleanse``: is this model backdoored, and towards which class? One verdict from every model-level check.

Neural Cleanse (Wang et al., 2019: an abnormally small trigger) and MM-BD
(Wang et al., 2024: an abnormally large logit margin, any trigger size), plus
the attack success measured on ``--poisoned`` images when given, combined by
core.detect.model_level.verdict into "backdoored", "suspicious" or "clean" (no evidence found).
The contract keys ``anomaly_index``, ``norms``, ``candidates`` stay Neural
Cleanse's; ``verdict`` and ``flagged_classes`` are the combined verdict's.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from cli.common import (add_model_arguments, add_output_arguments, add_scale_argument, conversions, drive, fit_to_model, open_model,
                        open_optional, say, say_conversions)
from cli.common import count
from core.detect.model_level.cleanse import CleanseResult, CleanseSettings
from core.intake.data import load_arrays
from core.errors import DataError
from core.detect.model_level.judge import METHODS, judge
from core.detect.model_level.mmbd import MMBDSettings

NAME = "cleanse"
HELP = "judge a model backdoored, suspicious or clean: Neural Cleanse, MM-BD and measured attack success combined"
_DEFAULTS = CleanseSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--clean", required=True, help="clean validation data (labels optional; used to choose --scale auto)")
    parser.add_argument("--classes", type=count(1), default=_DEFAULTS.candidates,
                        help="K: with more classes than this, screen them all cheaply and optimise only the K most "
                             "suspicious (default %(default)s)")
    parser.add_argument("--only", type=count(0), nargs="+", metavar="CLASS", help="optimise exactly these classes (no screening)")
    parser.add_argument("--rounds", type=count(1), default=_DEFAULTS.max_rounds,
                        help=f"at most this many rounds of {_DEFAULTS.steps_per_round} optimisation steps per class (default %(default)s)")
    parser.add_argument("--max-images", type=count(2), default=_DEFAULTS.max_images, help="clean images read (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                        help="model-level checks to run: cleanse (Neural Cleanse), twin (Neural Cleanse on a clean twin distilled "
                             "from the model; needs cleanse), mmbd (MM-BD), warp (warp inversion); default all four, "
                             "which the verdict's levels were fitted with")
    parser.add_argument("--poisoned", help="suspected-poisoned images: their measured attack success is weighed in the verdict")
    parser.add_argument("--target", type=count(0), help="the attacker's class for --poisoned (default: its labels)")
    parser.add_argument("--save-triggers", metavar="FILE",
                        help="write Neural Cleanse's reversed triggers of the verdict's target classes to FILE (.npz), "
                             "for `scan --triggers` (reversed-trigger masking)")
    add_scale_argument(parser)
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    if args.classes < 1 or args.rounds < 1 or args.max_images < 2:
        raise DataError("--classes and --rounds must be at least 1 and --max-images at least 2")
    if args.save_triggers and "cleanse" not in args.methods:
        raise DataError("--save-triggers writes Neural Cleanse's reversed triggers: keep cleanse among --methods")
    if args.target is not None and not args.poisoned:
        raise DataError("--target names the attacker's class of --poisoned data: give --poisoned too")
    clean = open_optional(args.clean)
    poisoned = open_optional(args.poisoned)
    loaded = open_model(args)
    fits = fit_to_model(args, loaded, clean=clean, poisoned=poisoned)
    say_conversions(args, fits)
    settings = CleanseSettings(candidates=args.classes, max_rounds=args.rounds, max_images=args.max_images, seed=args.seed)
    arrays = load_arrays(clean, loaded.input_shape, limit=args.max_images)
    source = clean if args.scale == "auto" else None
    scale = args.scale
    if source is not None:
        from core.intake.fit import choose_scale

        scale, note = choose_scale(loaded, clean, "auto")
        say(args, note)
    job = judge(loaded, arrays, scale, poisoned=poisoned, target=args.target, methods=args.methods,
                cleanse_settings=settings, mmbd_settings=MMBDSettings(seed=args.seed), classes=args.only)
    judgement = drive(job, args)
    verdict, result = judgement.verdict, judgement.cleanse
    # Neural Cleanse's contract keys stay, empty when it was not run (--methods mmbd)
    out = result.as_dict() if result is not None else {"anomaly_index": {}, "norms": {}, "candidates": []}
    out.update({
        "verdict": verdict.machine_verdict,
        "flagged_classes": list(verdict.targets),
        "targets": list(verdict.targets),
        "summary": verdict.summary,
        "reason": verdict.reason,
        "score": round(verdict.score, 4),
        "evidence": {e.method: e.as_dict() for e in verdict.evidence},
        "methods": list(verdict.methods),
        "neural_cleanse_flagged": None if result is None else list(result.flagged_classes),
        "mmbd": None if judgement.mmbd is None else judgement.mmbd.as_dict(),
        "warp": None if judgement.warp is None else judgement.warp.as_dict(),
        "false_alarm": verdict.false_alarm,
        "evaluation": None if judgement.evaluation is None else judgement.evaluation.as_dict(),
        "scale": judgement.scale,
        "seconds": round(judgement.seconds, 2),
    })
    skipped = list(arrays.skipped) + ([] if judgement.evaluation is None else list(judgement.evaluation.skipped))
    out["skipped"] = [s.as_dict() for s in skipped]
    out["model"] = loaded.summary.path
    out["conversions"] = conversions(fits)
    out["triggers_file"] = _save_triggers(args, result, verdict.targets, loaded.summary.sha256) if args.save_triggers else None
    say(args, f"{verdict.summary}." + (f" {verdict.false_alarm[0].upper()}{verdict.false_alarm[1:]}." if verdict.false_alarm else ""))
    say(args, verdict.reason)
    if result is not None:
        for cls in result.candidates:
            side = "below the median" if result.norms[cls] < result.median else "above the median: no sign of a backdoor"
            mark = "  <- the verdict's target" if cls in verdict.targets else ""
            say(args, f"class {cls:>5}: mask norm {result.norms[cls]:8.1f} px, anomaly index {result.anomaly_index[cls]:6.2f} "
                      f"({side}){mark}")
        if result.screened_out:
            say(args, f"{len(result.screened_out)} classes screened out: {result.screening['method']}")
    if judgement.mmbd is not None:
        mm = judgement.mmbd
        say(args, "MM-BD maximum margins: " + ", ".join(f"{c}: {mm.margins[c]:.1f}" for c in sorted(mm.margins)))
    if judgement.warp is not None:
        say(args, "warp inversion, smallest working warp per class: "
                  + ", ".join(f"{c}: {v:.2f} px" for c, v in sorted(judgement.warp.shifts.items())))
    say(args, f"score {verdict.score:.2f}, {judgement.seconds:.1f} s")
    return out


def _save_triggers(args: argparse.Namespace, result: CleanseResult, targets: Sequence[int], sha256: str) -> Optional[str]:
    """The reversed masks of the verdict's targets, or nothing (None) when it names none."""
    from core.detect.input_level.masking import save_triggers, triggers_from

    triggers = triggers_from(result, targets, sha256)
    if not triggers.classes:
        say(args, f"no target class named: nothing written to {args.save_triggers}")
        return None
    path = save_triggers(triggers, args.save_triggers)
    say(args, f"reversed triggers of class{'es' if len(triggers.classes) > 1 else ''} "
              f"{', '.join(map(str, triggers.classes))} written to {path}")
    return str(path)
