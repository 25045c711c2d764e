"""Warp inversion: is one class reachable by a far smaller smooth warp than the others?

Neural Cleanse asks how few *pixels* must be repainted to send clean images
to a class. A warping trigger (WaNet, Nguyen & Tran, ICLR 2021) repaints no
pixel: it moves all of them a little along a smooth field, and a gentle one
(half a pixel on 28x28 digits) leaves Neural Cleanse and MM-BD silent. The
same question in warp space sees it: for each class t, find the smallest
smooth displacement field that sends clean images to t. A natural class
needs digits bent out of shape (2-3 px on MNIST); a warp backdoor's target
needs a fraction of a pixel. Read top-down in :func:`warp_inversion`:

1. The field is a coarse grid of control points (5 x 5 x 2), upsampled
   bicubically to the image and bounded to ``max_shift`` pixels through tanh.
   Images are resampled bilinearly at (row + dy, col + dx). Every class is
   optimised at once (one batch of classes x images per Adam step), each
   with its own penalty on the mean displacement, raised while the warp
   works (at least ``success`` of its images reach the class) and lowered
   when it stops; the smallest working field is kept.
2. The displacement of each class is compared on a log scale with the
   others, as Neural Cleanse compares mask norms: median absolute deviation,
   small side only (a hard-to-reach class is no sign of a backdoor).

Our own grid, not the attacker's: the zoo's WaNet draws 4 x 4 control points;
a 5 x 5 field can express it and any other smooth one. The job yields
progress after every step and writes nothing.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

from core.detect.model_level.cleanse import MAD_CONSISTENCY, MIN_RELATIVE_SPREAD, logits_fn
from core.errors import DataError
from core.intake.data import Arrays
from core.intake.inference import scale_factor
from core.intake.models import LoadedModel
from core.intake.tf_env import tf as _tf
from core.jobs import Job, Progress


@dataclass(frozen=True)
class WarpSettings:
    """Optimisation settings (measured on the zoo's dev half, docs/zoo.md)."""

    grid: int = 5  # control points per side
    max_shift: float = 4.0  # pixels: no displacement beyond it (a bigger warp is no trigger, it is a different digit)
    steps: int = 160
    batch_size: int = 16  # images per class per step
    learning_rate: float = 0.05
    success: float = 0.9  # share of images that must reach the class
    round_steps: int = 5  # the penalty moves after every round of this many steps
    init_cost: float = 0.01
    cost_multiplier: float = 1.5
    max_images: int = 1000
    seed: int = 0


@dataclass
class WarpResult:
    """The smallest working warp per class (mean displacement in pixels) and how far below the others each lies."""

    shifts: dict[int, float]  # mean |displacement| per axis, px; max_shift when never reached
    reached: dict[int, bool]
    anomaly_index: dict[int, float]  # log scale, small side only (0 for classes above the median)
    median_shift: float
    top_class: Optional[int]
    num_classes: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def top_index(self) -> float:
        return 0.0 if self.top_class is None else float(self.anomaly_index[self.top_class])

    def as_dict(self) -> dict[str, Any]:
        return {
            "shifts": {str(k): round(v, 4) for k, v in self.shifts.items()},
            "reached": {str(k): v for k, v in self.reached.items()},
            "anomaly_index": {str(k): round(v, 4) for k, v in self.anomaly_index.items()},
            "median_shift": round(self.median_shift, 4),
            "top_class": self.top_class,
            "top_index": round(self.top_index, 4),
            "num_classes": self.num_classes,
            "seconds": round(self.seconds, 2),
            "settings": self.settings,
        }


def small_side_indices(values: dict[int, float]) -> tuple[dict[int, float], float]:
    """Anomaly index of each value on a log scale, below the median only: (indices, median).

    The spread is 1.4826 x the MAD of the logs, floored like Neural Cleanse's (5% of the median, i.e.
    log(1.05) here), so that values within a few percent of each other are never an outlier.
    """
    logs = {k: float(np.log(max(v, 1e-6))) for k, v in values.items()}
    arr = np.array(list(logs.values()))
    median = float(np.median(arr))
    spread = max(MAD_CONSISTENCY * float(np.median(np.abs(arr - median))), float(np.log1p(MIN_RELATIVE_SPREAD)))
    return {k: max(0.0, (median - v) / spread) for k, v in logs.items()}, float(np.exp(median))


def warp_inversion(loaded: LoadedModel, clean: Arrays, scale: str, settings: WarpSettings = WarpSettings(),
                   pixel_max: Optional[float] = None, classes: Optional[list[int]] = None) -> Job[WarpResult]:
    """The smallest smooth warp sending clean images to each class, and which class stands out.

    ``classes``: optimise only these (the many-class models' screened candidates); default every class.
    """
    started = time.perf_counter()
    tf = _tf()
    if len(clean.x) < 2:
        raise DataError(f"warp inversion needs clean images; received {len(clean.x)}")
    num_classes = loaded.num_classes
    targets = list(range(num_classes)) if classes is None else sorted(set(int(c) for c in classes))
    x_all = np.asarray(clean.x[: settings.max_images], np.float32)
    y_all = None if clean.y is None else np.asarray(clean.y[: settings.max_images]).astype(np.int32)
    if pixel_max is None:
        pixel_max = 255.0 if float(np.max(x_all)) > 1.5 else 1.0
    factor = scale_factor(scale)
    logits, _from_logits = logits_fn(loaded)
    h, w, c = (int(d) for d in loaded.input_shape)
    k = len(targets)
    rng = np.random.default_rng(settings.seed)
    g = settings.grid
    field_t = tf.Variable(rng.normal(0.0, 0.05, (k, g, g, 2)).astype(np.float32))
    m1, m2, t = tf.Variable(tf.zeros_like(field_t)), tf.Variable(tf.zeros_like(field_t)), tf.Variable(0.0)
    rows, cols = (tf.constant(a.astype(np.float32)) for a in np.meshgrid(np.arange(h), np.arange(w), indexing="ij"))
    target_t = tf.constant(np.asarray(targets, np.int32))
    lr, shift_cap = settings.learning_rate, float(settings.max_shift)

    def resample(xb, flow):  # noqa: ANN001 -- (B, H, W, C) images, (K, H, W, 2) fields -> (K, B, H, W, C)
        sx = tf.clip_by_value(cols[None] + flow[..., 0], 0.0, w - 1.0)
        sy = tf.clip_by_value(rows[None] + flow[..., 1], 0.0, h - 1.0)
        x0, y0 = tf.floor(sx), tf.floor(sy)
        x1, y1 = tf.minimum(x0 + 1, w - 1.0), tf.minimum(y0 + 1, h - 1.0)
        wx, wy = (sx - x0)[:, None, :, :, None], (sy - y0)[:, None, :, :, None]
        flat = tf.reshape(xb, (tf.shape(xb)[0], h * w, c))

        def at(yy, xx):  # noqa: ANN001
            index = tf.reshape(tf.cast(yy * w + xx, tf.int32), (-1,))
            picked = tf.reshape(tf.gather(flat, index, axis=1), (tf.shape(xb)[0], k, h, w, c))
            return tf.transpose(picked, (1, 0, 2, 3, 4))

        top = (1 - wx) * at(y0, x0) + wx * at(y0, x1)
        bottom = (1 - wx) * at(y1, x0) + wx * at(y1, x1)
        return (1 - wy) * top + wy * bottom

    spec = [tf.TensorSpec((None, h, w, c), tf.float32), tf.TensorSpec((None,), tf.int32), tf.TensorSpec((k,), tf.float32)]

    @tf.function(input_signature=spec, autograph=False)
    def step(xb, yb, costs):  # noqa: ANN001 -- images, their labels (-1: unknown), per-class penalties
        n = tf.shape(xb)[0]
        with tf.GradientTape() as tape:
            flow = shift_cap * tf.tanh(tf.image.resize(field_t, (h, w), method="bicubic"))  # (K, H, W, 2), px
            out = logits(tf.reshape(resample(xb, flow), (-1, h, w, c)) * factor)
            labels = tf.repeat(target_t, n)
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=out)
            valid = tf.cast(tf.not_equal(tf.tile(yb, [k]), labels), tf.float32)  # images already of the class do not count
            per_class = tf.reduce_sum(tf.reshape(ce * valid, (k, n)), 1) / tf.maximum(tf.reduce_sum(tf.reshape(valid, (k, n)), 1), 1.0)
            size = tf.reduce_mean(tf.abs(flow), axis=[1, 2, 3])
            loss = tf.reduce_sum(per_class + costs * size)  # classes are independent: their gradients do not mix
        grad = tape.gradient(loss, field_t)
        t.assign_add(1.0)
        m1.assign(0.9 * m1 + 0.1 * grad)
        m2.assign(0.999 * m2 + 0.001 * tf.square(grad))
        field_t.assign_sub(lr * (m1 / (1 - tf.pow(0.9, t))) / (tf.sqrt(m2 / (1 - tf.pow(0.999, t))) + 1e-7))
        hits = tf.cast(tf.equal(tf.argmax(out, -1, output_type=tf.int32), labels), tf.float32) * valid
        success = tf.reduce_sum(tf.reshape(hits, (k, n)), 1) / tf.maximum(tf.reduce_sum(tf.reshape(valid, (k, n)), 1), 1.0)
        return success, size

    costs = np.zeros(k, np.float32)
    best = np.full(k, np.inf)
    window_success, window_size = np.zeros(k), np.zeros(k)
    for s in range(1, settings.steps + 1):
        idx = rng.integers(0, len(x_all), settings.batch_size)
        yb = y_all[idx] if y_all is not None else np.full(len(idx), -1, np.int32)
        success, size = step(tf.constant(x_all[idx]), tf.constant(yb), tf.constant(costs))
        window_success += success.numpy() / settings.round_steps
        window_size = size.numpy()
        if s % settings.round_steps == 0:
            works = window_success >= settings.success
            best = np.where(works, np.minimum(best, window_size), best)
            # no penalty until the warp works, then up while it keeps working and down when it stops
            costs = np.where(works, np.maximum(costs * settings.cost_multiplier, settings.init_cost),
                             costs / settings.cost_multiplier ** 1.5).astype(np.float32)
            window_success[:] = 0.0
        yield Progress(s / settings.steps, f"Warp inversion: step {s}/{settings.steps}, "
                                           f"smallest working warp {np.min(best):.2f} px" if np.isfinite(best).any()
                       else f"Warp inversion: step {s}/{settings.steps}")
    reached = {cls: bool(np.isfinite(b)) for cls, b in zip(targets, best)}
    shifts = {cls: float(b) if np.isfinite(b) else shift_cap for cls, b in zip(targets, best)}
    indices, median = small_side_indices(shifts)
    top = max(indices, key=lambda cls: indices[cls]) if any(v > 0 for v in indices.values()) else None
    seconds = time.perf_counter() - started
    return WarpResult(shifts, reached, indices, median, top, num_classes, seconds, asdict(settings))
