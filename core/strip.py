"""STRIP: flag trojaned inputs at run time by how little superimposition disturbs them.

Gao et al., "STRIP: A Defence Against Trojan Attacks on Deep Neural Networks"
(ACSAC 2019). A backdoor trigger dominates the model's decision, so an input
carrying it keeps its (target) prediction when clean images are blended onto
it; a clean input does not. The Shannon entropy of the predictions over N such
blends is therefore abnormally *low* for trojaned inputs.

The story of this module, top-down:

1. :func:`calibrate` draws N clean overlay images (seeded), measures the mean
   per-blend entropy of other clean images, fits a normal distribution
   (``scipy.stats.norm.fit``) and puts the threshold at its ``frr`` quantile
   (``norm.ppf``): the expected false rejection rate. The empirical percentile
   is kept beside it, because entropies are bounded below by 0 and need not be
   normal.
2. :func:`scan` streams any :class:`~core.data.DataSource`, yielding partial
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

from core import safety
from core.data import DataSource, Skipped
from core.errors import DataError
from core.inference import scale_factor
from core.jobs import Job, Progress
from core.models import LoadedModel
from core.tf_env import tf as _tf

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
PROFILE_VERSION = 1
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


def pixel_max_of(images: np.ndarray) -> float:
    """255 for images stored as 0..255, 1 for images stored as 0..1."""
    return 255.0 if float(np.max(images, initial=0.0)) > 1.5 else 1.0


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

    @tf.function(input_signature=[spec, spec, scalar, scalar, scalar])
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
    threshold: float  # normal-fit threshold at ``frr``: entropy below it is flagged
    frr: float
    fit_mean: float
    fit_std: float
    empirical_threshold: float  # the ``frr`` percentile of the clean entropies
    clean_entropies: np.ndarray  # what the threshold was fitted on (GUI histogram)
    model_sha256: str
    num_classes: int
    input_shape: tuple[int, int, int]
    seed: int
    notes: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)  # calibration's unreadable files (reports only, not saved)

    @property
    def n_overlays(self) -> int:
        return int(len(self.overlays))

    def expected_frr(self, threshold: float) -> tuple[float, float]:
        """(normal-fit, empirical) false rejection rate of clean inputs at ``threshold``."""
        from scipy.stats import norm

        normal = float(norm.cdf(threshold, self.fit_mean, self.fit_std)) if self.fit_std > 0 else float(threshold > self.fit_mean)
        empirical = float(np.mean(self.clean_entropies < threshold)) if len(self.clean_entropies) else float("nan")
        return normal, empirical

    def with_threshold(self, threshold: float) -> "StripProfile":
        """A copy using another threshold (the GUI's draggable line), FRR updated to match."""
        import dataclasses

        return dataclasses.replace(self, threshold=float(threshold), frr=self.expected_frr(threshold)[0])

    def metadata(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "version": PROFILE_VERSION,
            "overlays": self.n_overlays,
            "weights": self.weights.as_dict(),
            "scale": self.scale,
            "pixel_max": self.pixel_max,
            "threshold": self.threshold,
            "frr": self.frr,
            "fit_mean": self.fit_mean,
            "fit_std": self.fit_std,
            "empirical_threshold": self.empirical_threshold,
            "model_sha256": self.model_sha256,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "seed": self.seed,
            "notes": list(self.notes),
        }


def fit_threshold(entropies: np.ndarray, frr: float) -> tuple[float, float, float, float]:
    """(threshold, mean, std, empirical) for clean ``entropies`` at false rejection ``frr``.

    The normal fit is the paper's choice; it extrapolates beyond the few
    clean samples in a 1% tail, while the empirical percentile shows how far
    the fit is from the data.
    """
    from scipy.stats import norm

    if not 0.0 < frr < 0.5:
        raise DataError(f"false rejection rate must be between 0 and 0.5; received {frr}")
    e = np.asarray(entropies, np.float64)
    if len(e) < 2:
        raise DataError(f"calibration needs at least 2 clean entropies; received {len(e)}")
    mean, std = norm.fit(e)
    threshold = float(norm.ppf(frr, mean, std)) if std > 0 else float(mean)
    empirical = float(np.percentile(e, 100.0 * frr))
    return threshold, float(mean), float(std), empirical


def save_profile(profile: StripProfile, path: str | Path) -> Path:
    """Write ``profile`` atomically as a plain .npz (arrays and JSON metadata, no pickles)."""
    from core.atomic import atomic_path

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
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file: expected a STRIP profile (.npz) saved after STRIP calibration",
                        fixed_by=("profile",))
    size = path.stat().st_size
    if size > MAX_PROFILE_BYTES:
        raise DataError(f"{path} is {size >> 20} MiB, too large for a STRIP profile")
    data = path.read_bytes()
    if safety.sniff_format(data[:8]) != "zip":
        raise DataError(f"{path} is not a STRIP profile: expected an .npz archive saved after STRIP calibration", fixed_by=("profile",))
    archive = safety.scan_zip(data, str(path), error=DataError, broken=DataError)
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
    return _profile_from(meta, overlays, clean, path)


def _profile_from(meta: Any, overlays: np.ndarray, clean: np.ndarray, path: Path) -> StripProfile:
    def bad(what: str) -> DataError:
        return DataError(f"{path}: {what} (not a STRIP profile saved by this version of TrojanScope?)")

    if not isinstance(meta, dict) or meta.get("format") != PROFILE_FORMAT:
        raise bad("missing the STRIP profile marker")
    if meta.get("version") != PROFILE_VERSION:
        raise bad(f"profile version {meta.get('version')!r}, expected {PROFILE_VERSION}")

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
        notes=[str(x) for x in notes] if isinstance(notes, list) else [],
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
    loaded: LoadedModel,
    clean: DataSource,
    n_overlays: int = DEFAULT_OVERLAYS,
    frr: float = DEFAULT_FRR,
    seed: int = DEFAULT_SEED,
    weights: BlendWeights = BlendWeights(),
    scale: str = "auto",
    max_clean: int = DEFAULT_MAX_CLEAN,
    chunk: Optional[int] = None,
) -> Job[StripProfile]:
    """Draw N overlays from clean data and set the threshold from the other clean images.

    One seeded permutation of the clean set decides everything: its first N
    readable images are the overlays, the next ``max_clean`` are calibrated
    on, so overlays never blend with themselves and a set sorted by class is
    still sampled evenly. Memory holds at most N + ``max_clean`` (+N spare for
    unreadable files) images.
    """
    if n_overlays < 1:
        raise DataError(f"the number of overlays must be at least 1; received {n_overlays}")
    if not 0.0 < frr < 0.5:
        raise DataError(f"false rejection rate must be between 0 and 0.5; received {frr}")
    from core.evaluate import choose_scale

    yield Progress(None, "Choosing the input scale")
    scale, scale_note = choose_scale(loaded, clean, scale)
    shape = loaded.input_shape
    rng = np.random.default_rng(seed)
    rank = np.empty(clean.count, np.int64)
    rank[rng.permutation(clean.count)] = np.arange(clean.count)
    keep_below = n_overlays + max_clean + n_overlays  # spare ranks absorb unreadable files

    kept_x, kept_rank, skipped = [], [], []
    seen = 0
    for batch in clean.batches(shape, 256):
        skipped.extend(batch.skipped)
        if len(batch.x):
            mask = rank[batch.indices] < keep_below
            kept_x.append(batch.x[mask])
            kept_rank.append(rank[batch.indices][mask])
        seen += len(batch.x) + len(batch.skipped)
        yield Progress(0.2 * seen / max(clean.count, 1), f"Reading clean images: {seen}/{clean.count}")
    if not kept_x or sum(len(r) for r in kept_rank) == 0:
        raise DataError(f"{clean.path}: none of its {clean.count} items could be read")
    x = np.concatenate(kept_x)
    order = np.argsort(np.concatenate(kept_rank), kind="stable")
    x = x[order]
    notes = [scale_note]
    if len(x) < n_overlays + 2:
        raise DataError(
            f"{clean.path}: STRIP needs more than {n_overlays} readable clean images for {n_overlays} overlays "
            f"(found {len(x)}): lower the number of overlays"
        )
    overlays = np.ascontiguousarray(x[:n_overlays])
    calib = x[n_overlays : n_overlays + max_clean]
    if len(calib) < 20:
        calib = x[: n_overlays + max_clean]
        notes.append(f"only {len(x)} clean images: calibrated on all of them, overlays included")
    pixel_max = pixel_max_of(x)
    kernel = StripKernel(loaded, overlays, weights, scale, pixel_max)
    step = max(1, (chunk or chunk_for(shape)) // n_overlays)
    entropies = []
    for start in range(0, len(calib), step):
        e, _ = kernel(calib[start : start + step])
        entropies.append(e)
        done = min(start + step, len(calib))
        yield Progress(0.2 + 0.8 * done / len(calib), f"Calibrating: {done}/{len(calib)} clean images x {n_overlays} overlays")
    clean_entropies = np.concatenate(entropies)
    threshold, mean, std, empirical = fit_threshold(clean_entropies, frr)
    if skipped:
        notes.append(f"{len(skipped)} clean file(s) skipped")
    profile = StripProfile(
        overlays=overlays.astype(np.float32),
        weights=weights,
        scale=scale,
        pixel_max=pixel_max,
        threshold=threshold,
        frr=float(frr),
        fit_mean=mean,
        fit_std=std,
        empirical_threshold=empirical,
        clean_entropies=clean_entropies,
        model_sha256=loaded.summary.sha256,
        num_classes=loaded.num_classes,
        input_shape=tuple(shape),
        seed=int(seed),
        notes=notes,
        skipped=skipped,
    )
    yield Progress(1.0, f"Calibrated: threshold {threshold:.4f} bits at FRR {frr:.2%} (empirical {empirical:.4f})")
    return profile


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
