"""MM-BD: a backdoor detector that assumes nothing about the trigger's size or shape.

Wang, Xiang, Miller and Kesidis, "MM-BD: Post-Training Detection of Backdoor
Attacks with Arbitrary Backdoor Pattern Types Using a Maximum Margin
Statistic", IEEE S&P 2024. Neural Cleanse looks for an abnormally *small*
trigger, so a large one (a frame, sunglasses, a blended pattern, a warp)
escapes it. MM-BD looks at the model alone: a backdoor is a shortcut the
network learned to obey above everything else, so an input can be found that
drives the target's logit *far* above every other class -- farther than any
natural class can be pushed. Read top-down in :func:`mmbd`:

1. For each class k, maximise the margin ``z_k(x) - max_{j != k} z_j(x)``
   of the logits z over inputs x anywhere in the valid pixel box, by
   projected gradient ascent (Adam, then clip to the box) from a few random
   starts; the class's statistic r_k is the largest margin reached. No clean
   data is needed (it is used only to choose the pixel scale when asked).
   Classes and starts are optimised together, in batches of at most
   ``batch`` images. A many-class model (the CSAW faces: 1,283 classes)
   gets one start per class and fewer steps (:func:`plan`): 6 starts x 300
   steps there cost ~18 minutes on 2 CPU cores.
2. A null model of the statistics of classes that are *not* backdoor
   targets: a gamma distribution (location 0) fitted by maximum likelihood
   to the other classes' statistics. The most extreme class is tested with
   the order-statistic p-value of the paper, ``p = 1 - F(r)^(K-1)``: the
   probability that the largest of K - 1 null statistics exceeds r.
3. Calibration (ours): with 10 classes the null is fitted to 9 values and
   the paper's p-value is far too small -- below 0.05 on about a quarter of
   backdoor-free sets of statistics. We compare it with its own
   distribution on simulated backdoor-free models (a parametric bootstrap
   from the fitted gamma), so that p < 0.05 means what it says. Below 0.05
   (the paper's level) the class is flagged. The second largest is tested
   against the classes below it, and so on for up to a third of the classes
   (Rosner's generalised ESD), so that two targets do not hide each other.

The job yields progress every few optimisation steps and writes nothing.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Union

import numpy as np

from core.detect.model_level.levels import finite_or_none
from core.intake.data import Arrays, DataSource, load_arrays
from core.errors import DataError
from core.intake.inference import scale_factor
from core.jobs import Job, Progress
from core.intake.models import LoadedModel
from core.intake.tf_env import tf as _tf

# The paper's significance level for the order-statistic p-value.
SIGNIFICANCE = 0.05
# Clean images whose own logit margins give the model's natural scale (reported beside the statistics).
CLEAN_IMAGES = 500
# Simulated backdoor-free models per calibration: the smallest p-value it can give is 1/401.
CALIBRATION_DRAWS = 400
# Gamma fits need positive data: statistics at or below 0 (a class that can
# never win) are lifted to this small positive value before fitting.
_FLOOR = 1e-6


@dataclass(frozen=True)
class MMBDSettings:
    """Optimisation settings. Defaults measured on the zoo (bench/zoo_report.py)."""

    starts: int = 6  # random starting images per class; the best margin counts
    steps: int = 300  # projected Adam steps
    learning_rate: float = 0.02  # in units of the full pixel range per step
    significance: float = SIGNIFICANCE
    seed: int = 0
    batch: int = 256  # images optimised at once: bounds memory, and a step stays short enough for a prompt Cancel
    # Work cap in image-steps (images x steps). 10 classes take 18,000; the 1,283-class DeepID net ~0.45 ms
    # per image-step on 2 cores, so the cap keeps it near 90 s (one start, 155 steps) instead of ~18 min.
    image_steps: int = 200_000
    min_steps: int = 100  # below this the margins are still climbing (Adam at 0.02 needs ~50 steps to cross the box)


def plan(settings: MMBDSettings, num_classes: int) -> tuple[int, int]:
    """Starts per class and steps to run: the settings' own while they fit ``image_steps``.

    Starts go first (the best of several starts matters least: every class
    gets the same effort, so the outlier test stays fair), then steps, never
    below ``min_steps``: a many-class model costs more than the cap rather
    than giving half-climbed margins.
    """
    starts, steps = settings.starts, settings.steps
    if num_classes * starts * steps <= settings.image_steps:
        return starts, steps
    starts = max(1, min(starts, settings.image_steps // (num_classes * steps)))
    if num_classes * starts * steps > settings.image_steps:
        steps = max(min(settings.min_steps, steps), settings.image_steps // (num_classes * starts))
    return starts, steps


@dataclass(frozen=True)
class MMBDStep:
    """Progress of the batched optimisation: each class's best margin so far."""

    step: int
    steps: int
    margins: tuple[float, ...]


@dataclass(frozen=True)
class MMBDResult:
    """Each class's maximum margin, its p-value under the null, and the flagged classes."""

    flagged_classes: tuple[int, ...]  # most significant first
    margins: dict[int, float]  # r_k: the largest logit margin found for class k
    p_values: dict[int, float]  # order-statistic p-value of each class against the others
    gamma_shape: float  # the null fitted to the unflagged classes
    gamma_scale: float
    num_classes: int
    scale: str
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    clean_margin: Optional[float] = None  # median logit margin of clean images (None without clean data)
    raw_p_values: dict[int, float] = field(default_factory=dict)  # the paper's uncalibrated p-values
    class_clean_margins: dict[int, float] = field(default_factory=dict)  # median margin of clean images predicted k

    @property
    def verdict(self) -> str:
        return "backdoored" if self.flagged_classes else "clean"

    @property
    def min_p_value(self) -> float:
        return min(self.p_values.values()) if self.p_values else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": "MM-BD",
            "verdict": self.verdict,
            "flagged_classes": list(self.flagged_classes),
            "margins": {str(k): round(v, 4) for k, v in self.margins.items()},
            "p_values": {str(k): float(f"{v:.4g}") for k, v in self.p_values.items()},
            # A point-mass null (every other class at the same margin) has an infinite shape: JSON null.
            "gamma_null": {"shape": finite_or_none(self.gamma_shape), "scale": finite_or_none(self.gamma_scale)},
            "significance": self.settings.get("significance", SIGNIFICANCE),
            "raw_p_values": {str(k): float(f"{v:.4g}") for k, v in self.raw_p_values.items()},
            "clean_margin": None if self.clean_margin is None else round(self.clean_margin, 4),
            "class_clean_margins": {str(k): round(v, 4) for k, v in self.class_clean_margins.items()},
            "num_classes": self.num_classes,
            "scale": self.scale,
            "seconds": round(self.seconds, 2),
            "settings": self.settings,
        }

    def describe(self) -> str:
        """One plain-language sentence for the analyst."""
        if self.flagged_classes:
            parts = ", ".join(f"class {c} (margin {self.margins[c]:.1f}, p = {self.p_values[c]:.2g})" for c in self.flagged_classes)
            return f"MM-BD: inputs can be made to favour {parts} far beyond any other class, as a backdoor target can."
        return f"MM-BD: no class's maximum margin stands out (smallest p = {self.min_p_value:.2g}, threshold {SIGNIFICANCE})."


# ---------------------------------------------------------------- statistics


def fit_gamma_many(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximum-likelihood gamma (location 0) of each row of ``data``: (shapes, scales).

    The shape solves log(a) - digamma(a) = log(mean) - mean(log x)
    (Minka, "Estimating a Gamma distribution", 2002): his closed-form start,
    then Newton steps. Vectorised, because calibration fits thousands of
    simulated sets; equal to scipy.stats.gamma.fit(floc=0) (tests/test_mmbd.py).
    A row of equal values has no spread: shape inf, scale = that value.
    """
    from scipy.special import digamma, polygamma

    x = np.maximum(np.asarray(data, np.float64), _FLOOR)
    mean = x.mean(axis=1)
    s = np.log(mean) - np.log(x).mean(axis=1)  # >= 0 by Jensen; 0 only when all equal
    degenerate = s <= 1e-12
    s = np.where(degenerate, 1.0, s)
    a = (3 - s + np.sqrt((s - 3) ** 2 + 24 * s)) / (12 * s)
    for _ in range(6):
        a = a - (np.log(a) - digamma(a) - s) / (1 / a - polygamma(1, a))
        a = np.maximum(a, 1e-6)
    shape = np.where(degenerate, np.inf, a)
    scale = np.where(degenerate, mean, mean / a)
    return shape, scale


def fit_gamma(values: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood gamma (location 0) of positive statistics: (shape, scale)."""
    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return float("inf"), float(values[0]) if len(values) else 0.0
    shape, scale = fit_gamma_many(values[None])
    return float(shape[0]), float(scale[0])


def order_p_values(values: np.ndarray, shapes: np.ndarray, scales: np.ndarray, n_null: int) -> np.ndarray:
    """P(max of ``n_null`` gamma(shape, scale) draws >= value) = 1 - F(value)^n_null, element-wise.

    Computed as -expm1(n log1p(-sf)) so that tiny p-values do not round to 0.
    A point-mass null (shape inf) gives 0 above its value and 1 otherwise.
    """
    from scipy import stats

    values = np.maximum(np.asarray(values, np.float64), _FLOOR)
    shapes, scales = np.asarray(shapes, np.float64), np.asarray(scales, np.float64)
    finite = np.isfinite(shapes)
    sf = np.where(finite, stats.gamma.sf(values, np.where(finite, shapes, 1.0), scale=np.where(finite, scales, 1.0)), 0.0)
    with np.errstate(divide="ignore"):
        p = -np.expm1(n_null * np.log1p(-np.minimum(sf, 1.0)))
    point = np.where(values > scales * (1 + 1e-9), 0.0, 1.0)
    return np.where(finite, np.where(sf <= 0, 0.0, p), point)


def order_p_value(value: float, shape: float, scale: float, n_null: int) -> float:
    """P(max of ``n_null`` null statistics >= value) = 1 - F(value)^n_null for a gamma null."""
    return float(order_p_values(np.array([value]), np.array([shape]), np.array([scale]), n_null)[0])


@dataclass(frozen=True)
class Detection:
    flagged: tuple[int, ...]  # most extreme first
    p_values: dict[int, float]  # calibrated: the chance a model without backdoor looks at least this extreme
    raw_p_values: dict[int, float]  # the paper's order-statistic p-values
    null_shape: float  # gamma fitted to the unflagged classes
    null_scale: float


def simulated_raw_p(shape: float, n: int, draws: int, seed: int = 0) -> np.ndarray:
    """The paper's raw p-value (largest of n against a gamma fitted to the other n - 1) on simulated
    backdoor-free sets of n gamma(shape) statistics: its distribution when there is no backdoor.

    Fitting a gamma to 9 values understates the tail, so with 10 classes the
    raw p-value falls below 0.05 on about a quarter of backdoor-free sets
    (tests/test_mmbd.py measures it). Comparing an observed raw p-value with
    this distribution (a parametric bootstrap) gives a p-value that means
    what it says. The gamma's scale does not change the raw p-value.
    """
    from scipy import stats

    rng = np.random.default_rng(seed)
    samples = np.sort(stats.gamma.rvs(shape, size=(draws, n), random_state=rng), axis=1)
    shapes, scales = fit_gamma_many(samples[:, :-1])
    return order_p_values(samples[:, -1], shapes, scales, n - 1)


def detect(margins: dict[int, float], significance: float = SIGNIFICANCE, draws: int = CALIBRATION_DRAWS) -> Detection:
    """Flag classes whose maximum margin is an outlier: the paper's test, calibrated, for up to a third of the classes.

    For m = 1, 2, ... the m-th largest margin is tested against a gamma
    fitted to the classes below it (the larger ones left out, as in Rosner's
    generalised ESD test, so that two backdoor targets do not mask each
    other); the top m* classes are flagged, m* the largest m whose
    calibrated p-value is below ``significance``. A raw p-value is the
    paper's order statistic; its calibrated p-value is the share of
    simulated backdoor-free models (``simulated_raw_p``, with the fitted
    null's shape) whose raw p-value is as small: (1 + hits) / (1 + draws).
    Every other class is tested against the unflagged classes.
    """
    classes = sorted(margins, key=lambda c: -margins[c])
    simulated: dict[tuple[int, float], np.ndarray] = {}

    def p_against(cls: int, others: list[int]) -> tuple[float, float]:
        shape, scale = fit_gamma(np.array([margins[c] for c in others]))
        raw = order_p_value(margins[cls], shape, scale, len(others))
        if not np.isfinite(shape):  # point-mass null: no simulation can say more
            return raw, raw
        key = (len(others) + 1, round(shape, 1))
        if key not in simulated:
            simulated[key] = simulated_raw_p(max(key[1], 0.05), key[0], draws)
        return (1 + int(np.sum(simulated[key] <= raw))) / (1 + draws), raw

    p_values: dict[int, float] = {}
    raw_p: dict[int, float] = {}
    outliers = 0
    for m in range(1, max(1, len(classes) // 3) + 1):
        below = classes[m:]
        if len(below) < 2:
            break
        p_values[classes[m - 1]], raw_p[classes[m - 1]] = p_against(classes[m - 1], below)
        if p_values[classes[m - 1]] < significance:
            outliers = m
    flagged = classes[:outliers]
    rest = classes[outliers:]
    for cls in classes:
        if cls in flagged:
            continue
        others = [c for c in rest if c != cls]
        p_values[cls], raw_p[cls] = p_against(cls, others) if len(others) >= 2 else (1.0, 1.0)
    shape, scale = fit_gamma(np.array([margins[c] for c in rest])) if len(rest) >= 2 else (float("nan"), float("nan"))
    return Detection(tuple(flagged), p_values, raw_p, shape, scale)


# ---------------------------------------------------------------- the job


def mmbd(
    loaded: LoadedModel,
    clean: Union[DataSource, Arrays, None] = None,
    scale: str = "auto",
    settings: MMBDSettings = MMBDSettings(),
    pixel_max: Optional[float] = None,
) -> Job[MMBDResult]:
    """Maximise every class's logit margin over the pixel box and test for outliers.

    ``clean`` is optional: it is used only to choose ``scale`` ('auto') and
    the pixel range (0..255 or 0..1, as the data is stored); without it give
    ``scale`` ('255' or '1') and ``pixel_max`` (255 by default).
    """
    from core.detect.model_level.cleanse import logits_fn

    started = time.perf_counter()
    if settings.starts < 1 or settings.steps < 1:
        raise DataError(f"MM-BD needs at least 1 start and 1 step; received {settings.starts} and {settings.steps}")
    scale, pixel_max, clean_x = yield from _choose_scale(loaded, clean, scale, pixel_max)
    factor = scale_factor(scale)
    tf = _tf()
    num_classes = loaded.num_classes
    h, w, c = loaded.input_shape
    logits, _from_logits = logits_fn(loaded)
    rng = np.random.default_rng(settings.seed)
    starts, steps = plan(settings, num_classes)
    n = num_classes * starts
    targets = np.repeat(np.arange(num_classes), starts)
    size = min(n, max(1, settings.batch))
    # The box is [0, 1] in the variable, mapped to [0, pixel_max] then scaled as the model expects.
    x = tf.Variable(tf.zeros((size, h, w, c)))
    m, v = tf.Variable(tf.zeros_like(x)), tf.Variable(tf.zeros_like(x))
    t = tf.Variable(0.0)
    onehot = tf.Variable(tf.zeros((size, num_classes), tf.bool))
    lr, b1, b2 = settings.learning_rate, 0.9, 0.999  # Adam's usual moments

    def margin_of(z):  # noqa: ANN001 -- z_k - max_{j != k} z_j, per image
        own = tf.reduce_sum(tf.where(onehot, z, 0.0), axis=1)
        other = tf.reduce_max(tf.where(onehot, -np.inf, z), axis=1)
        return own - other

    @tf.function(reduce_retracing=True, autograph=False)
    def step():
        with tf.GradientTape() as tape:
            z = logits(x * (pixel_max * factor))
            margins = margin_of(z)
            loss = -tf.reduce_sum(margins)  # images are independent: their gradients do not mix
        grad = tape.gradient(loss, x)
        t.assign_add(1.0)
        m.assign(b1 * m + (1 - b1) * grad)
        v.assign(b2 * v + (1 - b2) * tf.square(grad))
        update = (m / (1 - tf.pow(b1, t))) / (tf.sqrt(v / (1 - tf.pow(b2, t))) + 1e-8)
        x.assign(tf.clip_by_value(x - lr * update, 0.0, 1.0))  # projection onto the pixel box
        return margins

    @tf.function(reduce_retracing=True, autograph=False)
    def current():
        return margin_of(logits(x * (pixel_max * factor)))

    best = np.full(n, -np.inf)
    chunks = range(0, n, size)
    last_yield = time.perf_counter()
    for i, lo in enumerate(chunks):
        # The last batch is topped up to the same size (one traced graph); only its own rows count.
        rows = np.arange(lo, lo + size) % n
        kept = slice(0, min(size, n - lo))
        x.assign(rng.random((size, h, w, c)).astype(np.float32))
        m.assign(tf.zeros_like(m))
        v.assign(tf.zeros_like(v))
        t.assign(0.0)
        hot = np.zeros((size, num_classes), bool)  # not np.eye(num_classes): K x K bytes on a many-class model
        hot[np.arange(size), targets[rows]] = True
        onehot.assign(hot)
        for k in range(steps):
            step()
            if time.perf_counter() - last_yield > 0.2 or k == steps - 1:
                best[rows[kept]] = np.maximum(best[rows[kept]], current().numpy()[kept])
                per_class = best.reshape(num_classes, starts).max(axis=1)
                last_yield = time.perf_counter()
                done = (i * steps + k + 1) / (len(chunks) * steps)
                yield MMBDStep(k + 1, steps, tuple(float(r) for r in per_class))
                where = f", batch {i + 1}/{len(chunks)}" if len(chunks) > 1 else ""
                yield Progress(done, f"MM-BD: maximising every class's margin, step {k + 1}/{steps}{where}")
        best[rows[kept]] = np.maximum(best[rows[kept]], current().numpy()[kept])
    margins = {cls: float(r) for cls, r in enumerate(best.reshape(num_classes, starts).max(axis=1))}

    clean_margin, class_margins = None, {}
    if clean_x is not None and len(clean_x):
        # The margin clean images get for their predicted class: how far a natural input goes.
        z = np.concatenate([np.asarray(logits(tf.constant(clean_x[i : i + 256] * factor, tf.float32))) for i in range(0, len(clean_x), 256)])
        top2 = np.sort(z, axis=1)[:, -2:]
        gaps = top2[:, 1] - top2[:, 0]
        clean_margin = float(np.median(gaps))
        predicted = z.argmax(axis=1)
        class_margins = {k: float(np.median(gaps[predicted == k])) for k in range(num_classes) if np.any(predicted == k)}

    yield Progress(1.0, "MM-BD: testing the margins against a null of the other classes")
    found = detect(margins, settings.significance)
    seconds = time.perf_counter() - started
    yield Progress(1.0, f"MM-BD finished in {seconds:.1f} s")
    used = {**asdict(settings), "starts_used": starts, "steps_used": steps}
    return MMBDResult(found.flagged, margins, found.p_values, found.null_shape, found.null_scale, num_classes, scale,
                      seconds, used, clean_margin, found.raw_p_values, class_margins)


def _choose_scale(loaded: LoadedModel, clean: Union[DataSource, Arrays, None], scale: str,
                  pixel_max: Optional[float]) -> Job[tuple[str, float, Optional[np.ndarray]]]:
    """The scale the model expects, the stored pixel range and some clean images (None without clean data)."""
    if clean is None:
        if scale == "auto":
            raise DataError("MM-BD needs clean data to choose the pixel scale automatically; "
                            "give the scale (255: pixels divided by 255, or 1)", fixed_by=("scale",))
        return scale, 255.0 if pixel_max is None else float(pixel_max), None
    yield Progress(None, "MM-BD: reading clean images to choose the pixel scale")
    arrays = clean if isinstance(clean, Arrays) else load_arrays(clean, loaded.input_shape, limit=500)
    if len(arrays.x) == 0:
        raise DataError("the clean data holds no readable image")
    if pixel_max is None:
        pixel_max = 255.0 if float(np.max(arrays.x)) > 1.5 else 1.0
    if scale == "auto":
        from core.intake.data import ArraySource
        from core.intake.fit import choose_scale

        scale, _note = choose_scale(loaded, ArraySource(arrays.x, arrays.y, "clean data"), "auto")
    return scale, float(pixel_max), arrays.x[:CLEAN_IMAGES]
