"""Run every model-level check on one model and combine them: the job behind ``cleanse`` and ``triage``.

Neural Cleanse (core.detect.model_level.cleanse, with its label-specific step), MM-BD
(core.detect.model_level.mmbd) and warp inversion (core.detect.model_level.warp) on the analyst's clean
data, plus, when suspected-poisoned images are given, the attack success
measured on them (core.evaluate); core.detect.model_level.verdict turns them into one
verdict. The GUI, the CLI and triage all call :func:`judge`, so the rules
live in one place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from core.detect.model_level.cleanse import CleanseResult, CleanseSettings, cleanse
from core.intake.data import Arrays, DataSource, load_arrays
from core.errors import DataError
from core.evaluate import EvalResult, evaluate
from core.jobs import Job, Progress, rescaled
from core.detect.model_level.mmbd import MMBDResult, MMBDSettings, mmbd
from core.intake.models import LoadedModel
from core.detect.model_level.verdict import Verdict, combine, from_attack_success, from_detectors
from core.detect.model_level.warp import WarpResult, WarpSettings, warp_inversion

METHODS = ("cleanse", "mmbd", "warp")


@dataclass
class Judgement:
    """The combined verdict and the results behind it (None: not run)."""

    verdict: Verdict
    cleanse: Optional[CleanseResult]
    mmbd: Optional[MMBDResult]
    evaluation: Optional[EvalResult]
    scale: str
    seconds: float
    warp: Optional[WarpResult] = None

    def as_dict(self) -> dict[str, Any]:
        return {**self.verdict.as_dict(), "scale": self.scale, "seconds": round(self.seconds, 2),
                "warp": None if self.warp is None else self.warp.as_dict()}


def judge(
    loaded: LoadedModel,
    clean: Arrays,
    scale: str,
    poisoned: Optional[DataSource] = None,
    target: Optional[int] = None,
    methods: Sequence[str] = METHODS,
    cleanse_settings: CleanseSettings = CleanseSettings(),
    mmbd_settings: MMBDSettings = MMBDSettings(),
    classes: Optional[list[int]] = None,
    pixel_max: Optional[float] = None,
    warp_settings: WarpSettings = WarpSettings(),
) -> Job[Judgement]:
    """Each chosen method in turn (progress rescaled into one bar), then the combined verdict.

    ``scale`` must be resolved already ('255' or '1'; see core.intake.fit.pair), and ``pixel_max`` (the stored
    pixel range, 255 or 1) too when known: every detector takes both as given and never re-decides them.
    """
    started = time.perf_counter()
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise DataError(f"methods must be among {list(METHODS)}; received {list(methods)}")
    if scale not in ("255", "1"):
        raise DataError(f"judge needs a resolved scale '255' or '1'; received {scale!r}")
    steps = list(methods) + (["evaluate"] if poisoned is not None else [])
    # Neural Cleanse costs several times more than the others: give it most of the bar.
    weights = {"cleanse": 6.0, "mmbd": 1.0, "warp": 1.5, "evaluate": 0.3}
    total = sum(weights[s] for s in steps)
    done = 0.0
    nc = mm = wp = ev = None
    for step in steps:
        lo, hi = done / total, (done + weights[step]) / total
        if step == "cleanse":
            nc = yield from rescaled(cleanse(loaded, clean, scale, cleanse_settings, classes=classes, pixel_max=pixel_max), lo, hi)
        elif step == "mmbd":
            mm = yield from rescaled(mmbd(loaded, clean, scale, mmbd_settings, pixel_max=pixel_max), lo, hi)
        elif step == "warp":
            arrays = clean if isinstance(clean, Arrays) else load_arrays(clean, loaded.input_shape, limit=warp_settings.max_images)
            screened = None if nc is None or not nc.screened_out else nc.candidates  # many classes: Neural Cleanse's candidates
            wp = yield from rescaled(warp_inversion(loaded, arrays, scale, warp_settings, pixel_max=pixel_max, classes=screened), lo, hi)
        else:
            ev = yield from rescaled(evaluate(loaded, None, poisoned, target, scale), lo, hi)
        done += weights[step]
    evidence = from_detectors(nc, mm, wp)
    if ev is not None:
        evidence.append(attack_evidence(ev, loaded.num_classes))
    verdict = combine(evidence)
    seconds = time.perf_counter() - started
    yield Progress(1.0, f"{verdict.summary} ({seconds:.0f} s)")
    return Judgement(verdict, nc, mm, ev, scale, seconds, wp)


def attack_evidence(ev: EvalResult, num_classes: int):  # noqa: ANN201 -- core.detect.model_level.verdict.Evidence
    """The measured attack success of an Evaluate run as evidence (the GUI passes its own EvalResult)."""
    if ev.attack_success_rate is None:
        raise DataError("the evaluation has no poisoned data: no attack success to weigh")
    samples = ev.poisoned_samples
    return from_attack_success(
        ev.attack_success_rate, ev.n_poisoned, num_classes, target=ev.target,
        predicted=None if samples is None else samples.predicted, labels=None if samples is None else samples.y,
    )
