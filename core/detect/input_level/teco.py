"""TeCo: flag trojaned inputs by how unevenly their prediction resists corruptions.

Liu et al., "Detecting Backdoors During the Inference Stage Based on
Corruption Robustness Consistency" (CVPR 2023). Corrupt an input with several
kinds of image corruption at increasing severity and note, for each kind, the
first severity at which the model changes its mind. A clean image gives way at
similar severities whatever the corruption; a triggered image keeps the target
under corruptions that spare the trigger and drops it at once under those that
destroy it, so the *standard deviation* of those transition severities is
high for trojaned inputs.

The story of this module, top-down:

1. :data:`CORRUPTIONS` are the image corruptions, each at the five
   severities of CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019; small images
   like ours): Gaussian, shot and impulse noise, Gaussian blur, contrast,
   brightness, pixelation and JPEG. Noise comes from fixed seeded templates,
   so an image scores the same in any batch.
2. :func:`teco_scores` finds, per corruption, the first severity that changes
   the predicted class (6 when none does) and returns their standard deviation
   across corruptions -- plus, to break ties between the many images with the
   same integer pattern, 0.01 x the standard deviation of the probability
   left on the original class per corruption (same direction, never more than
   a tie-break).
3. :func:`calibrate_on` sets the threshold with :mod:`core.detect.input_level.calibration`:
   scores *above* it are flagged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from core.detect.input_level.calibration import DEFAULT_CONFIDENCE, ThresholdedScores, conservative_threshold
from core.detect.input_level.clean_split import CleanSplit, draw_clean_split, score_batches
from core.intake.inference import predict_proba, scale_factor
from core.jobs import Job, Progress, rescaled
from core.intake.models import LoadedModel

SEVERITIES = 5
NEVER = SEVERITIES + 1  # "the prediction never changed"
TIE_BREAK = 0.01
DEFAULT_FRR = 0.01
DEFAULT_MAX_CLEAN = 2000

# CIFAR-10-C parameters (Hendrycks & Dietterich's code), severity 1..5, images in [0, 1].
GAUSSIAN_SIGMA = (0.04, 0.06, 0.08, 0.09, 0.10)
SHOT_PHOTONS = (500.0, 250.0, 100.0, 75.0, 50.0)
IMPULSE_AMOUNT = (0.01, 0.02, 0.03, 0.05, 0.07)
BLUR_SIGMA = (0.4, 0.6, 0.7, 0.8, 1.0)
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)
BRIGHTNESS = (0.1, 0.2, 0.3, 0.4, 0.5)
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)
JPEG_QUALITY = (80, 65, 58, 50, 40)
CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "gaussian_blur", "contrast", "brightness", "pixelate", "jpeg")


@dataclass(frozen=True)
class TecoSettings:
    frr: float = DEFAULT_FRR
    confidence: float = DEFAULT_CONFIDENCE
    seed: int = 0
    max_clean: int = DEFAULT_MAX_CLEAN


def corrupt(x01: np.ndarray, kind: str, severity: int, rng_seed: int) -> np.ndarray:
    """One corruption of a batch of images in [0, 1] (B, H, W, C), severity 1..5."""
    import cv2

    i = severity - 1
    shape = x01.shape[1:]
    rng = np.random.default_rng([rng_seed, CORRUPTIONS.index(kind), severity])
    if kind == "gaussian_noise":
        out = x01 + rng.normal(0.0, GAUSSIAN_SIGMA[i], shape)
    elif kind == "shot_noise":  # Poisson photon noise, its normal approximation over a fixed template
        lam = x01 * SHOT_PHOTONS[i]
        out = (lam + np.sqrt(lam) * rng.standard_normal(shape)) / SHOT_PHOTONS[i]
    elif kind == "impulse_noise":
        u = rng.uniform(size=shape)
        a = IMPULSE_AMOUNT[i]
        out = np.where(u < a / 2, 0.0, np.where(u > 1 - a / 2, 1.0, x01))
    elif kind == "gaussian_blur":
        out = np.stack([_as_hwc(cv2.GaussianBlur(img, (0, 0), BLUR_SIGMA[i])) for img in x01.astype(np.float32)])
    elif kind == "contrast":
        mean = x01.mean(axis=(1, 2, 3), keepdims=True)
        out = (x01 - mean) * CONTRAST[i] + mean
    elif kind == "brightness":
        out = x01 + BRIGHTNESS[i]
    elif kind == "pixelate":
        h, w = shape[:2]
        small = (max(1, int(w * PIXELATE[i])), max(1, int(h * PIXELATE[i])))
        out = np.stack([_as_hwc(cv2.resize(cv2.resize(img, small, interpolation=cv2.INTER_AREA), (w, h), interpolation=cv2.INTER_NEAREST))
                        for img in x01.astype(np.float32)])
    elif kind == "jpeg":
        out = np.stack([_jpeg(img, JPEG_QUALITY[i]) for img in x01])
    else:
        raise ValueError(f"unknown corruption {kind!r}; expected one of {CORRUPTIONS}")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _as_hwc(img: np.ndarray) -> np.ndarray:
    return img if img.ndim == 3 else img[:, :, None]


def _jpeg(img01: np.ndarray, quality: int) -> np.ndarray:
    import cv2

    u8 = np.round(np.clip(img01, 0, 1) * 255).astype(np.uint8)
    flag = cv2.IMREAD_GRAYSCALE if u8.shape[2] == 1 else cv2.IMREAD_COLOR
    ok, buf = cv2.imencode(".jpg", u8 if u8.shape[2] == 1 else u8[:, :, :3], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    back = cv2.imdecode(buf, flag) if ok else u8
    return _as_hwc(back).astype(np.float32) / 255.0


def transition_severities(changed: np.ndarray) -> np.ndarray:
    """(B, kinds): first severity (1..5) whose prediction changed, NEVER when none did.

    ``changed`` is (B, kinds, severities) booleans.
    """
    first = np.argmax(changed, axis=2) + 1
    return np.where(changed.any(axis=2), first, NEVER)


def teco_scores(loaded: LoadedModel, x: np.ndarray, scale: str, pixel_max: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(TeCo score per input, the model's probabilities for each uncorrupted input)."""
    if len(x) == 0:
        return np.zeros(0), np.zeros((0, loaded.num_classes), np.float32)
    b = len(x)
    x01 = np.asarray(x, np.float32) / np.float32(pixel_max)
    variants = [corrupt(x01, kind, s, seed) for kind in CORRUPTIONS for s in range(1, SEVERITIES + 1)]
    stacked = np.concatenate([x01] + variants) * np.float32(pixel_max * scale_factor(scale))
    probs = predict_proba(loaded, stacked, batch_size=2048)
    base = probs[:b]
    own = base.argmax(axis=1)
    rest = probs[b:].reshape(len(CORRUPTIONS), SEVERITIES, b, -1).transpose(2, 0, 1, 3)  # (B, kinds, sev, K)
    changed = rest.argmax(axis=3) != own[:, None, None]
    severities = transition_severities(changed)
    kept = rest[np.arange(b), :, :, own].mean(axis=2)  # (B, kinds): probability left on the own class
    score = severities.std(axis=1) + TIE_BREAK * kept.std(axis=1)
    return score.astype(np.float64), base


@dataclass
class TecoProfile(ThresholdedScores):
    scale: str
    pixel_max: float
    threshold: float  # above it is flagged
    frr: float
    confidence: float
    clean_scores: np.ndarray
    seed: int
    model_sha256: str
    num_classes: int
    input_shape: tuple[int, int, int]
    notes: list[str] = field(default_factory=list)

    method = "teco"
    tail = "high"

    def score_fn(self, loaded: LoadedModel) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        return lambda x: teco_scores(loaded, x, self.scale, self.pixel_max, self.seed)

    def metadata(self) -> dict[str, Any]:
        return {**self.shared_metadata(), "corruptions": list(CORRUPTIONS), "pixel_max": self.pixel_max, "seed": self.seed}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"clean_scores": np.asarray(self.clean_scores, np.float64)}


def calibrate(loaded: LoadedModel, clean: Any, settings: TecoSettings = TecoSettings(), scale: str = "auto") -> Job[TecoProfile]:
    split = yield from rescaled(draw_clean_split(loaded, clean, 0, settings.max_clean, settings.seed, scale), 0.0, 0.2)
    return (yield from rescaled(calibrate_on(loaded, split, settings), 0.2, 1.0))


def calibrate_on(loaded: LoadedModel, split: CleanSplit, settings: TecoSettings, frr: Optional[float] = None,
                 confidence: Optional[float] = None) -> Job[TecoProfile]:
    frr = settings.frr if frr is None else frr
    confidence = settings.confidence if confidence is None else confidence
    fn = lambda x: teco_scores(loaded, x, split.scale, split.pixel_max, settings.seed)  # noqa: E731
    scores = yield from score_batches(fn, split.calibration, "TeCo", step=64)
    cal = conservative_threshold(scores, frr, confidence, "high")
    profile = TecoProfile(
        scale=split.scale, pixel_max=split.pixel_max, threshold=cal.threshold, frr=float(frr), confidence=float(confidence),
        clean_scores=scores, seed=settings.seed, model_sha256=loaded.summary.sha256, num_classes=loaded.num_classes,
        input_shape=tuple(loaded.input_shape), notes=list(split.notes) + ([cal.note] if cal.note else []),
    )
    yield Progress(1.0, f"TeCo calibrated: score above {cal.threshold:.4f} is flagged, {cal.estimate.describe()}")
    return profile
