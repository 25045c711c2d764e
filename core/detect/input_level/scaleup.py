"""SCALE-UP: flag trojaned inputs whose prediction survives amplifying every pixel.

Guo et al., "SCALE-UP: An Efficient Black-box Input-level Backdoor Detection
via Analyzing Scaled Prediction Consistency" (ICLR 2023). Multiplying a
clean image's pixel values by n = 3, 5, 7, 9, 11 (and clipping to the valid
range) soon changes what the model sees and therefore its prediction; a
triggered image keeps predicting the target, because the backdoor answers to
the trigger, which amplification does not erase (the paper's "scaled
prediction consistency", SPC). SPC is *high* for trojaned inputs.

The story of this module, top-down:

1. :func:`spc_scores` amplifies each input by every factor and returns the
   mean probability the model still gives the input's own (unamplified)
   class -- the paper counts agreeing argmaxes; the probability is the same
   idea made continuous, so clean scores rarely tie and the threshold can sit
   between them.
2. :func:`calibrate` scores clean images (the split every scanner shares,
   :mod:`core.detect.input_level.clean_split`) and puts the threshold at the conservative order
   statistic of :mod:`core.detect.input_level.calibration`: scores *above* it are flagged, and
   the false-rejection rate on unseen clean data holds with 95% confidence.
3. :class:`ScaleUpProfile` is what a scan needs later (factors, scale,
   threshold, the clean scores for the histogram and FRR estimate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from core.detect.input_level.calibration import DEFAULT_CONFIDENCE, ThresholdedScores, conservative_threshold
from core.detect.input_level.clean_split import CleanSplit, draw_clean_split, score_batches
from core.errors import DataError
from core.intake.inference import predict_proba, scale_factor
from core.jobs import Job, Progress, rescaled
from core.intake.models import LoadedModel

DEFAULT_FACTORS = (3.0, 5.0, 7.0, 9.0, 11.0)  # the paper's amplification set
DEFAULT_FRR = 0.01
DEFAULT_MAX_CLEAN = 2000


@dataclass(frozen=True)
class ScaleUpSettings:
    factors: tuple[float, ...] = DEFAULT_FACTORS
    frr: float = DEFAULT_FRR
    confidence: float = DEFAULT_CONFIDENCE
    seed: int = 0  # which clean images calibrate (the shared split)
    max_clean: int = DEFAULT_MAX_CLEAN


@dataclass
class ScaleUpProfile(ThresholdedScores):
    factors: tuple[float, ...]
    scale: str
    pixel_max: float
    threshold: float  # SPC above it is flagged
    frr: float
    confidence: float
    clean_scores: np.ndarray
    model_sha256: str
    num_classes: int
    input_shape: tuple[int, int, int]
    notes: list[str] = field(default_factory=list)

    method = "scaleup"
    tail = "high"
    score_bounds = (0.0, 1.0)  # a mean of probabilities: a threshold at 1 flags nothing

    def score_fn(self, loaded: LoadedModel) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        return lambda x: spc_scores(loaded, x, self.factors, self.scale, self.pixel_max)

    def metadata(self) -> dict[str, Any]:
        return {**self.shared_metadata(), "factors": list(self.factors), "pixel_max": self.pixel_max}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"clean_scores": np.asarray(self.clean_scores, np.float64)}


def amplify(x: np.ndarray, factors: tuple[float, ...], pixel_max: float) -> np.ndarray:
    """(B, F, H, W, C): every input multiplied by every factor, clipped to [0, pixel_max]."""
    f = np.asarray(factors, np.float32).reshape(1, -1, 1, 1, 1)
    return np.clip(np.asarray(x, np.float32)[:, None] * f, 0.0, pixel_max)


def spc_scores(
    loaded: LoadedModel, x: np.ndarray, factors: tuple[float, ...], scale: str, pixel_max: float
) -> tuple[np.ndarray, np.ndarray]:
    """(soft SPC per input, the model's probabilities for each unamplified input)."""
    if len(x) == 0:
        return np.zeros(0), np.zeros((0, loaded.num_classes), np.float32)
    factor = np.float32(scale_factor(scale))
    b, n = len(x), len(factors)
    variants = amplify(x, factors, pixel_max).reshape((b * n,) + tuple(x.shape[1:]))
    probs = predict_proba(loaded, np.concatenate([np.asarray(x, np.float32), variants]) * factor, batch_size=2048)
    base, scaled = probs[:b], probs[b:].reshape(b, n, -1)
    own = base.argmax(axis=1)
    return scaled[np.arange(b), :, own].mean(axis=1).astype(np.float64), base


def calibrate(loaded: LoadedModel, clean: Any, settings: ScaleUpSettings = ScaleUpSettings(), scale: str = "auto") -> Job[ScaleUpProfile]:
    """Score the clean split and set the SPC threshold conservatively."""
    split = yield from rescaled(draw_clean_split(loaded, clean, 0, settings.max_clean, settings.seed, scale), 0.0, 0.2)
    return (yield from rescaled(calibrate_on(loaded, split, settings), 0.2, 1.0))


def calibrate_on(loaded: LoadedModel, split: CleanSplit, settings: ScaleUpSettings, frr: Optional[float] = None,
                 confidence: Optional[float] = None) -> Job[ScaleUpProfile]:
    """Calibrate on an already drawn split (``frr``/``confidence`` override the settings': combined scans split them)."""
    if not settings.factors or min(settings.factors) <= 1.0:
        raise DataError(f"SCALE-UP amplification factors must all be > 1; received {settings.factors}")
    frr = settings.frr if frr is None else frr
    confidence = settings.confidence if confidence is None else confidence
    fn = lambda x: spc_scores(loaded, x, settings.factors, split.scale, split.pixel_max)  # noqa: E731
    scores = yield from score_batches(fn, split.calibration, "SCALE-UP")
    cal = conservative_threshold(scores, frr, confidence, "high")
    profile = ScaleUpProfile(
        factors=tuple(float(f) for f in settings.factors), scale=split.scale, pixel_max=split.pixel_max,
        threshold=cal.threshold, frr=float(frr), confidence=float(confidence), clean_scores=scores,
        model_sha256=loaded.summary.sha256, num_classes=loaded.num_classes, input_shape=tuple(loaded.input_shape),
        notes=list(split.notes) + ([cal.note] if cal.note else []),
    )
    yield Progress(1.0, f"SCALE-UP calibrated: SPC above {cal.threshold:.4f} is flagged, {cal.estimate.describe()}")
    return profile
