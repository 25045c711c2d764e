"""Feature-space outliers: flag inputs the model files under a class they do not resemble.

A backdoor teaches the network a shortcut: triggered inputs reach the
target class through features clean images of that class never produce, so
in the penultimate layer they sit apart from the clean cluster of the class
they are assigned to (the separation behind activation clustering, Chen et
al. 2019, spectral signatures, Tran et al. NeurIPS 2018, and SCAn, Tang et al.
USENIX Security 2021). As an input-level test this is the Mahalanobis
detector of Lee et al., "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks" (NeurIPS 2018):
class-conditional Gaussians with one shared covariance, fitted on clean
images; the score is the distance to the mean of the class the model
predicts, *high* for suspicious inputs. It looks at what the model computes,
not at what the trigger looks like, so large, blended, warped and
sinusoidal triggers are as visible to it as patches.

The story, top-down:

1. :func:`feature_fn` cuts the model at the input of its last weighted
   layer (the classifier head) and returns those features with the
   probabilities, in one pass.
2. :func:`fit_gaussians` fits the per-class means (classes as the model
   predicts them, so no labels are needed) and the shared covariance, shrunk
   towards a scaled identity (``SHRINK``) so that a few hundred images
   suffice for a 128-dimensional layer.
3. :func:`calibrate_on` scores the clean images *out of sample* by K-fold
   cross-fitting (each fold scored by Gaussians fitted on the others), sets
   the threshold with :mod:`core.detect.input_level.calibration` on those scores, and keeps the
   Gaussians fitted on all images for scanning (cross-conformal calibration,
   Vovk 2015: in-sample distances would be too small and the promised FRR
   would not hold).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from core.detect.input_level.calibration import DEFAULT_CONFIDENCE, ThresholdedScores, conservative_threshold
from core.detect.input_level.clean_split import CleanSplit, draw_clean_split
from core.errors import ModelError
from core.intake.inference import scale_factor
from core.jobs import Job, Progress, rescaled
from core.detect.input_level.masking import suspected_targets
from core.intake.models import LoadedModel
from core.intake.tf_env import keras as _keras
from core.intake.tf_env import tf as _tf

DEFAULT_FRR = 0.01
DEFAULT_MAX_CLEAN = 2000
FOLDS = 5  # cross-fitting folds: each Gaussian fit sees 80% of the clean images
SHRINK = 0.1  # covariance shrinkage towards (trace / d) * I
MIN_PER_CLASS = 2  # classes predicted fewer times share the pooled mean of all images
BATCH = 512

_extractors: "weakref.WeakKeyDictionary[Any, Callable]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class FeatureSettings:
    frr: float = DEFAULT_FRR
    confidence: float = DEFAULT_CONFIDENCE
    seed: int = 0
    max_clean: int = DEFAULT_MAX_CLEAN


@dataclass
class Gaussians:
    means: np.ndarray  # (K, d)
    precision: np.ndarray  # (d, d): inverse of the shrunk shared covariance

    def distances(self, feats: np.ndarray, classes: np.ndarray) -> np.ndarray:
        diff = np.asarray(feats, np.float64) - self.means[classes]
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", diff, self.precision, diff), 0.0))


def feature_fn(loaded: LoadedModel) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Compiled ``x_scaled -> (penultimate features, probabilities)``."""
    model = loaded.model
    fn = _extractors.get(model)
    if fn is not None:
        return fn
    keras, tf = _keras(), _tf()
    head = [layer for layer in model.layers if layer.weights]
    if not head:
        raise ModelError(f"{loaded.summary.path}: no weighted layer to take features before")
    cut = keras.Model(model.inputs, [head[-1].input, model.outputs[0]])
    softmax = not loaded.summary.outputs_probabilities

    @tf.function(reduce_retracing=True, autograph=False)
    def fn(x):  # noqa: ANN001
        feats, out = cut(x, training=False)
        return tf.reshape(feats, [tf.shape(feats)[0], -1]), (tf.nn.softmax(out) if softmax else out)

    _extractors[model] = fn
    return fn


def features_of(loaded: LoadedModel, x: np.ndarray, scale: str) -> tuple[np.ndarray, np.ndarray]:
    fn = feature_fn(loaded)
    factor = np.float32(scale_factor(scale))
    parts = [fn(np.ascontiguousarray(x[i : i + BATCH], np.float32) * factor) for i in range(0, len(x), BATCH)]
    if not parts:
        return np.zeros((0, 0)), np.zeros((0, loaded.num_classes), np.float32)
    return np.concatenate([np.asarray(f, np.float64) for f, _ in parts]), np.concatenate([np.asarray(p) for _, p in parts])


def fit_gaussians(feats: np.ndarray, classes: np.ndarray, num_classes: int) -> Gaussians:
    """Per-class means and the inverse of the shared, shrunk covariance (Lee et al.'s tied LDA model)."""
    feats = np.asarray(feats, np.float64)
    pooled = feats.mean(axis=0)
    means = np.tile(pooled, (num_classes, 1))
    centred = feats - pooled
    for k in range(num_classes):
        members = classes == k
        if members.sum() >= MIN_PER_CLASS:
            means[k] = feats[members].mean(axis=0)
            centred[members] = feats[members] - means[k]
    cov = centred.T @ centred / max(len(feats) - 1, 1)
    d = cov.shape[0]
    target = np.trace(cov) / d if d else 1.0
    shrunk = (1.0 - SHRINK) * cov + SHRINK * max(target, 1e-12) * np.eye(d)
    return Gaussians(means, np.linalg.pinv(shrunk, hermitian=True))


def cross_fitted_scores(feats: np.ndarray, classes: np.ndarray, num_classes: int, folds: int = FOLDS) -> np.ndarray:
    """Each image's distance under Gaussians fitted without its fold (out of sample)."""
    n = len(feats)
    fold = np.arange(n) % folds  # the split is already a seeded permutation
    out = np.empty(n)
    for f in range(folds):
        held = fold == f
        g = fit_gaussians(feats[~held], classes[~held], num_classes)
        out[held] = g.distances(feats[held], classes[held])
    return out


@dataclass
class FeatureProfile(ThresholdedScores):
    means: np.ndarray
    precision: np.ndarray
    scale: str
    threshold: float  # distance above it is flagged
    frr: float
    confidence: float
    clean_scores: np.ndarray  # cross-fitted clean distances
    model_sha256: str
    num_classes: int
    input_shape: tuple[int, int, int]
    notes: list[str] = field(default_factory=list)

    method = "features"
    tail = "high"

    def score_fn(self, loaded: LoadedModel) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        g = Gaussians(self.means, self.precision)

        def score(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            feats, probs = features_of(loaded, x, self.scale)
            return (g.distances(feats, probs.argmax(axis=1)) if len(x) else np.zeros(0)), probs

        return score

    def metadata(self) -> dict[str, Any]:
        return {**self.shared_metadata(), "pixel_max": 255.0, "folds": FOLDS, "shrink": SHRINK}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"clean_scores": np.asarray(self.clean_scores, np.float64), "means": self.means, "precision": self.precision}


@dataclass
class TargetFeatureProfile(FeatureProfile):
    """The same distances, spent only on inputs the model sends to a suspected target; 0 for the others.

    A backdoor succeeds only where the model answers its target, so once the
    verdict names one the false-rejection budget is best spent there: at 1%
    of all clean images the threshold is about the 95th percentile of the
    target's own clean distances rather than the 99.5th of everyone's. On the
    zoo's WaNet that takes the residual attack success from 54.6% to 11.3%
    (docs/scan.md). The untargeted detector stays in ``combined`` in case the
    verdict named the wrong class.
    """

    targets: tuple[int, ...] = ()

    method = "target_features"

    def score_fn(self, loaded: LoadedModel) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        every = super().score_fn(loaded)

        def score(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            s, probs = every(x)
            return (np.where(np.isin(probs.argmax(axis=1), self.targets), s, 0.0) if len(x) else s), probs

        return score

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "classes": list(self.targets)}


def calibrate(loaded: LoadedModel, clean: Any, settings: FeatureSettings = FeatureSettings(), scale: str = "auto") -> Job[FeatureProfile]:
    split = yield from rescaled(draw_clean_split(loaded, clean, 0, settings.max_clean, settings.seed, scale), 0.0, 0.3)
    return (yield from rescaled(calibrate_on(loaded, split, settings), 0.3, 1.0))


def calibrate_on(loaded: LoadedModel, split: CleanSplit, settings: FeatureSettings, frr: Optional[float] = None,
                 confidence: Optional[float] = None, targets: tuple[int, ...] = ()) -> Job[FeatureProfile]:
    """Calibrate on an already drawn split; with ``targets``, only inputs sent to them are scored (TargetFeatureProfile)."""
    frr = settings.frr if frr is None else frr
    confidence = settings.confidence if confidence is None else confidence
    yield Progress(0.0, f"Feature space: reading the penultimate layer of {len(split.calibration)} clean images")
    feats, probs = features_of(loaded, split.calibration, split.scale)
    classes = probs.argmax(axis=1)
    yield Progress(0.5, f"Feature space: {feats.shape[1]} features, cross-fitting {FOLDS} folds")
    scores = cross_fitted_scores(feats, classes, loaded.num_classes)
    notes = list(split.notes)
    if targets:
        targets = suspected_targets(targets, loaded.num_classes, "feature space on the suspected targets")
        scores = np.where(np.isin(classes, targets), scores, 0.0)
        notes.append(f"feature space on the suspected targets {list(targets)}: {int(np.isin(classes, targets).sum())} of "
                     f"{len(classes)} clean images are sent to them")
    full = fit_gaussians(feats, classes, loaded.num_classes)
    cal = conservative_threshold(scores, frr, confidence, "high")
    kind = TargetFeatureProfile if targets else FeatureProfile
    extra = {"targets": targets} if targets else {}
    profile = kind(
        means=full.means, precision=full.precision, scale=split.scale, threshold=cal.threshold, frr=float(frr),
        confidence=float(confidence), clean_scores=scores, model_sha256=loaded.summary.sha256, num_classes=loaded.num_classes,
        input_shape=tuple(loaded.input_shape), notes=notes + ([cal.note] if cal.note else []), **extra,
    )
    what = "Feature space on the suspected targets" if targets else "Feature space"
    yield Progress(1.0, f"{what} calibrated: distance above {cal.threshold:.3f} is flagged, {cal.estimate.describe()}")
    return profile
