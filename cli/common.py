"""Arguments and helpers every command shares, so each command reads as its analysis."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Optional, Sequence

from core.intake.data import Conversion, DataSource, open_data
from core.intake.fit import DataFit, check_fit
from core.intake.atomic import refuse_overwriting
from core.errors import DataError, TrojanScopeError
from core.jobs import Job, Progress, run_job
from core.intake.models import LoadedModel, load_model


# The flags that set each engine setting a TrojanScopeError names in ``fixed_by``
# (core messages never name flags); a command shows the first flag it has.
SETTING_FLAGS = {
    "output": ("--out", "--save-profile"),
    "target": ("--target",),
    "architecture": ("--arch",),
    "method": ("--method",),
    "classes": ("--target-class",),
    "profile": ("--profile",),
    "scale": ("--scale",),
    "triggers": ("--triggers",),
    "resize": ("--resize",),
    "channels": ("--channels",),
    "store": ("--store",),
    "scheduler": ("--scheduler",),
    "workers": ("--workers",),
}


def flags_fixing(exc: TrojanScopeError, args: argparse.Namespace) -> list[str]:
    """This command's flags for the settings that would fix ``exc``."""
    flags = []
    for setting in exc.fixed_by:
        known = [f for f in SETTING_FLAGS.get(setting, ()) if hasattr(args, f.lstrip("-").replace("-", "_"))]
        flags.extend(known[:1])
    return flags


# ------------------------------------------------------------ flag types
# Numeric flags are checked by argparse as they are read, so a wrong value is refused in one line before
# any model or data is opened (a rate of 3 used to be refused only after the model had loaded).


def rate(text: str) -> float:
    """A rate strictly between 0 and 1 (--frr, --confidence): 3% is written 0.03."""
    value = _number(text, float)
    if not 0 < value < 1:
        hint = f" (write {value:g}% as {value / 100:g})" if 1 <= value < 100 else ""
        raise argparse.ArgumentTypeError(f"{text} is not a rate: rates lie strictly between 0 and 1{hint}")
    return value


def share(text: str) -> float:
    """A share in [0, 1) (--holdout: 0 keeps nothing out)."""
    value = _number(text, float)
    if not 0 <= value < 1:
        hint = f" (write {value:g}% as {value / 100:g})" if 1 <= value < 100 else ""
        raise argparse.ArgumentTypeError(f"{text} is not a share: it lies in [0, 1){hint}")
    return value


def percent(text: str) -> float:
    """Percentage points between 0 and 100 (--max-acc-drop)."""
    value = _number(text, float)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text} is not a number of percentage points between 0 and 100")
    return value


def positive(text: str) -> float:
    value = _number(text, float)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be above 0")
    return value


def count(minimum: int) -> Any:
    """A whole number of at least ``minimum`` (epochs, images, classes...)."""

    def parse(text: str) -> int:
        value = _number(text, int)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} must be a whole number of at least {minimum}")
        return value

    parse.__name__ = f"whole number >= {minimum}"
    return parse


def _number(text: str, kind: type) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a{' whole' if kind is int else ''} number") from None
    if kind is float and value != value:  # NaN
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model file: .keras, legacy .h5, or weights-only .h5 with --arch")
    parser.add_argument("--arch", help="model file supplying the architecture when --model holds weights only")


def add_scale_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scale", choices=["auto", "255", "1"], default="auto",
        help="divide pixels by 255 or not; auto tries both on labelled clean data (default)",
    )
    add_conversion_arguments(parser)


def add_conversion_arguments(parser: argparse.ArgumentParser) -> None:
    """--resize and --channels: data sets (HDF5, .npz) whose images are not the model's shape are refused without them."""
    parser.add_argument("--resize", action="store_true",
                        help="resize HDF5/.npz images whose height and width differ from the model's (refused otherwise)")
    parser.add_argument("--channels", action="store_true",
                        help="convert HDF5/.npz images whose channel count differs from the model's: grey <-> colour "
                             "(refused otherwise)")


ROLE_WORDS = {"clean": "clean data", "poisoned": "suspected-poisoned data", "scan": "data to scan", "image": "image"}


def fit_to_model(args: argparse.Namespace, loaded: LoadedModel, **sources: Optional[DataSource]) -> dict[str, DataFit]:
    """Check each opened data set against the model, allowing only the conversions the flags ask for (issue 23).

    Keys are the roles (``clean=...``, ``poisoned=...``, ``scan=...``); a None source is left out.
    """
    conversion = Conversion(resize=bool(getattr(args, "resize", False)), channels=bool(getattr(args, "channels", False)))
    fits = {}
    for role, source in sources.items():
        if source is not None:
            fits[role] = check_fit(loaded, source.allow(conversion), ROLE_WORDS.get(role, role))
    return fits


def conversions(fits: dict[str, DataFit]) -> list[str]:
    """What was converted, one line per data set and conversion ("clean data: channels 1 -> 3 (grey repeated)")."""
    return [f"{fit.role}: {what}" for fit in fits.values() for what in fit.conversions]


def say_conversions(args: argparse.Namespace, fits: dict[str, DataFit]) -> None:
    for line in conversions(fits):
        say(args, f"converted {line}")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")


def open_model(args: argparse.Namespace) -> LoadedModel:
    return load_model(args.model, arch=getattr(args, "arch", None))


def open_optional(path: Optional[str]) -> Optional[DataSource]:
    return open_data(path) if path else None


class StderrProgress:
    """Prints job progress to stderr, at most every half second."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self._last = 0.0

    def __call__(self, event: Any) -> None:
        if self.quiet or not isinstance(event, Progress):
            return
        now = time.monotonic()
        if now - self._last < 0.5 and event.fraction not in (0.0, 1.0):
            return
        self._last = now
        pct = "" if event.fraction is None else f"[{event.fraction * 100:5.1f}%] "
        print(f"{pct}{event.message}", file=sys.stderr, flush=True)


def open_scan_target(args: argparse.Namespace) -> Optional[DataSource]:
    """The checks `strip` and `scan` make before any work; the data to scan, if any.

    Something to do, something to calibrate on, and no profile written over an input.
    """
    if not args.scan and not args.save_profile:
        raise DataError("nothing to do: give --scan TARGET, --save-profile PROF, or both")
    if not args.clean and not args.profile:
        raise DataError("give --clean DATA to calibrate on, or --profile PROF saved earlier")
    if args.save_profile:
        refuse_overwriting(args.save_profile, args.model, args.clean, args.scan, args.profile)
    return open_data(args.scan) if args.scan else None


def drive(job: Job, args: argparse.Namespace) -> Any:
    return run_job(job, StderrProgress(getattr(args, "quiet", False)))


def say(args: argparse.Namespace, text: str) -> None:
    """Human-readable output (stdout) when --json is off."""
    if not getattr(args, "json", False):
        print(text)


def reject_class(num_classes: int) -> str:
    """How the guarded classifier's extra class is shown wherever it appears (the CSAW course's "N+1th class")."""
    return f"class {num_classes} = N+1, the reject class for inputs flagged as trojaned"


def flag_text(flagged: bool, num_classes: int, by: Sequence[str] = ()) -> str:
    """A scan row's verdict: 'ok', or 'flagged: trojaned (class 10 = N+1, the reject class ...)'."""
    if not flagged:
        return "ok"
    return f"flagged{' by ' + '+'.join(by) if by else ''}: trojaned ({reject_class(num_classes)})"


def skipped_list(skipped: list) -> list[dict[str, str]]:
    return [s.as_dict() for s in skipped]


def reversed_triggers(args: argparse.Namespace, loaded: LoadedModel) -> Any:
    """``--triggers`` read (None without it), with a warning when they were reversed on another model file."""
    if not args.triggers:
        return None
    from core.detect.input_level import masking

    triggers = masking.load_triggers(args.triggers)
    if triggers.model_sha256 and triggers.model_sha256 != loaded.summary.sha256:
        print(f"warning: {args.triggers} was reversed on another model file (sha256 {triggers.model_sha256[:12]}…): "
              "its masks may not fit this one", file=sys.stderr)
    return triggers
