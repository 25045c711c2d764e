"""STRIP: flag trojaned inputs at run time by how little superimposition disturbs them.

Gao et al., "STRIP: A Defence Against Trojan Attacks on Deep Neural Networks"
(ACSAC 2019). A backdoor trigger dominates the model's decision, so an input
carrying it keeps its (target) prediction when clean images are blended onto
it; a clean input does not. The Shannon entropy of the predictions over N such
blends is therefore abnormally *low* for trojaned inputs.

The story of this module, top-down:

1. :func:`calibrate` draws N clean overlay images (seeded), measures the mean
   per-blend entropy of other clean images and puts the threshold at the
   order statistic whose false-rejection rate on *unseen* clean inputs is <=
   ``frr`` with 95% confidence (:mod:`core.detect.input_level.calibration`; distribution-free).
   The paper's normal fit (``scipy.stats.norm.fit`` and its ``frr`` quantile)
   is kept beside it for comparison only: entropies are bounded below by 0 and
   skewed, and on held-out clean data the fit's "1%" measured 2.3-3.1%
   (issue 11).
2. :func:`scan` streams any :class:`~core.intake.data.DataSource`, yielding partial
   table rows (:class:`ScanRows`) as it goes, and flags every input whose
   entropy is below the threshold. The guarded label is the model's class, or
   ``num_classes`` when flagged (the CSAW course's "N+1th class" convention).
3. :class:`StripProfile` holds everything needed to classify later without
   the validation set (the overlays themselves, N, weights, scale, threshold,
   FRR, the model's sha256) and is saved as a plain ``.npz`` (no pickles).

Entropy is in bits and averaged over the N blends (the paper's "normalised"
entropy), so profiles made with different N stay comparable; a uniform
prediction over K classes has entropy log2(K).

Speed: a chunk of B inputs x N overlays is blended, classified and reduced to
B entropies inside one compiled TensorFlow function, so only the B inputs
cross from NumPy to TensorFlow and memory is bounded by the chunk size, never
by the data set (see ``bench/bench_strip.py``).
"""

from __future__ import annotations

import io
import json
import math
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from core.intake import safety
from core.detect.input_level.calibration import DEFAULT_CONFIDENCE, FrrEstimate, conservative_threshold, estimate_at
from core.detect.input_level.clean_split import draw_clean_split, pixel_max_of  # noqa: F401  (pixel_max_of: re-exported)
from core.intake.data import DataSource, Skipped
from core.errors import DataError
from core.intake.inference import scale_factor
from core.jobs import Job, Progress, rescaled
from core.intake.models import LoadedModel
from core.intake.tf_env import tf as _tf

DEFAULT_OVERLAYS = 100  # as in the paper
DEFAULT_FRR = 0.01
DEFAULT_SEED = 0
DEFAULT_MAX_CLEAN = 2000  # clean images used for calibration (a 1% tail then holds ~20 of them)
# Chosen by measurement on the demo BadNet (bench/strip_acceptance.py --sweep): see DEFAULT_WEIGHTS below.
DEFAULT_INPUT_WEIGHT = 1.0
DEFAULT_OVERLAY_WEIGHT = 1.0
# Blended images per model call. Memory scales with it (input plus activations
# of that many images), throughput barely improves beyond ~2,000 on CPU.
DEFAULT_CHUNK_BYTES = 24 << 20
MIN_CHUNK, MAX_CHUNK = 256, 4096
THUMB_SIDE = 64  # thumbnails larger inputs are shrunk to (GUI table)
PROFILE_FORMAT = "trojanscope-strip-profile"
PROFILE_VERSION = 2  # 2: order-statistic threshold and confidence; 1 (normal fit) still loads
MAX_PROFILE_BYTES = 1 << 30
MAX_METADATA_BYTES = 1 << 20
LN2 = math.log(2.0)


# ------------------------------------------------------------------ entropy


def shannon_entropy(probs: np.ndarray, axis: int = -1) -> np.ndarray:
    """Entropy in bits of probability vectors along ``axis`` (0 log 0 = 0).

    The reference implementation (tests, GUI); the scanner computes the same
    quantity inside TensorFlow with ``xlogy``.
    """
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=axis)


@dataclass(frozen=True)
class BlendWeights:
    """Additive superimposition ``clip(input * a + overlay * b, 0, pixel_max)``.

    The CSAW course used OpenCV ``addWeighted(background, 1.5, overlay, 1)``
    without clipping (floats go past 255); clipping keeps blends inside the
    range the model was trained on.
    """

    input: float = DEFAULT_INPUT_WEIGHT
    overlay: float = DEFAULT_OVERLAY_WEIGHT

    def as_dict(self) -> dict[str, float]:
        return {"input": float(self.input), "overlay": float(self.overlay)}


@dataclass(frozen=True)
class StripSettings:
    """Every knob of a STRIP calibration, with the defaults the acceptance was measured at."""

    n_overlays: int = DEFAULT_OVERLAYS
    frr: float = DEFAULT_FRR  # false-rejection rate allowed on unseen clean inputs
    confidence: float = DEFAULT_CONFIDENCE  # probability that the rate holds
    seed: int = DEFAULT_SEED
    weights: BlendWeights = BlendWeights()
    max_clean: int = DEFAULT_MAX_CLEAN
    chunk: Optional[int] = None  # blended images per model call; None: from the input size


def chunk_for(input_shape: Sequence[int], chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Blended images per model call for inputs of this shape (memory bound)."""
    per_image = 4 * int(np.prod(input_shape))
    return int(np.clip(chunk_bytes // max(per_image, 1), MIN_CHUNK, MAX_CHUNK))


# -------------------------------------------------------- vectorised kernel


class StripKernel:
    """Blends, classifies and reduces a chunk of inputs in one compiled call.

    Built once per (model, overlays, weights, scale); :meth:`__call__` takes
    unscaled inputs (B, H, W, C) and returns (mean entropy per input, the
    model's probabilities for each unblended input).
    """

    def __init__(self, loaded: LoadedModel, overlays: np.ndarray, weights: BlendWeights, scale: str, pixel_max: float) -> None:
        tf = _tf()
        self.loaded = loaded
        self.n = int(len(overlays))
        self.factor = scale_factor(scale)
        self._overlays = tf.constant(np.asarray(overlays, np.float32) * np.float32(self.factor))
        self._a = tf.constant(float(weights.input), tf.float32)
        self._b = tf.constant(float(weights.overlay), tf.float32)
        self._vmax = tf.constant(float(pixel_max) * self.factor, tf.float32)
        self._fn = _kernel_fn(loaded)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(x) == 0:
            return np.zeros(0, np.float64), np.zeros((0, self.loaded.num_classes), np.float32)
        xs = np.ascontiguousarray(x, dtype=np.float32) * np.float32(self.factor)
        entropy, probs = self._fn(xs, self._overlays, self._a, self._b, self._vmax)
        return np.asarray(entropy, np.float64), np.asarray(probs)


_kernels: "weakref.WeakKeyDictionary[Any, Callable]" = weakref.WeakKeyDictionary()


def _kernel_fn(loaded: LoadedModel) -> Callable:
    """The compiled STRIP kernel of a model (cached: tracing costs seconds)."""
    model = loaded.model
    cached = _kernels.get(model)
    if cached is not None:
        return cached
    tf = _tf()
    h, w, c = loaded.input_shape
    softmax = not loaded.summary.outputs_probabilities
    spec = tf.TensorSpec([None, h, w, c], tf.float32)
    scalar = tf.TensorSpec([], tf.float32)

    @tf.function(input_signature=[spec, spec, scalar, scalar, scalar], autograph=False)
    def kernel(x, overlays, a, b, vmax):  # noqa: ANN001
        batch = tf.shape(x)[0]
        n = tf.shape(overlays)[0]
        # (B, 1, ...) + (1, N, ...): every input with every overlay, one array.
        blends = tf.clip_by_value(a * x[:, None] + b * overlays[None], 0.0, vmax)
        flat = tf.reshape(blends, [-1, h, w, c])
        out = model(tf.concat([flat, x], axis=0), training=False)
        probs = tf.nn.softmax(out) if softmax else out
        blend_probs, input_probs = probs[: batch * n], probs[batch * n :]
        entropy = -tf.reduce_sum(tf.math.xlogy(blend_probs, blend_probs), axis=1) / LN2
        return tf.reduce_mean(tf.reshape(entropy, [batch, n]), axis=1), input_probs

    _kernels[model] = kernel
    return kernel


# ------------------------------------------------------------------ profile


@dataclass
class StripProfile:
    """Everything the guarded classifier needs, without the validation set."""

    overlays: np.ndarray  # (N, H, W, C) float32, pixel values as stored
    weights: BlendWeights
    scale: str
    pixel_max: float
    threshold: float  # entropy below it is flagged (order statistic, see core.detect.input_level.calibration)
    frr: float  # the rate it was calibrated for (or, after a drag, its upper bound)
    fit_mean: float  # the paper's normal fit, for comparison only
    fit_std: float
    empirical_threshold: float  # the ``frr`` percentile of the clean entropies
    clean_entropies: np.ndarray  # what the threshold was fitted on (GUI histogram)
    model_sha256: str
    num_classes: int
    input_shape: tuple[int, int, int]
    seed: int
    notes: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)  # calibration's unreadable files (reports only, not saved)
    confidence: float = DEFAULT_CONFIDENCE

    method = "strip"
    tail = "low"  # low entropy is suspicious

    @property
    def n_overlays(self) -> int:
        return int(len(self.overlays))

    @property
    def scores(self) -> np.ndarray:
        """The clean calibration scores (entropies), as every scanner profile names them."""
        return self.clean_entropies

    def score_fn(self, loaded: LoadedModel, chunk: Optional[int] = None) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """(entropies, probabilities) of any number of inputs, blended in memory-bounded chunks."""
        kernel = StripKernel(loaded, self.overlays, self.weights, self.scale, self.pixel_max)
        step = max(1, (chunk or chunk_for(loaded.input_shape)) // self.n_overlays)

        def score(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            parts = [kernel(x[i : i + step]) for i in range(0, len(x), step)] or [kernel(x[:0])]
            return np.concatenate([e for e, _ in parts]), np.concatenate([p for _, p in parts])

        return score

    def frr_estimate(self, threshold: Optional[float] = None) -> FrrEstimate:
        """Expected false-rejection rate of ``threshold`` (default: the profile's), interval and bound."""
        t = self.threshold if threshold is None else float(threshold)
        return estimate_at(self.clean_entropies, t, "low", self.confidence)

    def expected_frr(self, threshold: float) -> tuple[float, float]:
        """(normal-fit, empirical) false rejection rate of clean inputs at ``threshold``."""
        from scipy.stats import norm

        normal = float(norm.cdf(threshold, self.fit_mean, self.fit_std)) if self.fit_std > 0 else float(threshold > self.fit_mean)
        empirical = float(np.mean(self.clean_entropies < threshold)) if len(self.clean_entropies) else float("nan")
        return normal, empirical

    def with_threshold(self, threshold: float) -> "StripProfile":
        """A copy using another threshold (the GUI's draggable line), FRR updated to match."""
        import dataclasses

        return dataclasses.replace(self, threshold=float(threshold), frr=self.frr_estimate(threshold).bound)

    def metadata(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "overlays": self.n_overlays,
            "weights": self.weights.as_dict(),
            "scale": self.scale,
            "pixel_max": self.pixel_max,
            "method": self.method,
            "threshold": self.threshold,
            "frr": self.frr,
            "confidence": self.confidence,
            "frr_estimate": self.frr_estimate().as_dict(),
            "fit_mean": self.fit_mean,
            "fit_std": self.fit_std,
            "empirical_threshold": self.empirical_threshold,
            "model_sha256": self.model_sha256,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "seed": self.seed,
            "notes": list(self.notes),
        }


def fit_threshold(entropies: np.ndarray, frr: float, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float, float, float]:
    """(threshold, mean, std, empirical) for clean ``entropies`` at false rejection ``frr``.

    The threshold is :func:`core.detect.input_level.calibration.conservative_threshold`'s order
    statistic; the normal fit (the paper's choice) and the plain empirical
    percentile are returned beside it so the GUI and reports can show how far
    apart they are.
    """
    from scipy.stats import norm

    e = np.asarray(entropies, np.float64)
    threshold = conservative_threshold(e, frr, confidence, "low").threshold
    mean, std = norm.fit(e)
    empirical = float(np.percentile(e, 100.0 * frr))
    return threshold, float(mean), float(std), empirical


def save_profile(profile: StripProfile, path: str | Path) -> Path:
    """Write ``profile`` atomically as a plain .npz (arrays and JSON metadata, no pickles)."""
    from core.intake.atomic import atomic_path

    path = Path(path)
    meta = json.dumps(profile.metadata(), allow_nan=False).encode("utf-8")
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a handle: numpy would append .npz to a bare name
        np.savez_compressed(
            handle,
            overlays=np.asarray(profile.overlays, np.float32),
            clean_entropies=np.asarray(profile.clean_entropies, np.float64),
            metadata=np.frombuffer(meta, np.uint8),
        )
    return path


def load_profile(path: str | Path) -> StripProfile:
    """Open a profile through the same checks as any data file; refuse anything odd.

    A profile travels between analysts, so it is treated as hostile: the zip
    directory is checked before anything is inflated, pickles are refused,
    and every field is type- and shape-checked.
    """
    path = Path(path)
    data, archive = safety.read_own_archive(path, MAX_PROFILE_BYTES, "a STRIP profile", "saved after STRIP calibration", ("profile",))
    names = set(archive.namelist())
    expected = {"overlays.npy", "clean_entropies.npy", "metadata.npy"}
    if names != expected:
        raise DataError(f"{path} is not a STRIP profile: expected arrays {sorted(expected)}; found {sorted(names)}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            overlays = np.asarray(npz["overlays"])
            clean = np.asarray(npz["clean_entropies"])
            meta_raw = np.asarray(npz["metadata"])
    except (ValueError, OSError, EOFError, KeyError) as exc:
        raise DataError(f"{path} is not a readable STRIP profile ({str(exc).splitlines()[0][:200]}): corrupt or pickled?") from None
    if meta_raw.dtype != np.uint8 or meta_raw.ndim != 1 or meta_raw.size > MAX_METADATA_BYTES:
        raise DataError(f"{path}: profile metadata must be a small UTF-8 JSON byte array")
    try:
        meta = json.loads(meta_raw.tobytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: profile metadata is not valid JSON ({exc})") from None
    return profile_from_saved(meta, overlays, clean, path)


def profile_from_saved(meta: Any, overlays: np.ndarray, clean: np.ndarray, path: Path) -> StripProfile:
    """A profile from saved metadata and arrays, every field checked (also used inside scan profiles)."""
    def bad(what: str) -> DataError:
        return DataError(f"{path}: {what} (not a STRIP profile saved by this version of TrojanScope?)")

    if not isinstance(meta, dict) or meta.get("format") != PROFILE_FORMAT:
        raise bad("missing the STRIP profile marker")
    if meta.get("version") not in (1, PROFILE_VERSION):
        raise bad(f"profile version {meta.get('version')!r}, expected 1 or {PROFILE_VERSION}")

    def number(key: str) -> float:
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad(f"'{key}' must be a finite number; found {value!r}")
        return float(value)

    shape = meta.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(s, int) and 0 < s <= 8192 for s in shape)):
        raise bad(f"'input_shape' must be [H, W, C]; found {shape!r}")
    n = meta.get("overlays")
    if overlays.dtype.kind not in "uif" or overlays.ndim != 4 or tuple(overlays.shape[1:]) != tuple(shape) or overlays.shape[0] != n:
        raise bad(f"overlays shaped {overlays.shape}, expected ({n}, {', '.join(map(str, shape))})")
    if n < 1 or not np.all(np.isfinite(overlays)):
        raise bad("overlays must be at least one finite image")
    if clean.dtype.kind not in "uif" or clean.ndim != 1 or not np.all(np.isfinite(clean)):
        raise bad("clean entropies must be a vector of finite numbers")
    weights = meta.get("weights")
    if not isinstance(weights, dict):
        raise bad("'weights' missing")
    scale = meta.get("scale")
    if scale not in ("255", "1"):
        raise bad(f"'scale' must be '255' or '1'; found {scale!r}")
    sha = meta.get("model_sha256")
    if not isinstance(sha, str):
        raise bad("'model_sha256' missing")
    num_classes = meta.get("num_classes")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise bad(f"'num_classes' must be an integer >= 2; found {num_classes!r}")
    notes = meta.get("notes", [])
    notes = [str(x) for x in notes] if isinstance(notes, list) else []
    if meta.get("version") == 1:
        notes.append("profile saved by an older TrojanScope: its threshold is a normal fit, not the conservative order statistic")
    confidence = number("confidence") if "confidence" in meta else DEFAULT_CONFIDENCE
    if not 0.5 <= confidence < 1.0:
        raise bad(f"'confidence' must be in [0.5, 1); found {confidence}")
    return StripProfile(
        overlays=overlays.astype(np.float32),
        weights=BlendWeights(float(_finite(weights.get("input"), bad)), float(_finite(weights.get("overlay"), bad))),
        scale=scale,
        pixel_max=number("pixel_max"),
        threshold=number("threshold"),
        frr=number("frr"),
        fit_mean=number("fit_mean"),
        fit_std=number("fit_std"),
        empirical_threshold=number("empirical_threshold"),
        clean_entropies=clean.astype(np.float64),
        model_sha256=sha,
        num_classes=num_classes,
        input_shape=(int(shape[0]), int(shape[1]), int(shape[2])),
        seed=int(number("seed")),
        notes=notes,
        confidence=confidence,
    )


def _finite(value: Any, bad: Callable[[str], DataError]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(f"blend weight {value!r} is not a finite number")
    return float(value)


def check_profile(loaded: LoadedModel, profile: StripProfile) -> list[str]:
    """Refuse a profile that cannot fit the model; warn when it was made for another file.

    A different hash is only a warning: the analyst may have re-saved or
    repaired the same network, and the numbers will tell.
    """
    if tuple(profile.input_shape) != tuple(loaded.input_shape):
        raise DataError(
            f"the STRIP profile was made for inputs {profile.input_shape}, but {loaded.summary.path} takes {loaded.input_shape}"
        )
    if profile.num_classes != loaded.num_classes:
        raise DataError(
            f"the STRIP profile was made for a {profile.num_classes}-class model, but {loaded.summary.path} has {loaded.num_classes} classes"
        )
    if profile.model_sha256 != loaded.summary.sha256:
        return [
            f"warning: the STRIP profile was calibrated on another model file (sha256 {profile.model_sha256[:12]}…, "
            f"this one is {loaded.summary.sha256[:12]}…): its threshold may not fit; recalibrate to be sure"
        ]
    return []


# -------------------------------------------------------------- calibration


def calibrate(
    loaded: LoadedModel, clean: DataSource, settings: StripSettings = StripSettings(), scale: str = "auto"
) -> Job[StripProfile]:
    """Draw N overlays from clean data and set the threshold from the other clean images.

    The split is :func:`core.detect.input_level.clean_split.draw_clean_split` (the same one every
    scanner uses); the threshold is :func:`fit_threshold`'s order statistic.
    """
    _check_settings(settings)
    split = yield from rescaled(draw_clean_split(loaded, clean, settings.n_overlays, settings.max_clean, settings.seed, scale), 0.0, 0.2)
    entropies = yield from rescaled(clean_entropies_of(loaded, split.overlays, split.calibration, settings, split.scale, split.pixel_max), 0.2, 1.0)
    profile = profile_from(loaded, split, entropies, settings)
    yield Progress(1.0, f"Calibrated: threshold {profile.threshold:.4f} bits, {profile.frr_estimate().describe()}")
    return profile


def _check_settings(settings: StripSettings) -> None:
    if settings.n_overlays < 1:
        raise DataError(f"the number of overlays must be at least 1; received {settings.n_overlays}")
    if not 0.0 < settings.frr < 0.5:
        raise DataError(f"false rejection rate must be between 0 and 0.5; received {settings.frr}")


def clean_entropies_of(
    loaded: LoadedModel, overlays: np.ndarray, calib: np.ndarray, settings: StripSettings, scale: str, pixel_max: float
) -> Job[np.ndarray]:
    """Mean blend entropy of each calibration image, in chunks, with progress."""
    kernel = StripKernel(loaded, overlays, settings.weights, scale, pixel_max)
    n = len(overlays)
    step = max(1, (settings.chunk or chunk_for(loaded.input_shape)) // n)
    entropies = []
    for start in range(0, len(calib), step):
        e, _ = kernel(calib[start : start + step])
        entropies.append(e)
        done = min(start + step, len(calib))
        yield Progress(done / len(calib), f"Calibrating STRIP: {done}/{len(calib)} clean images x {n} overlays")
    return np.concatenate(entropies) if entropies else np.zeros(0)


def profile_from(loaded: LoadedModel, split: Any, entropies: np.ndarray, settings: StripSettings, frr: Optional[float] = None,
                 confidence: Optional[float] = None) -> StripProfile:
    """The profile for ``entropies`` of a :class:`~core.detect.input_level.clean_split.CleanSplit` (``frr``/``confidence`` override the settings')."""
    frr = settings.frr if frr is None else frr
    confidence = settings.confidence if confidence is None else confidence
    threshold, mean, std, empirical = fit_threshold(entropies, frr, confidence)
    note = conservative_threshold(entropies, frr, confidence, "low").note
    return StripProfile(
        overlays=split.overlays.astype(np.float32),
        weights=settings.weights,
        scale=split.scale,
        pixel_max=split.pixel_max,
        threshold=threshold,
        frr=float(frr),
        fit_mean=mean,
        fit_std=std,
        empirical_threshold=empirical,
        clean_entropies=np.asarray(entropies, np.float64),
        model_sha256=loaded.summary.sha256,
        num_classes=loaded.num_classes,
        input_shape=tuple(loaded.input_shape),
        seed=int(settings.seed),
        notes=list(split.notes) + ([note] if note else []),
        skipped=list(split.skipped),
        confidence=float(confidence),
    )


# --------------------------------------------------------------------- scan


@dataclass(frozen=True)
class StripRow:
    """One scanned input: its entropy, verdict and guarded label."""

    source: str
    index: int
    entropy: float
    flagged: bool
    label: int  # the model's class, or num_classes when flagged
    predicted: int  # the model's class, flagged or not
    confidence: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "index": self.index,
            "entropy": self.entropy,
            "flagged": self.flagged,
            "label": self.label,
            "predicted": self.predicted,
            "confidence": self.confidence,
        }


@dataclass(frozen=True, eq=False)
class ScanRows:
    """A partial result: rows of one chunk (with thumbnails) and files skipped in it."""

    rows: tuple[StripRow, ...]
    thumbnails: np.ndarray  # (len(rows), h, w, C) uint8, the model's view of each input
    skipped: tuple[Skipped, ...]
    done: int
    total: int


@dataclass
class ScanResult:
    profile: StripProfile
    rows: list[StripRow]
    skipped: list[Skipped]
    warnings: list[str] = field(default_factory=list)
    source: str = ""
    detectors: str = ""  # a combined scan's detectors, thresholds and counts (the report's line); empty for STRIP alone

    @property
    def flagged(self) -> int:
        return sum(r.flagged for r in self.rows)

    def as_dict(self) -> dict[str, Any]:
        p = self.profile
        return {
            "threshold": p.threshold,
            "frr": p.frr,
            "overlays": p.n_overlays,
            "num_classes": p.num_classes,
            "scanned": len(self.rows),
            "flagged": self.flagged,
            "results": [r.as_dict() for r in self.rows],
            "skipped": [s.as_dict() for s in self.skipped],
            "method": "strip",
            "confidence": p.confidence,
            "frr_estimate": p.frr_estimate().as_dict(),
            "empirical_threshold": p.empirical_threshold,
            "normal_fit": {"mean": p.fit_mean, "std": p.fit_std},
            "weights": p.weights.as_dict(),
            "scale": p.scale,
            "seed": p.seed,
            "model_sha256": p.model_sha256,
            "warnings": list(self.warnings),
        }


def guarded_labels(predicted: np.ndarray, entropies: np.ndarray, threshold: float, num_classes: int) -> np.ndarray:
    """The guarded classifier's output: the class, or ``num_classes`` for flagged inputs."""
    predicted = np.asarray(predicted)
    return np.where(np.asarray(entropies) < threshold, num_classes, predicted).astype(np.int64)


def scan(
    loaded: LoadedModel,
    profile: StripProfile,
    source: DataSource,
    chunk: Optional[int] = None,
    thumbnails: bool = True,
) -> Job[ScanResult]:
    """Stream ``source`` through the STRIP kernel, yielding rows as they are ready.

    Unreadable files are skipped and reported (in each :class:`ScanRows` and
    in the result); they never stop the scan.
    """
    warnings = check_profile(loaded, profile)
    for w in warnings:
        yield Progress(0.0, w)
    kernel = StripKernel(loaded, profile.overlays, profile.weights, profile.scale, profile.pixel_max)
    step = max(1, (chunk or chunk_for(loaded.input_shape)) // profile.n_overlays)
    rows: list[StripRow] = []
    skipped: list[Skipped] = []
    done = 0
    for batch in source.batches(loaded.input_shape, step):
        skipped.extend(batch.skipped)
        entropy, probs = kernel(batch.x)
        predicted = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
        labels = guarded_labels(predicted, entropy, profile.threshold, profile.num_classes)
        new = tuple(
            StripRow(src, int(i), float(e), bool(lab == profile.num_classes), int(lab), int(p), float(probs[k, p]))
            for k, (src, i, e, lab, p) in enumerate(zip(batch.sources, batch.indices, entropy, labels, predicted))
        )
        rows.extend(new)
        done += len(batch.x) + len(batch.skipped)
        thumbs = make_thumbnails(batch.x) if thumbnails else np.zeros((len(new), 0, 0, 0), np.uint8)
        yield ScanRows(new, thumbs, tuple(batch.skipped), done, source.count)
        yield Progress(done / max(source.count, 1), f"Scanning {source.path.name}: {done}/{source.count}, {sum(r.flagged for r in rows)} flagged")
    return ScanResult(profile, rows, skipped, warnings, str(source.path))


def make_thumbnails(x: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """uint8 copies of model-layout images, shrunk when larger than ``side``."""
    images = np.clip(np.asarray(x), 0, 255)
    if len(images) and float(images.max()) <= 1.0:
        images = images * 255.0
    images = images.astype(np.uint8)
    if len(images) == 0 or max(images.shape[1:3]) <= side:
        return images
    import cv2

    h, w = images.shape[1:3]
    f = side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    out = [cv2.resize(img, size, interpolation=cv2.INTER_AREA) for img in images]
    return np.stack([o if o.ndim == 3 else o[:, :, None] for o in out])


def classify(loaded: LoadedModel, profile: StripProfile, x: np.ndarray, chunk: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Guarded labels, entropies and model classes for in-memory unscaled inputs."""
    kernel = StripKernel(loaded, profile.overlays, profile.weights, profile.scale, profile.pixel_max)
    step = max(1, (chunk or chunk_for(loaded.input_shape)) // profile.n_overlays)
    ents, preds = [], []
    for start in range(0, len(x), step):
        e, p = kernel(x[start : start + step])
        ents.append(e)
        preds.append(p.argmax(axis=1))
    entropy = np.concatenate(ents) if ents else np.zeros(0)
    predicted = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    return guarded_labels(predicted, entropy, profile.threshold, profile.num_classes), entropy, predicted


# ------------------------------------------------------- reference baseline


def blend_loop_entropy(loaded: LoadedModel, profile: StripProfile, x: np.ndarray) -> np.ndarray:
    """The course's per-image loop: OpenCV blends, one predict call per input.

    Kept as the reference the vectorised kernel is benchmarked and tested
    against (same weights and clipping, so the numbers must agree).
    """
    import cv2

    factor = scale_factor(profile.scale)
    out = np.empty(len(x), np.float64)
    for i, image in enumerate(np.asarray(x, np.float32)):
        blends = np.stack(
            [
                np.clip(cv2.addWeighted(image, profile.weights.input, o, profile.weights.overlay, 0.0), 0, profile.pixel_max).reshape(image.shape)
                for o in profile.overlays
            ]
        )
        probs = loaded.model.predict(blends * factor, verbose=0)
        if not loaded.summary.outputs_probabilities:
            probs = _softmax(probs)
        out[i] = shannon_entropy(probs).mean()
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def iter_rows(events: Iterable[Any]) -> list[StripRow]:
    """All rows in a list of job events (tests, CLI)."""
    return [row for ev in events if isinstance(ev, ScanRows) for row in ev.rows]


__all__ = [
    "BlendWeights",
    "ScanResult",
    "ScanRows",
    "StripProfile",
    "StripRow",
    "StripSettings",
    "blend_loop_entropy",
    "calibrate",
    "check_profile",
    "classify",
    "fit_threshold",
    "guarded_labels",
    "load_profile",
    "save_profile",
    "scan",
    "shannon_entropy",
]
