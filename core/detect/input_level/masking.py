"""Reversed-trigger masking: flag an input whose answer falls away from a suspected target once the trigger's pixels are replaced.

Neural Cleanse (:mod:`core.detect.model_level.cleanse`) reverse-engineers, for each class, the
smallest mask that sends clean images there; for a class the verdict names as
a target, that mask marks where the backdoor's trigger sits. A triggered input
reaches the target *through* those pixels, so replacing them with what clean
images have there (the per-pixel median of the calibration images) takes its
prediction away from the target, while a clean image of the target class,
whose evidence is spread over its strokes, keeps it. This is the input filter
of Neural Cleanse (Wang et al., IEEE S&P 2019, section VI) and the idea of
Februus (Doan et al., ACSAC 2020), with a median fill instead of inpainting.

It answers the localised triggers the other scanners miss when the model
learnt them only partly (the zoo's low poisoning rate, docs/scan.md). It
cannot answer a warp or an image-wide blend (there is no region to replace)
nor a sticker that moves (it is never where the reversed one was): it joins
the others in the combined scan rather than replacing them.

Top-down:

1. :class:`Triggers` are the reversed masks of the verdict's target classes
   (:func:`triggers_from`), saved by the cleanse command and read back
   as hostile data (:func:`load_triggers`).
2. :func:`drop_scores`: for an input the model sends to a masked class t, the
   fall of log p_t when the region (mask > ``MASK_LEVEL`` x its peak) is replaced; 0 for
   inputs sent elsewhere (they carry no attack on t). *High* is suspicious.
3. :func:`calibrate_on` scores the shared clean split and sets the threshold
   with :mod:`core.detect.input_level.calibration`, like every other scanner.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from core.intake import safety
from core.detect.input_level.calibration import DEFAULT_CONFIDENCE, ThresholdedScores, conservative_threshold
from core.detect.input_level.clean_split import CleanSplit, score_batches
from core.errors import DataError
from core.intake.inference import predict_proba, scale_factor
from core.jobs import Job, Progress
from core.intake.models import LoadedModel

DEFAULT_FRR = 0.01
# Where the reversed mask counts as trigger, as a fraction of its peak. Not dilated: on the zoo's low-rate BadNet the 26 px
# region leaves 1.3% attack success at 1% FRR, one pixel of dilation (90 px) 5.1%: a wider region
# erases the strokes of clean images of the target too (docs/scan.md).
MASK_LEVEL = 0.5
TRIGGERS_FORMAT = "trojanscope-reversed-triggers"
TRIGGERS_VERSION = 1
MAX_TRIGGERS_BYTES = 256 << 20  # the file, and what its arrays may inflate to (10 masks of 4096 x 4096 fit)
_FLOOR = 1e-12  # probabilities are clipped here before the logarithm


@dataclass(frozen=True)
class Triggers:
    """Reversed masks (K, H, W) in [0, 1] of the classes the verdict names, from one model."""

    classes: tuple[int, ...]
    masks: np.ndarray
    model_sha256: str = ""
    source: str = ""  # what produced them, in words (shown in the scan's notes)

    def regions(self, level: float = MASK_LEVEL) -> np.ndarray:
        """Pixels where a mask exceeds ``level`` times its own peak (a trigger the network obeys strongly
        needs only a faint mask: the planted one-pixel BadNet's peaks at 0.45)."""
        masks = np.asarray(self.masks, np.float32)
        peaks = masks.reshape(len(masks), -1).max(axis=1, initial=0.0) if len(masks) else np.zeros(0, np.float32)
        return (masks > level * peaks[:, None, None]) & (peaks[:, None, None] > 0)


@dataclass(frozen=True)
class MaskingSettings:
    triggers: Optional[Triggers] = None
    frr: float = DEFAULT_FRR
    confidence: float = DEFAULT_CONFIDENCE
    mask_level: float = MASK_LEVEL


@dataclass
class MaskingProfile(ThresholdedScores):
    classes: tuple[int, ...]
    regions: np.ndarray  # (K, H, W) bool: the pixels replaced for an input sent to classes[k]
    fill: np.ndarray  # (H, W, C) what replaces them: the clean images' per-pixel median, as stored
    scale: str
    pixel_max: float
    threshold: float  # a fall of log p above it is flagged
    frr: float
    confidence: float
    clean_scores: np.ndarray
    model_sha256: str
    num_classes: int
    input_shape: tuple[int, int, int]
    notes: list[str] = field(default_factory=list)

    method = "masking"
    tail = "high"

    def score_fn(self, loaded: LoadedModel) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        return lambda x: drop_scores(loaded, x, self.classes, self.regions, self.fill, self.scale)

    def metadata(self) -> dict[str, Any]:
        return {**self.shared_metadata(), "classes": list(self.classes), "pixel_max": self.pixel_max}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"clean_scores": np.asarray(self.clean_scores, np.float64), "regions": np.asarray(self.regions, np.uint8),
                "fill": np.asarray(self.fill, np.float32)}


def triggers_from(cleanse_result: Any, classes: Any, model_sha256: str = "") -> Triggers:
    """The reversed masks of ``classes`` (the verdict's targets) that Neural Cleanse optimised."""
    have = [int(c) for c in classes if int(c) in cleanse_result.triggers]
    masks = np.stack([np.asarray(cleanse_result.triggers[c].mask, np.float32) for c in have]) if have else np.zeros((0, 1, 1), np.float32)
    return Triggers(tuple(have), masks, model_sha256, "Neural Cleanse's reversed triggers of the verdict's targets")


def drop_scores(loaded: LoadedModel, x: np.ndarray, classes: tuple[int, ...], regions: np.ndarray, fill: np.ndarray,
                scale: str) -> tuple[np.ndarray, np.ndarray]:
    """(fall of log p_t with the region of t replaced, for inputs predicted t; else 0 -- and the model's probabilities)."""
    if len(x) == 0:
        return np.zeros(0), np.zeros((0, loaded.num_classes), np.float32)
    factor = np.float32(scale_factor(scale))
    x = np.asarray(x, np.float32)
    probs = predict_proba(loaded, x * factor)
    predicted = probs.argmax(axis=1)
    scores = np.zeros(len(x))
    for t, region in zip(classes, regions):
        rows = np.flatnonzero(predicted == t)
        if not len(rows) or not region.any():
            continue
        replaced = x[rows].copy()
        replaced[:, region] = fill[region]
        after = predict_proba(loaded, replaced * factor)[:, t]
        scores[rows] = np.log(np.maximum(probs[rows, t], _FLOOR)) - np.log(np.maximum(after, _FLOOR))
    return scores, probs


def calibrate_on(loaded: LoadedModel, split: CleanSplit, settings: MaskingSettings, frr: Optional[float] = None,
                 confidence: Optional[float] = None) -> Job[MaskingProfile]:
    """Calibrate on an already drawn split (``frr``/``confidence`` override the settings': combined scans split them)."""
    triggers = settings.triggers
    if triggers is None or not triggers.classes:
        raise DataError("reversed-trigger masking needs reversed triggers of the suspected target classes: run Neural Cleanse "
                        "on this model first (Verdict panel, or the cleanse command) and give its triggers", fixed_by=("triggers",))
    check_fits(triggers, loaded)
    frr = settings.frr if frr is None else frr
    confidence = settings.confidence if confidence is None else confidence
    regions = triggers.regions(settings.mask_level)
    fill = np.median(np.asarray(split.calibration, np.float32), axis=0)
    fn = lambda x: drop_scores(loaded, x, triggers.classes, regions, fill, split.scale)  # noqa: E731
    scores = yield from score_batches(fn, split.calibration, "reversed-trigger masking")
    cal = conservative_threshold(scores, frr, confidence, "high")
    sizes = ", ".join(f"class {c}: {int(r.sum())} px" for c, r in zip(triggers.classes, regions))
    notes = list(split.notes) + [f"masking the reversed triggers of {sizes} ({triggers.source or 'given'})"]
    profile = MaskingProfile(
        classes=tuple(triggers.classes), regions=regions, fill=fill, scale=split.scale, pixel_max=split.pixel_max,
        threshold=cal.threshold, frr=float(frr), confidence=float(confidence), clean_scores=scores,
        model_sha256=loaded.summary.sha256, num_classes=loaded.num_classes, input_shape=tuple(loaded.input_shape),
        notes=notes + ([cal.note] if cal.note else []),
    )
    yield Progress(1.0, f"Reversed-trigger masking calibrated: a fall above {cal.threshold:.3f} is flagged, {cal.estimate.describe()}")
    return profile


def check_fits(triggers: Triggers, loaded: LoadedModel) -> None:
    """Refuse masks of another shape or out-of-range classes: they cannot belong to this model."""
    h, w, _c = loaded.input_shape
    if triggers.masks.shape[1:] != (h, w):
        raise DataError(f"the reversed triggers are {triggers.masks.shape[1]}x{triggers.masks.shape[2]} masks, "
                        f"but the model takes {h}x{w} images: they were made for another model")
    suspected_targets(triggers.classes, loaded.num_classes, "reversed-trigger masking")


def suspected_targets(classes: Any, num_classes: int, detector: str) -> tuple[int, ...]:
    """The verdict's target classes a targeted detector watches (masking, feature space on the targets, the clean
    reference): at least one, every one a class of this model."""
    targets = tuple(int(c) for c in classes)
    if not targets:
        raise DataError(f"the {detector} needs the suspected target classes: run the detectors on this model first "
                        "(Verdict panel, or the cleanse command) and give its triggers", fixed_by=("triggers",))
    bad = [c for c in targets if not 0 <= c < num_classes]
    if bad:
        raise DataError(f"the suspected targets {bad} are outside this model's classes 0..{num_classes - 1}")
    return targets


# ------------------------------------------------------------------ the triggers file


def save_triggers(triggers: Triggers, path: str | Path) -> Path:
    """Write the masks atomically as a plain .npz (arrays and JSON metadata, no pickles)."""
    from core.intake.atomic import atomic_path

    path = Path(path)
    meta = {"format": TRIGGERS_FORMAT, "version": TRIGGERS_VERSION, "classes": list(triggers.classes),
            "model_sha256": triggers.model_sha256, "source": triggers.source}
    arrays = {"masks": np.asarray(triggers.masks, np.float32),
              "metadata": np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)}
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return path


def load_triggers(path: str | Path) -> Triggers:
    """Read a triggers file as hostile data: size and archive checked before numpy opens it, no pickles."""
    path = Path(path)
    what = "expected a reversed-triggers file (.npz) written by the cleanse command"
    data, _archive = safety.read_own_archive(path, MAX_TRIGGERS_BYTES, "a reversed-triggers file", "written by the cleanse command",
                                             inflated_limit=MAX_TRIGGERS_BYTES)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in npz.files}
        meta = json.loads(arrays["metadata"].tobytes().decode("utf-8"))
    except (ValueError, OSError, EOFError, KeyError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a readable reversed-triggers file ({str(exc).splitlines()[0][:200]}): {what}") from None
    masks, classes = arrays.get("masks"), meta.get("classes") if isinstance(meta, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != TRIGGERS_FORMAT or meta.get("version") != TRIGGERS_VERSION:
        raise DataError(f"{path} lacks the reversed-triggers marker: {what}")
    ok = (isinstance(classes, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in classes)
          and masks is not None and masks.ndim == 3 and masks.dtype.kind == "f" and len(masks) == len(classes)
          and np.all(np.isfinite(masks)))
    if not ok:
        raise DataError(f"{path}: 'masks' must be a finite (K, H, W) float array with one class per mask: {what}")
    sha = meta.get("model_sha256")
    return Triggers(tuple(classes), masks.astype(np.float32), sha if isinstance(sha, str) else "", str(meta.get("source", ""))[:200])
