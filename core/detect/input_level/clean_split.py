"""One seeded split of the analyst's clean data, shared by every input-level scanner.

STRIP needs clean overlay images and clean images to calibrate its threshold
on; the other scanners need only the latter. Drawing both from one seeded
permutation means the images a combined scan calibrates each detector on are
the same, overlays never blend with themselves, and a data set sorted by class
is still sampled evenly. Memory holds at most ``n_overlays + max_clean``
(+``n_overlays`` spare for unreadable files) images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from core.intake.data import DataSource, Skipped
from core.errors import DataError
from core.jobs import Job, Progress
from core.intake.models import LoadedModel

SCORE_BATCH = 256  # inputs scored per call (each becomes one image per variant)
MIN_CALIBRATION = 20  # below this, overlays are reused for calibration (and a note says so)


@dataclass
class CleanSplit:
    scale: str
    overlays: np.ndarray  # (n_overlays, H, W, C), pixel values as stored
    calibration: np.ndarray  # the images thresholds are set on
    labels: np.ndarray | None  # their labels when the data is labelled
    pixel_max: float
    notes: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def pixel_max_of(images: np.ndarray) -> float:
    """255 for images stored as 0..255, 1 for images stored as 0..1."""
    return 255.0 if float(np.max(images, initial=0.0)) > 1.5 else 1.0


def draw_clean_split(
    loaded: LoadedModel, clean: DataSource, n_overlays: int, max_clean: int, seed: int, scale: str = "auto"
) -> Job[CleanSplit]:
    """Read ``clean`` once: its first ``n_overlays`` readable images (in seeded order) and the next ``max_clean``."""
    from core.intake.fit import choose_scale

    yield Progress(None, "Choosing the input scale")
    scale, scale_note = choose_scale(loaded, clean, scale)
    rng = np.random.default_rng(seed)
    rank = np.empty(clean.count, np.int64)
    rank[rng.permutation(clean.count)] = np.arange(clean.count)
    keep_below = n_overlays + max_clean + n_overlays  # spare ranks absorb unreadable files

    kept_x, kept_y, kept_rank, skipped = [], [], [], []
    seen = 0
    for batch in clean.batches(loaded.input_shape, 256):
        skipped.extend(batch.skipped)
        if len(batch.x):
            mask = rank[batch.indices] < keep_below
            kept_x.append(batch.x[mask])
            kept_rank.append(rank[batch.indices][mask])
            if batch.y is not None:
                kept_y.append(np.asarray(batch.y)[mask])
        seen += len(batch.x) + len(batch.skipped)
        yield Progress(seen / max(clean.count, 1), f"Reading clean images: {seen}/{clean.count}")
    if not kept_x or sum(len(r) for r in kept_rank) == 0:
        raise DataError(f"{clean.path}: none of its {clean.count} items could be read")
    order = np.argsort(np.concatenate(kept_rank), kind="stable")
    x = np.concatenate(kept_x)[order]
    y = np.concatenate(kept_y)[order] if len(kept_y) == len(kept_x) else None
    notes = [scale_note]
    if len(x) < n_overlays + 2:
        raise DataError(
            f"{clean.path}: STRIP needs more than {n_overlays} readable clean images for {n_overlays} overlays "
            f"(found {len(x)}): lower the number of overlays"
        )
    lo, hi = n_overlays, n_overlays + max_clean
    if len(x) - n_overlays < MIN_CALIBRATION:
        lo = 0
        notes.append(f"only {len(x)} clean images: calibrated on all of them, overlays included")
    if skipped:
        notes.append(f"{len(skipped)} clean file(s) skipped")
    return CleanSplit(
        scale=scale,
        overlays=np.ascontiguousarray(x[:n_overlays]),
        calibration=np.ascontiguousarray(x[lo:hi]),
        labels=None if y is None else y[lo:hi],
        pixel_max=pixel_max_of(x),
        notes=notes,
        skipped=skipped,
    )


def score_batches(score: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], x: np.ndarray, what: str, step: int = SCORE_BATCH) -> Job[np.ndarray]:
    """Scores of ``x`` in chunks, with progress (shared by the scanners' calibrations)."""
    out = []
    for start in range(0, len(x), step):
        s, _ = score(x[start : start + step])
        out.append(s)
        done = min(start + step, len(x))
        yield Progress(done / max(len(x), 1), f"Calibrating {what}: {done}/{len(x)} clean images")
    return np.concatenate(out) if out else np.zeros(0)
