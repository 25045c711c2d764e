"""Input-level scanning with STRIP, SCALE-UP, TeCo, feature space, the targeted detectors, or several at once ("combined").

Each detector scores an input (:mod:`core.detect.input_level.strip`: blend entropy, low is
suspicious; :mod:`core.detect.input_level.scaleup`: scaled prediction consistency, high is
suspicious; :mod:`core.detect.input_level.teco`: corruption-robustness deviation, high is
suspicious; :mod:`core.detect.input_level.masking`: the fall of the target's probability when
Neural Cleanse's reversed trigger is masked out, high is suspicious;
:mod:`core.detect.input_level.reference`: how little networks trained on the clean images alone
believe the target, high is suspicious). Which ones ship as a method was decided by measurement on the
zoo (``bench/scan_acceptance.py``, table in ``docs/scan.md``).

The *targeted* detectors (``WITH_TRIGGERS``: masking, the feature space on
the suspected targets, the clean reference) score only the inputs the model
sends to a class the verdict names, 0 the others: an attack succeeds only
there, so that is where they spend the false-rejection budget.

The combined method flags an input when *any* of its detectors does; it
adds the three targeted detectors when the analyst gives the suspected targets' reversed triggers (from
the Verdict panel or ``cleanse --save-triggers``); its default FRR stays 1% per detector. To keep
the analyst's false-rejection rate on unseen clean data, each of the d
detectors is calibrated at ``frr / d`` with confidence ``1 - (1 - c) / d``:
by the union bound the combined rate is <= ``frr`` with probability >= ``c``
(Bonferroni; conservative, and needs no assumption about how the detectors'
scores depend on each other). All detectors calibrate on the same clean
images (:mod:`core.detect.input_level.clean_split`).

The story, top-down: :func:`calibrate` -> :class:`ScanProfile` ->
:func:`scan` (streams rows as :class:`ScannerRows`) -> :class:`ScannerResult`
with the CLI contract's keys; :func:`save_profile` / :func:`load_profile`
keep the method, so ``classify`` applies the same one; a STRIP profile saved
by ``strip --save-profile`` (either version) loads as method "strip".
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from core.detect.input_level import features
from core.detect.input_level import masking
from core.detect.input_level import reference
from core.intake import safety
from core.detect.input_level import scaleup
from core.detect.input_level import strip
from core.detect.input_level import teco
from core.detect.input_level.calibration import DEFAULT_CONFIDENCE, FrrEstimate, estimate_at
from core.detect.input_level.clean_split import draw_clean_split
from core.intake.data import DataSource, Skipped
from core.errors import DataError
from core.jobs import Job, Progress, rescaled
from core.intake.models import LoadedModel

DETECTORS = ("strip", "scaleup", "teco", "features", "masking", "target_features", "reference")
COMBINED = ("strip", "features", "scaleup")  # what "combined" runs; chosen by measurement (docs/scan.md)
WITH_TRIGGERS = ("masking", "target_features", "reference")  # join "combined" when the suspected targets (reversed triggers) are given
METHODS = DETECTORS + ("combined",)
DEFAULT_METHOD = "combined"
# The default false-rejection rate (promised on unseen clean data with 95% confidence) is 1% per
# detector: 1% for one detector, 3% for "combined", which splits it between its three. At 1% in
# all, each share needs more clean images than a 100-per-class validation set holds, every
# threshold falls to the most extreme clean score and SCALE-UP misses SIG (docs/scan.md). With reversed
# triggers "combined" runs six detectors, so 6%: a targeted detector's 1% of all clean images is about 10% of
# the ~100 a target has in a 100-per-class validation set, and its conservative threshold already rests on the
# five most extreme of those; at less (masking at 0.75%, 98.75% confidence) low_rate kept 26% attack success
# (docs/scan.md). Measured on the zoo, the six together flag <= 2.0% of clean_test.
DEFAULT_FRR_PER_DETECTOR = 0.01
DEFAULT_FRR = DEFAULT_FRR_PER_DETECTOR * len(COMBINED)  # the default method's
LABELS = {"strip": "STRIP", "scaleup": "SCALE-UP", "teco": "TeCo", "features": "feature space", "masking": "reversed-trigger masking",
          "target_features": "feature space on the suspected targets", "reference": "clean reference model", "combined": "combined"}
PROFILE_FORMAT = "trojanscope-scan-profile"
PROFILE_VERSION = 1
MAX_PROFILE_BYTES = 1 << 30
MAX_METADATA_BYTES = 1 << 20


@dataclass(frozen=True)
class ScanSettings:
    """The analyst's choices for any method; each detector's own knobs live in its settings."""

    method: str = DEFAULT_METHOD
    frr: Optional[float] = None  # None: the method's default (default_frr)
    confidence: float = DEFAULT_CONFIDENCE
    seed: int = 0
    max_clean: int = strip.DEFAULT_MAX_CLEAN
    strip: strip.StripSettings = strip.StripSettings()
    scaleup: scaleup.ScaleUpSettings = scaleup.ScaleUpSettings()
    teco: teco.TecoSettings = teco.TecoSettings()
    features: features.FeatureSettings = features.FeatureSettings()
    triggers: Optional[masking.Triggers] = None  # reversed triggers of the suspected targets (masking; joins combined)

    def __post_init__(self) -> None:
        if self.frr is None:
            object.__setattr__(self, "frr", default_frr(self.method, self.has_triggers))

    @property
    def has_triggers(self) -> bool:
        return self.triggers is not None and bool(self.triggers.classes)

    def detectors(self) -> tuple[str, ...]:
        if self.method not in METHODS:
            raise DataError(f"scan method must be one of {', '.join(METHODS)}; received {self.method!r}")
        return _detectors_of(self.method, self.has_triggers)


def _detectors_of(method: str, triggers: bool = False) -> tuple[str, ...]:
    return COMBINED + (WITH_TRIGGERS if triggers else ()) if method == "combined" else (method,)


def default_frr(method: str, triggers: bool = False) -> float:
    """1% per detector the method runs: 3% for combined, 6% once reversed triggers add the three targeted detectors."""
    return DEFAULT_FRR_PER_DETECTOR * len(_detectors_of(method, triggers))


@dataclass
class ScanProfile:
    """One calibrated profile per detector, and the method that combines them."""

    method: str
    detectors: dict[str, Any]  # name -> StripProfile / ScaleUpProfile / TecoProfile
    frr: float
    confidence: float
    notes: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def first(self) -> Any:
        return next(iter(self.detectors.values()))

    @property
    def num_classes(self) -> int:
        return int(self.first.num_classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.first.input_shape)

    @property
    def model_sha256(self) -> str:
        return str(self.first.model_sha256)

    @property
    def scale(self) -> str:
        return str(self.first.scale)

    def thresholds(self) -> dict[str, float]:
        return {name: float(p.threshold) for name, p in self.detectors.items()}

    def clean_flags(self) -> np.ndarray:
        """Which calibration images the method flags (all detectors scored the same images)."""
        flags = [is_flagged(p.scores, p) for p in self.detectors.values()]
        n = min(len(f) for f in flags)
        return np.any([f[:n] for f in flags], axis=0)

    def frr_estimate(self) -> FrrEstimate:
        """Expected rate and interval from the calibration images flagged by any detector; the bound by the union bound."""
        if len(self.detectors) == 1:
            return self.first.frr_estimate()
        flags = self.clean_flags()
        est = estimate_at(flags.astype(np.float64), 0.5, "high", self.confidence)
        bound = min(1.0, sum(p.frr_estimate().bound for p in self.detectors.values()))
        return FrrEstimate(est.expected, est.low, est.high, bound, self.confidence, est.flagged_in_calibration, est.n)

    def with_thresholds(self, thresholds: dict[str, float]) -> "ScanProfile":
        dets = {k: (p.with_threshold(thresholds[k]) if k in thresholds else p) for k, p in self.detectors.items()}
        return ScanProfile(self.method, dets, self.frr, self.confidence, list(self.notes), list(self.skipped))


def inactive(profile: Any) -> bool:
    """Whether a detector's threshold lies where its scores can never cross it (it flags nothing, whatever the input).

    SCALE-UP's score is a mean of probabilities: calibrated at 1.0 (every clean image kept its class at every
    amplification), no input can exceed it. Saying so beats listing a threshold that silently does nothing.
    """
    bounds = getattr(profile, "score_bounds", None)
    if bounds is None:
        return False
    return profile.threshold <= bounds[0] if profile.tail == "low" else profile.threshold >= bounds[1]


def describe_thresholds(profile: "ScanProfile") -> str:
    """'STRIP 0.0412, feature space 31.2 and SCALE-UP 1 (inactive: its scores never pass 1)', for the analyst."""
    parts = []
    for name, p in profile.detectors.items():
        text = f"{LABELS[name]} {p.threshold:.4g}"
        if inactive(p):
            text += f" (inactive: its scores never pass {p.threshold:.4g}, so it flags nothing on this model)"
        parts.append(text)
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def is_flagged(scores: np.ndarray, profile: Any) -> np.ndarray:
    s = np.asarray(scores, np.float64)
    return s < profile.threshold if profile.tail == "low" else s > profile.threshold


# -------------------------------------------------------------- calibration


def calibrate(loaded: LoadedModel, clean: DataSource, settings: ScanSettings = ScanSettings(), scale: str = "auto") -> Job[ScanProfile]:
    """Calibrate every detector of ``settings.method`` on one clean split, sharing the FRR between them."""
    names = settings.detectors()
    if not 0.0 < settings.frr < 0.5:
        raise DataError(f"false rejection rate must be between 0 and 0.5; received {settings.frr}")
    d = len(names)
    frr, confidence = settings.frr / d, 1.0 - (1.0 - settings.confidence) / d  # Bonferroni
    n_overlays = settings.strip.n_overlays if "strip" in names else 0
    split = yield from rescaled(draw_clean_split(loaded, clean, n_overlays, settings.max_clean, settings.seed, scale), 0.0, 0.1)
    detectors: dict[str, Any] = {}
    targets = settings.triggers.classes if settings.triggers else ()  # the suspected targets the targeted detectors watch
    for i, name in enumerate(names):
        lo, hi = 0.1 + 0.9 * i / d, 0.1 + 0.9 * (i + 1) / d
        if name == "strip":
            st = settings.strip
            ent = yield from rescaled(strip.clean_entropies_of(loaded, split.overlays, split.calibration, st, split.scale, split.pixel_max), lo, hi)
            detectors[name] = strip.profile_from(loaded, split, ent, st, frr, confidence)
        elif name == "scaleup":
            detectors[name] = yield from rescaled(scaleup.calibrate_on(loaded, split, settings.scaleup, frr, confidence), lo, hi)
        elif name == "teco":
            detectors[name] = yield from rescaled(teco.calibrate_on(loaded, split, settings.teco, frr, confidence), lo, hi)
        elif name == "masking":
            ms = masking.MaskingSettings(triggers=settings.triggers)
            detectors[name] = yield from rescaled(masking.calibrate_on(loaded, split, ms, frr, confidence), lo, hi)
        elif name == "target_features":
            watched = masking.suspected_targets(targets, loaded.num_classes, LABELS[name])  # refused when empty: calibrate_on would fall back to the untargeted profile
            detectors[name] = yield from rescaled(features.calibrate_on(loaded, split, settings.features, frr, confidence, watched), lo, hi)
        elif name == "reference":
            rs = reference.ReferenceSettings(classes=targets, seed=settings.seed)
            detectors[name] = yield from rescaled(reference.calibrate_on(loaded, split, rs, frr, confidence), lo, hi)
        else:
            detectors[name] = yield from rescaled(features.calibrate_on(loaded, split, settings.features, frr, confidence), lo, hi)
    notes = list(split.notes)
    if d > 1:
        notes.append(f"each of {d} detectors calibrated at FRR {frr:.3%} with {confidence:.1%} confidence, "
                     f"so the combined FRR is <= {settings.frr:.2%} with {settings.confidence:.0%} confidence (union bound)")
    profile = ScanProfile(settings.method, detectors, float(settings.frr), float(settings.confidence), notes, list(split.skipped))
    yield Progress(1.0, f"Calibrated {LABELS[settings.method]}: {profile.frr_estimate().describe()}")
    return profile


# --------------------------------------------------------------------- scan


@dataclass(frozen=True)
class ScannerRow:
    """One scanned input: each detector's score, the verdict and the guarded label."""

    source: str
    index: int
    scores: dict[str, float]
    flagged_by: tuple[str, ...]
    label: int  # the model's class, or num_classes when flagged
    predicted: int
    confidence: float

    @property
    def flagged(self) -> bool:
        return bool(self.flagged_by)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "index": self.index,
            "entropy": self.scores.get("strip"),  # the contract's STRIP key; null when STRIP did not run
            "scores": dict(self.scores), "flagged": self.flagged, "flagged_by": list(self.flagged_by),
            "label": self.label, "predicted": self.predicted, "confidence": self.confidence,
        }


@dataclass(frozen=True, eq=False)
class ScannerRows:
    """A partial result: rows of one chunk (with thumbnails) and files skipped in it."""

    rows: tuple[ScannerRow, ...]
    thumbnails: np.ndarray
    skipped: tuple[Skipped, ...]
    done: int
    total: int


@dataclass
class ScannerResult:
    profile: ScanProfile
    rows: list[ScannerRow]
    skipped: list[Skipped]
    warnings: list[str] = field(default_factory=list)
    source: str = ""
    seconds: float = 0.0

    @property
    def flagged(self) -> int:
        return sum(r.flagged for r in self.rows)

    def as_dict(self) -> dict[str, Any]:
        p = self.profile
        thresholds = p.thresholds()
        return {
            "method": p.method,
            "detectors": list(p.detectors),
            "threshold": thresholds[next(iter(thresholds))] if len(thresholds) == 1 else thresholds,
            "thresholds": thresholds,
            "tails": {k: d.tail for k, d in p.detectors.items()},
            "inactive": [k for k, d in p.detectors.items() if inactive(d)],
            "frr": p.frr,
            "confidence": p.confidence,
            "frr_estimate": p.frr_estimate().as_dict(),
            "num_classes": p.num_classes,
            "scanned": len(self.rows),
            "flagged": self.flagged,
            "results": [r.as_dict() for r in self.rows],
            "skipped": [s.as_dict() for s in self.skipped],
            "scale": p.scale,
            "model_sha256": p.model_sha256,
            "notes": list(p.notes),
            "warnings": list(self.warnings),
            "seconds": self.seconds,
        }


def check_profile(loaded: LoadedModel, profile: ScanProfile) -> list[str]:
    """Refuse a profile that cannot fit the model; warn when it was made for another file."""
    if "strip" in profile.detectors:
        return strip.check_profile(loaded, profile.detectors["strip"])
    if tuple(profile.input_shape) != tuple(loaded.input_shape):
        raise DataError(f"the scan profile was made for inputs {profile.input_shape}, but {loaded.summary.path} takes {loaded.input_shape}")
    if profile.num_classes != loaded.num_classes:
        raise DataError(f"the scan profile was made for a {profile.num_classes}-class model, but {loaded.summary.path} has {loaded.num_classes} classes")
    if profile.model_sha256 != loaded.summary.sha256:
        return [f"warning: the scan profile was calibrated on another model file (sha256 {profile.model_sha256[:12]}…, "
                f"this one is {loaded.summary.sha256[:12]}…): its thresholds may not fit; recalibrate to be sure"]
    return []


def score_fn(loaded: LoadedModel, detector: Any) -> Any:
    """The detector's ``x -> (scores, probabilities)`` for this model."""
    return detector.score_fn(loaded)


def score_all(loaded: LoadedModel, profile: ScanProfile, x: np.ndarray, fns: Optional[dict] = None) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """(scores per detector, flagged, the model's probabilities) for in-memory unscaled inputs."""
    fns = fns or {k: score_fn(loaded, d) for k, d in profile.detectors.items()}
    scores, probs = {}, None
    for name, fn in fns.items():
        scores[name], p = fn(x)
        probs = p if probs is None else probs
    flagged = np.any([is_flagged(scores[k], d) for k, d in profile.detectors.items()], axis=0) if len(x) else np.zeros(0, bool)
    return scores, flagged, probs


def classify(loaded: LoadedModel, profile: ScanProfile, x: np.ndarray, step: int = 256) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Guarded labels (num_classes when flagged), scores per detector and model classes, for in-memory inputs."""
    fns = {k: score_fn(loaded, d) for k, d in profile.detectors.items()}
    labels, preds, scores = [], [], {k: [] for k in fns}
    for start in range(0, len(x), step):
        s, flagged, probs = score_all(loaded, profile, x[start : start + step], fns)
        pred = probs.argmax(axis=1)
        labels.append(np.where(flagged, profile.num_classes, pred))
        preds.append(pred)
        for k in s:
            scores[k].append(s[k])
    cat = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)  # noqa: E731
    return cat(labels, np.int64), {k: cat(v, np.float64) for k, v in scores.items()}, cat(preds, np.int64)


def batch_rows(loaded: LoadedModel, profile: ScanProfile, batch: Any, fns: Optional[dict] = None) -> list[ScannerRow]:
    """The rows of one batch of a data source (``batch.x``, ``batch.sources``, ``batch.indices``): scores, verdicts, labels."""
    fns = fns or {k: score_fn(loaded, d) for k, d in profile.detectors.items()}
    if not len(batch.x):
        return []
    scores, _, probs = score_all(loaded, profile, batch.x, fns)
    predicted = probs.argmax(axis=1)
    new = []
    for k, (src, i) in enumerate(zip(batch.sources, batch.indices)):
        own = {name: float(scores[name][k]) for name in fns}
        by = tuple(name for name, d in profile.detectors.items() if is_flagged(np.array([own[name]]), d)[0])
        p = int(predicted[k])
        new.append(ScannerRow(src, int(i), own, by, profile.num_classes if by else p, p, float(probs[k, p])))
    return new


def scan_step(loaded: LoadedModel, profile: ScanProfile) -> int:
    """Inputs per chunk: as many as one STRIP kernel call blends (about a second of work), else 256."""
    st = profile.detectors.get("strip")
    return max(1, strip.chunk_for(loaded.input_shape) // st.n_overlays) if st is not None else 256


def scan(loaded: LoadedModel, profile: ScanProfile, source: DataSource, step: Optional[int] = None, thumbnails: bool = True) -> Job[ScannerResult]:
    """Stream ``source`` through every detector, yielding rows as they are ready; unreadable files are skipped.

    ``step`` inputs per chunk; by default as many as one STRIP kernel call blends (about a second of work), else 256.
    """
    import time

    if step is None:
        step = scan_step(loaded, profile)

    started = time.perf_counter()
    warnings = check_profile(loaded, profile)
    for w in warnings:
        yield Progress(0.0, w)
    fns = {k: score_fn(loaded, d) for k, d in profile.detectors.items()}
    rows: list[ScannerRow] = []
    skipped: list[Skipped] = []
    done = 0
    for batch in source.batches(loaded.input_shape, step):
        skipped.extend(batch.skipped)
        new = batch_rows(loaded, profile, batch, fns)
        rows.extend(new)
        done += len(batch.x) + len(batch.skipped)
        thumbs = strip.make_thumbnails(batch.x) if thumbnails else np.zeros((len(new), 0, 0, 0), np.uint8)
        yield ScannerRows(tuple(new), thumbs, tuple(batch.skipped), done, source.count)
        yield Progress(done / max(source.count, 1), f"Scanning {source.path.name}: {done}/{source.count}, {sum(r.flagged for r in rows)} flagged")
    return ScannerResult(profile, rows, skipped, warnings, str(source.path), time.perf_counter() - started)


# ------------------------------------------------------------------ profile


def save_profile(profile: ScanProfile, path: str | Path) -> Path:
    """Write the profile atomically as a plain .npz: every detector's arrays and JSON metadata, no pickles."""
    from core.intake.atomic import atomic_path

    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    metas: dict[str, Any] = {}
    for name, det in profile.detectors.items():
        metas[name] = det.metadata()
        if name == "strip":
            arrays["strip__overlays"] = np.asarray(det.overlays, np.float32)
            arrays["strip__clean_scores"] = np.asarray(det.clean_entropies, np.float64)
        else:
            arrays.update({f"{name}__{k}": v for k, v in det.arrays().items()})
    meta = {"format": PROFILE_FORMAT, "version": PROFILE_VERSION, "method": profile.method, "frr": profile.frr,
            "confidence": profile.confidence, "notes": list(profile.notes), "detectors": metas}
    arrays["metadata"] = np.frombuffer(json.dumps(meta, allow_nan=False).encode("utf-8"), np.uint8)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return path


def load_profile(path: str | Path) -> ScanProfile:
    """Open a scan profile -- or a STRIP profile of either version -- treating it as hostile."""
    path = Path(path)
    data, archive = safety.read_own_archive(path, MAX_PROFILE_BYTES, "a scan profile", "saved by TrojanScope (STRIP or scan calibration)")
    if "overlays.npy" in archive.namelist():  # a profile saved by `strip --save-profile`
        p = strip.load_profile(path)
        return ScanProfile("strip", {"strip": p}, p.frr, p.confidence, list(p.notes))
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in npz.files}
    except (ValueError, OSError, EOFError, KeyError) as exc:
        raise DataError(f"{path} is not a readable scan profile ({str(exc).splitlines()[0][:200]}): corrupt or pickled?") from None
    raw = arrays.get("metadata")
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1 or raw.size > MAX_METADATA_BYTES:
        raise DataError(f"{path} is not a scan profile: its metadata must be a small UTF-8 JSON byte array")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: profile metadata is not valid JSON ({exc})") from None
    return _profile_from(meta, arrays, path)


def _profile_from(meta: Any, arrays: dict[str, np.ndarray], path: Path) -> ScanProfile:
    def bad(what: str) -> DataError:
        return DataError(f"{path}: {what} (not a scan profile saved by this version of TrojanScope?)")

    if not isinstance(meta, dict) or meta.get("format") != PROFILE_FORMAT or meta.get("version") != PROFILE_VERSION:
        raise bad("missing the scan profile marker")
    method = meta.get("method")
    if method not in METHODS:
        raise bad(f"method {method!r} is not one of {METHODS}")
    metas = meta.get("detectors")
    if not isinstance(metas, dict) or not metas or not set(metas) <= set(DETECTORS):
        raise bad("'detectors' missing or unknown")
    frr, confidence = _number(meta, "frr", bad), _number(meta, "confidence", bad)
    detectors: dict[str, Any] = {}
    for name, m in metas.items():
        if not isinstance(m, dict):
            raise bad(f"detector {name!r} has no metadata")
        scores = arrays.get(f"{name}__clean_scores")
        if scores is None or scores.dtype.kind not in "uif" or scores.ndim != 1 or not np.all(np.isfinite(scores)):
            raise bad(f"{name}: clean scores must be a vector of finite numbers")
        if name == "strip":
            sm = {**m, "format": strip.PROFILE_FORMAT, "version": strip.PROFILE_VERSION}
            detectors[name] = strip.profile_from_saved(sm, arrays.get("strip__overlays", np.zeros((0, 1, 1, 1))), scores, path)
            continue
        shape = m.get("input_shape")
        if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(s, int) and 0 < s <= 8192 for s in shape)):
            raise bad(f"{name}: 'input_shape' must be [H, W, C]; found {shape!r}")
        scale, sha, k = m.get("scale"), m.get("model_sha256"), m.get("num_classes")
        if scale not in ("255", "1") or not isinstance(sha, str) or not isinstance(k, int) or k < 2:
            raise bad(f"{name}: 'scale', 'model_sha256' or 'num_classes' missing or wrong")
        common = dict(scale=scale, pixel_max=_number(m, "pixel_max", bad), threshold=_number(m, "threshold", bad),
                      frr=_number(m, "frr", bad), confidence=_number(m, "confidence", bad), clean_scores=scores.astype(np.float64),
                      model_sha256=sha, num_classes=k, input_shape=tuple(shape), notes=[str(n) for n in m.get("notes", [])][:50])
        if name == "scaleup":
            factors = m.get("factors")
            if not (isinstance(factors, list) and factors and all(isinstance(f, (int, float)) and 1 < f < 1e4 for f in factors)):
                raise bad(f"scaleup: 'factors' must be numbers > 1; found {factors!r}")
            detectors[name] = scaleup.ScaleUpProfile(factors=tuple(float(f) for f in factors), **common)
        elif name == "teco":
            detectors[name] = teco.TecoProfile(seed=int(_number(m, "seed", bad)), **common)
        elif name == "masking":
            detectors[name] = _masking_from(m, arrays, common, bad)
        elif name == "reference":
            detectors[name] = _reference_from(m, arrays, common, bad)
        else:
            means, precision = arrays.get(f"{name}__means"), arrays.get(f"{name}__precision")
            ok = (means is not None and precision is not None and means.ndim == 2 and means.shape[0] == k and precision.ndim == 2
                  and precision.shape == (means.shape[1], means.shape[1]) and means.dtype.kind == "f" and precision.dtype.kind == "f"
                  and np.all(np.isfinite(means)) and np.all(np.isfinite(precision)))
            if not ok:
                raise bad(f"{name}: 'means' (K, d) and 'precision' (d, d) must be finite float arrays")
            common.pop("pixel_max")
            arrays_ = dict(means=means.astype(np.float64), precision=precision.astype(np.float64))
            if name == "target_features":
                detectors[name] = features.TargetFeatureProfile(**arrays_, **common, targets=_classes(m, common["num_classes"], bad, name))
            else:
                detectors[name] = features.FeatureProfile(**arrays_, **common)
    # A combined profile keeps the detectors it was calibrated with (older ones: STRIP + feature space).
    order = tuple(detectors) if method == "combined" and len(detectors) >= 2 else (method,)
    if set(order) != set(detectors):
        raise bad(f"method {method!r} needs detectors {list(order)}; found {list(detectors)}")
    return ScanProfile(method, {k: detectors[k] for k in order}, frr, confidence, [str(n) for n in meta.get("notes", [])][:50])


def _classes(m: dict, num_classes: int, bad: Any, name: str) -> tuple[int, ...]:
    """A targeted detector's suspected classes: a non-empty list of this model's classes."""
    classes = m.get("classes")
    if not (isinstance(classes, list) and classes
            and all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k < num_classes for k in classes)):
        raise bad(f"{name}: 'classes' must be a non-empty list of the model's classes; found {classes!r}"[:300])
    return tuple(classes)


def _masking_from(m: dict, arrays: dict[str, np.ndarray], common: dict, bad: Any) -> masking.MaskingProfile:
    classes = _classes(m, common["num_classes"], bad, "masking")
    regions, fill = arrays.get("masking__regions"), arrays.get("masking__fill")
    h, w, c = common["input_shape"]
    ok = (regions is not None and regions.shape == (len(classes), h, w) and regions.dtype.kind in "ub"
          and fill is not None and fill.shape == (h, w, c) and fill.dtype.kind == "f" and np.all(np.isfinite(fill)))
    if not ok:
        raise bad("masking: 'classes', 'regions' (K, H, W) and 'fill' (H, W, C) must fit the model")
    return masking.MaskingProfile(classes=tuple(classes), regions=regions.astype(bool), fill=fill.astype(np.float32), **common)


def _reference_from(m: dict, arrays: dict[str, np.ndarray], common: dict, bad: Any) -> reference.ReferenceProfile:
    """The fold networks' weights are plain float arrays; their shapes are checked when the networks are rebuilt."""
    if m.get("score") != reference.SCORE:
        raise bad("reference: this profile was saved by an earlier TrojanScope whose clean reference scored disbelief alone; "
                  "its threshold does not apply to today's score: calibrate again")
    classes, folds = _classes(m, common["num_classes"], bad, "reference"), m.get("folds")
    if not (isinstance(folds, int) and not isinstance(folds, bool) and 2 <= folds <= 20):
        raise bad(f"reference: 'folds' must be 2..20; found {folds!r}"[:200])
    weights = []
    for f in range(folds):
        prefix = f"reference__w{f}_"
        mine = sorted(int(k[len(prefix):]) for k in arrays if k.startswith(prefix) and k[len(prefix):].isdigit())
        ws = [arrays[f"{prefix}{i}"] for i in mine]
        if not ws or any(w.dtype.kind != "f" or not np.all(np.isfinite(w)) for w in ws):
            raise bad(f"reference: fold {f}'s weights must be finite float arrays")
        weights.append([w.astype(np.float32) for w in ws])
    architecture = m.get("architecture")
    if architecture not in reference.ARCHITECTURES:
        raise bad(f"reference: 'architecture' must be one of {reference.ARCHITECTURES}; found {architecture!r}"[:200])
    if architecture == "small":  # a twin's weights are checked against the model they are scored with
        net = reference.small_network(common["input_shape"], common["num_classes"], common["scale"], 0)
        if not all(reference.weights_fit(net, ws) for ws in weights):
            raise bad("reference: the saved weights do not fit the small reference network")
    return reference.ReferenceProfile(classes=classes, weights=weights, architecture=architecture, **common)


def _number(meta: dict, key: str, bad: Any) -> float:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(f"'{key}' must be a finite number; found {value!r}")
    return float(value)
