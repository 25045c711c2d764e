"""Occlusion sensitivity: cover part of the image and watch the prediction fall.

Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks"
(ECCV 2014). A square patch slides over the image; each occluded variant is
classified, and the map at a pixel is the mean drop in the probability of the
explained class (the predicted one by default) over all patches covering that
pixel. Unlike Grad-CAM it needs no gradients and no conv layer, and its
resolution is set by the stride rather than by the network's last feature
map -- which is why it localises small triggers more tightly.

The fill decides what "covered" means: ``zero`` (black), ``mean`` (the mean
colour of clean data: a neutral value that is not itself a strong feature) or
``blur`` (the same region blurred: removes fine, high-contrast patterns such
as stickers while keeping the coarse content). Drops can be negative
(covering a region may *raise* the probability); the map keeps its sign and
consumers use its positive part.

All occluded variants, of one image or of many, are classified in large
batches: the cost is one forward pass per variant and batching is what makes
it affordable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from core.errors import DataError
from core.intake.inference import predict_proba, scale_factor
from core.jobs import Job, Progress
from core.intake.models import LoadedModel

FILLS = ("zero", "mean", "blur")
DEFAULT_BATCH = 1024
# With no patch given, the Inspector tries patches of about 1/7, 1/4 and 1/2.5 of
# the smaller side (4, 7 and 11 px at 28x28). One size cannot fit every trigger:
# a 4 px patch covers the demo's sticker, but on a trigger made of two bars
# covering either bar's parts leaves the other firing, so the 4 px map is flat
# and its box flips 3% of transplants, while an 11-12 px patch covers a whole
# bar and finds it (issue 13).
SIZE_DIVISORS = (7.0, 4.0, 2.5)


@dataclass(frozen=True)
class OcclusionSettings:
    """Patch geometry and fill; ``None`` patch/stride scale with the input size."""

    patch: Optional[int] = None
    stride: Optional[int] = None
    fill: str = "zero"
    fill_value: Optional[Sequence[float]] = None  # per-channel colour for "mean" (pixel values as stored)

    def resolved(self, shape: Sequence[int]) -> "OcclusionSettings":
        """Concrete patch and stride for an input of ``shape`` (H, W, C).

        Default patch: about 1/7 of the smaller side (4 px at 28x28, 7 px at
        47-pixel sides), small enough to cover a sticker without hiding the
        object; default stride: a quarter of the patch (1 px at 28x28). The
        box can be no finer than the stride: at stride 2 the demo's 4x4
        sticker came out shifted by a pixel (IoU 0.41), at stride 1 it is
        contained (IoU 0.54); one image costs (side/stride)^2 forward
        passes, a fraction of a second for such inputs.
        """
        h, w = int(shape[0]), int(shape[1])
        patch = self.patch if self.patch is not None else max(2, int(round(min(h, w) / 7)))
        stride = self.stride if self.stride is not None else max(1, patch // 4)
        if patch < 1 or patch > min(h, w):
            raise DataError(f"occlusion patch {patch} must be between 1 and the image side {min(h, w)}")
        if stride < 1:
            raise DataError(f"occlusion stride must be at least 1; received {stride}")
        if self.fill not in FILLS:
            raise DataError(f"occlusion fill must be one of {', '.join(FILLS)}; received {self.fill!r}")
        if self.fill == "mean" and self.fill_value is None:
            raise DataError("occlusion fill 'mean' needs the mean colour of clean data (give clean data)")
        return OcclusionSettings(patch, stride, self.fill, self.fill_value)


    def candidates(self, shape: Sequence[int]) -> list["OcclusionSettings"]:
        """The settings to try: the given patch alone, or one per :data:`SIZE_DIVISORS` size (smallest first)."""
        if self.patch is not None:
            return [self.resolved(shape)]
        side = min(int(shape[0]), int(shape[1]))
        sizes = sorted({max(2, min(side, int(round(side / d)))) for d in SIZE_DIVISORS})
        return [OcclusionSettings(p, self.stride, self.fill, self.fill_value).resolved(shape) for p in sizes]


@dataclass
class Occlusion:
    """Occlusion maps of a batch of images."""

    maps: np.ndarray  # (N, H, W) float32: mean drop of the explained class's probability
    classes: np.ndarray  # (N,) the class each map explains
    probabilities: np.ndarray  # (N, K) probabilities of the unoccluded images
    settings: OcclusionSettings


def clean_mean(x: np.ndarray) -> np.ndarray:
    """Per-channel mean colour of clean images, the neutral fill for ``mean``."""
    return np.asarray(x, np.float64).reshape(-1, np.asarray(x).shape[-1]).mean(axis=0).astype(np.float32)


def positions(size: int, patch: int, stride: int) -> list[int]:
    """Patch start offsets along one side; the last patch always reaches the edge."""
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def patches(shape: Sequence[int], settings: OcclusionSettings) -> list[tuple[int, int, int, int]]:
    """Every (row0, col0, row1, col1) patch for an input of ``shape``."""
    s = settings.resolved(shape)
    h, w = int(shape[0]), int(shape[1])
    return [(r, c, r + s.patch, c + s.patch) for r in positions(h, s.patch, s.stride) for c in positions(w, s.patch, s.stride)]


def filler(image: np.ndarray, settings: OcclusionSettings) -> np.ndarray:
    """The image every patch is copied from: what covered pixels become."""
    if settings.fill == "zero":
        return np.zeros_like(image, dtype=np.float32)
    if settings.fill == "mean":
        value = np.asarray(settings.fill_value, np.float32).reshape(-1)
        if value.size not in (1, image.shape[-1]):
            raise DataError(f"mean fill has {value.size} channels; the images have {image.shape[-1]}")
        return np.broadcast_to(value, image.shape).astype(np.float32)
    import cv2

    patch = settings.patch or 3
    sigma = max(1.0, patch / 2.0)
    blurred = cv2.GaussianBlur(np.asarray(image, np.float32), (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
    return blurred.reshape(image.shape).astype(np.float32)


def cover(image: np.ndarray, box: Sequence[int], settings: OcclusionSettings) -> np.ndarray:
    """A copy of ``image`` with ``box`` (row0, col0, row1, col1) covered by the fill."""
    s = settings.resolved(image.shape)
    r0, c0, r1, c1 = (int(v) for v in box)
    out = np.array(image, np.float32, copy=True)
    out[r0:r1, c0:c1] = filler(image, s)[r0:r1, c0:c1]
    return out


def occlusion(
    loaded: LoadedModel,
    x: np.ndarray,
    scale: str,
    settings: OcclusionSettings = OcclusionSettings(),
    classes: Optional[int | Sequence[int]] = None,
    batch_size: int = DEFAULT_BATCH,
) -> Job[Occlusion]:
    """Occlusion maps for images ``x`` (model layout, pixel values as stored).

    ``classes``: None explains each image's predicted class; an int or one
    class per image explains those. Variants of consecutive images are
    packed into the same batches; progress is yielded after each batch.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    n = len(x)
    s = settings.resolved(x.shape[1:])
    boxes = patches(x.shape[1:], s)
    factor = scale_factor(scale)
    base = predict_proba(loaded, x * factor, batch_size)
    explained = _explained(classes, n, base)
    h, w = x.shape[1:3]
    coverage = np.zeros((h, w), np.float32)
    for r0, c0, r1, c1 in boxes:
        coverage[r0:r1, c0:c1] += 1.0
    drops = np.zeros((n, len(boxes)), np.float32)
    per_batch = max(1, batch_size // len(boxes))  # whole images per batch
    for start in range(0, n, per_batch):
        stop = min(start + per_batch, n)
        variants = np.concatenate([_variants(x[i], boxes, s) for i in range(start, stop)])
        probs = predict_proba(loaded, variants * factor, batch_size).reshape(stop - start, len(boxes), -1)
        cls = explained[start:stop]
        picked = np.take_along_axis(probs, cls[:, None, None], axis=2)[:, :, 0]
        drops[start:stop] = base[np.arange(start, stop), cls][:, None] - picked
        yield Progress(stop / n, f"Occlusion: {stop}/{n} images ({len(boxes)} patches each)")
    maps = np.zeros((n, h, w), np.float32)
    for k, (r0, c0, r1, c1) in enumerate(boxes):
        maps[:, r0:r1, c0:c1] += drops[:, k, None, None]
    maps /= coverage[None]
    return Occlusion(maps, explained, base, s)


def occlusion_maps(
    loaded: LoadedModel,
    x: np.ndarray,
    scale: str,
    settings: OcclusionSettings = OcclusionSettings(),
    classes: Optional[int | Sequence[int]] = None,
    batch_size: int = DEFAULT_BATCH,
) -> Occlusion:
    """:func:`occlusion` run to completion (scripts and tests)."""
    from core.jobs import run_job

    return run_job(occlusion(loaded, x, scale, settings, classes, batch_size))


def _variants(image: np.ndarray, boxes: list[tuple[int, int, int, int]], s: OcclusionSettings) -> np.ndarray:
    fill = filler(image, s)
    out = np.repeat(image[None], len(boxes), axis=0)
    for k, (r0, c0, r1, c1) in enumerate(boxes):
        out[k, r0:r1, c0:c1] = fill[r0:r1, c0:c1]
    return out


def _explained(classes: Optional[int | Sequence[int]], n: int, base: np.ndarray) -> np.ndarray:
    predicted = base.argmax(axis=1).astype(np.int64)
    if classes is None:
        return predicted
    vec = np.full(n, int(classes), np.int64) if np.isscalar(classes) else np.asarray(classes, np.int64).reshape(-1)
    if len(vec) != n:
        raise ValueError(f"got {len(vec)} classes for {n} images")
    k = base.shape[1]
    bad = vec[(vec < -1) | (vec >= k)]
    if bad.size:
        raise DataError(f"class {int(bad[0])} is out of range for a {k}-class model")
    return np.where(vec >= 0, vec, predicted)

