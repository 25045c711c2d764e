"""Does this data fit this model? Decided once, at intake, and handed on as one value.

Every analysis needs the same answers about a model and a data set before it
can mean anything: are the images the model's height, width and channels (or
did the analyst allow converting them), are the pixel values pixels (0..255 or
0..1, finite), are the labels classes the model has, and does the model expect
pixels divided by 255 or not. Decided in one place, they cannot drift apart
between commands, panels and detectors; the detectors take a :class:`Pairing`
and never re-decide its scale or pixel range.

A data set that does not fit is refused with both shapes named: converting
grey digits for a colour model, or 32x32 images for a 28x28 model, gives an
accuracy that means nothing (issue 23). The analyst can allow the conversion
(:class:`core.intake.data.Conversion`); what was converted is then recorded in
:attr:`DataFit.conversions`, which the JSON and the report print.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np

from core.errors import DataError
from core.intake.data import Arrays, ArraySource, DataSource, FolderSource, check_labels
from core.intake.inference import predict_proba, scale_factor
from core.intake.models import LoadedModel

AUTO_SCALE_SAMPLE = 512
RANGE_SAMPLE = 512  # images read to check the pixel range (the whole set for arrays held in memory)


@dataclass(frozen=True)
class DataFit:
    """One data set checked against one model."""

    role: str  # "clean data", "suspected-poisoned data", "data to scan"
    stored: Optional[tuple[int, int, int]]  # (H, W, C) as stored; None for image files, decoded one by one
    model: tuple[int, int, int]
    conversions: tuple[str, ...]  # what was converted, in words; () when the data fit as stored
    pixel_max: float  # 255.0 or 1.0: the range the pixels are stored in
    value_range: tuple[float, float]  # smallest and largest pixel value seen

    def as_dict(self) -> dict[str, Any]:
        return {"role": self.role, "stored_shape": None if self.stored is None else list(self.stored),
                "model_shape": list(self.model), "conversions": list(self.conversions),
                "pixel_range": [round(v, 4) for v in self.value_range]}


@dataclass(frozen=True)
class Pairing:
    """A model paired with its clean data: the pixel scale it expects and the stored pixel range, decided once."""

    scale: str  # "255": divide pixels by 255; "1": feed them as stored
    scale_note: str
    pixel_max: float
    fit: Optional[DataFit]

    @property
    def factor(self) -> float:
        return scale_factor(self.scale)


def check_fit(loaded: LoadedModel, source: Union[DataSource, Arrays], role: str = "data", read_pixels: bool = True) -> DataFit:
    """Check ``source`` against ``loaded``: shape (or allowed conversion), pixel range, labels. DataError otherwise.

    ``read_pixels=False`` skips the pixel range (the only check that reads images): what the GUI thread can
    afford when a new model meets data already open; the data slot's own open job reads them.
    """
    model = tuple(int(n) for n in loaded.input_shape)
    if isinstance(source, Arrays):
        source = ArraySource(source.x, source.y, role)
    stored: Optional[tuple[int, int, int]] = None
    conversions = source.conversions(model)
    if isinstance(source, ArraySource):
        stored = source.stored_shape(model)
        if source.y is not None:
            check_labels(source.y, loaded.num_classes, f"{role} {source.path}")
    elif isinstance(source, FolderSource) and source.labels is not None:
        check_labels(np.asarray(source.labels), loaded.num_classes, f"{role} {source.path}")
    lo, hi = _value_range(source, model, role) if read_pixels else (0.0, 255.0)
    return DataFit(role, stored, model, tuple(conversions), 255.0 if hi > 1.5 else 1.0, (lo, hi))


def _value_range(source: DataSource, model: tuple[int, int, int], role: str) -> tuple[float, float]:
    """Smallest and largest pixel value of the first images; DataError when they cannot be pixels."""
    lo, hi, seen = np.inf, -np.inf, 0
    whole = isinstance(source, ArraySource) and isinstance(source.x, np.ndarray)  # in memory: check every image
    for batch in source.batches(model):
        if len(batch.x):
            if not np.all(np.isfinite(batch.x)):
                bad = int(batch.indices[np.flatnonzero(~np.isfinite(batch.x).reshape(len(batch.x), -1).all(axis=1))[0]])
                raise DataError(f"{role} {source.path}: image {bad} holds values that are not numbers (NaN or infinite)")
            lo, hi = min(lo, float(batch.x.min())), max(hi, float(batch.x.max()))
            seen += len(batch.x)
        if not whole and seen >= RANGE_SAMPLE:
            break
    if not seen:
        return 0.0, 255.0  # nothing readable: the analyses report that themselves, with the skipped files
    if lo < 0 or hi > 255:
        raise DataError(
            f"{role} {source.path}: pixel values range from {lo:.4g} to {hi:.4g}; expected pixels stored as 0..255 "
            f"or 0..1 (standardised or otherwise transformed data? give the images as they were before that)"
        )
    return lo, hi


def pair(loaded: LoadedModel, clean: Union[DataSource, Arrays, None], requested: str = "auto",
         fit: Optional[DataFit] = None) -> Pairing:
    """Check the clean data (unless ``fit`` was already) and choose the pixel scale: once per model and data."""
    if clean is not None and fit is None:
        fit = check_fit(loaded, clean, "clean data")
    if isinstance(clean, Arrays):
        clean = ArraySource(clean.x, clean.y, "clean data")
    scale, note = choose_scale(loaded, clean, requested)
    return Pairing(scale, note, 255.0 if fit is None else fit.pixel_max, fit)


def choose_scale(loaded: LoadedModel, clean: Optional[DataSource], requested: str = "auto") -> tuple[str, str]:
    """Resolve ``auto`` by trying both scalings on labelled clean data.

    Returns (scale, note). Models trained on [0, 1] inputs and on [0, 255]
    inputs both circulate (the CSAW course shipped both), and a wrong guess
    silently halves the accuracy, so we measure rather than assume.
    """
    if requested != "auto":
        scale_factor(requested)
        return requested, f"scale {requested} (as requested)"
    if clean is None or not clean.labelled:
        return "255", "scale 255 assumed (auto needs labelled clean data)"
    x_parts, y_parts, have = [], [], 0
    for batch in clean.batches(loaded.input_shape, 256):
        if len(batch.x):
            x_parts.append(batch.x)
            y_parts.append(batch.y)
            have += len(batch.x)
        if have >= AUTO_SCALE_SAMPLE:
            break
    if not have:
        return "255", "scale 255 assumed (no readable clean images)"
    x = np.concatenate(x_parts)[:AUTO_SCALE_SAMPLE]
    y = np.concatenate(y_parts)[:AUTO_SCALE_SAMPLE]
    check_labels(y, loaded.num_classes, str(clean.path))
    probs = {s: predict_proba(loaded, x * scale_factor(s)) for s in ("255", "1")}
    acc = {s: float(np.mean(p.argmax(1) == y)) for s, p in probs.items()}
    # A ReLU net without normalisation ranks classes almost identically on x and
    # 255*x (its logits just grow), so accuracies can tie; the wrong scale then
    # shows as absurd over-confidence, so near-ties go to the lower log-loss
    # (fine-tuning at the wrong scale diverges at once).
    nll = {s: float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y.astype(int)], 1e-12, 1.0)))) for s, p in probs.items()}
    measured = f"accuracy on {len(y)} clean images: /255 {acc['255']:.3f}, raw {acc['1']:.3f}"
    if abs(acc["1"] - acc["255"]) <= 0.02:
        best = "1" if nll["1"] < nll["255"] else "255"
        why = (f"; the accuracies are within 2 points, so the scale with the lower log-loss wins "
               f"(/255 {nll['255']:.3f}, raw {nll['1']:.3f}): at the wrong scale a network is absurdly over-confident")
    else:
        best = "1" if acc["1"] > acc["255"] else "255"
        why = ": the more accurate one"
    return best, f"scale {best} chosen automatically ({measured}){why}"
