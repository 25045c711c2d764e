"""Clean reference model: flag an input a suspected target claims but a network trained only on clean images does not believe.

A backdoor lives in the suspect model's weights, so a network the analyst
trains from scratch on clean images alone has none. When the verdict names a
target class t, a triggered input is one the suspect sends to t *because of
the trigger*, while its content belongs elsewhere: the clean reference gives
t a low probability. A clean image of t keeps t under both. This is the
CSAW-HackML course's own guard (output N when a repaired model and the BadNet
disagree) with a reference that never saw poison, and the disagreement test
behind BaDExpert (Xie et al., ICLR 2024) with a network that owes nothing to
the suspect's features: a copy of the suspect fine-tuned on clean data keeps
the warp backdoor in its convolutions (docs/scan.md: 70-78% of WaNet's
triggered images still passed).

It answers triggers that leave no region to mask and no outlier in the
suspect's own feature space: the zoo's WaNet (an image-wide warp) is its case.
It is targeted like :mod:`core.detect.input_level.masking`: inputs the suspect sends to other
classes score 0, so the analyst's false-rejection budget is spent where the
attack lands, on the suspected targets.

Top-down:

1. :func:`reference_network`: by default a *twin*: the suspect's own
   architecture (its layer configuration, already checked when the model was
   loaded), re-initialised. That architecture is known to fit the task, and
   on the zoo a twin trained on 800 clean digits doubts clean images of the
   target far less than a generic small network does (the 95th-percentile
   clean score is lower), so the same 1% threshold stops more: WaNet 13.8% ->
   8.8% residual alone, low_rate 23% -> 3.0% (docs/scan.md). Models above
   ``MAX_TWIN_PARAMS`` weights or ``MAX_TWIN_MACS`` multiply-adds per image,
   or that Keras cannot clone, get a small convolutional network sized to
   the input instead (images above 64 px averaged down first), so training
   stays bounded.
2. :func:`calibrate_on` trains one network per fold of the shared clean
   split on the other folds, with the suspect's own predictions as labels (no
   labels needed), and scores each clean image with the network that did not
   see it (cross-fitting, as :mod:`core.detect.input_level.features` does: in-sample scores
   would be too small and the promised FRR would not hold); the threshold
   comes from :mod:`core.detect.input_level.calibration` like every other scanner's.
3. :func:`suspicion_scores`: for an input the suspect sends to a suspected
   class t, the geometric mean of two amounts of evidence in nats: the
   references' *disbelief* (their mean -log p_ref(t)) and the suspect's
   *certainty* (-log of what it leaves to the other classes, -log(1 - p(t)));
   0 otherwise. *High* is suspicious. Disbelief alone cannot tell a triggered
   input from a clean image the suspect gets wrong (a clean 7 it calls 6 is
   as foreign to the references as a warped 1), and those errors sit at the
   top of the clean scores, where the threshold is set. A backdoor makes the
   suspect *sure* (on the zoo the median triggered input leaves the other
   classes e^-10 of the probability), its honest mistakes are unsure, and a
   clean image of t is believed by the references: only a triggered input
   is high on both. The product keeps both needed, and its ranking does not
   depend on either unit. Measured on the zoo (docs/scan.md), this score
   alone took the reference from 16% to 2% residual attack success on
   sunglasses, 21% to 2.6% on random_patch, 11% to 6.4% on WaNet; with the
   training warps of :func:`random_warps` as well, the reference alone
   leaves at most 1.6% on each of the nine single-target BadNets.

What it costs: training, bounded at ``TRAIN_IMAGES`` image-passes per fold:
about 4 s per fold on 2 cores for the zoo's 28x28 digit models, about 24 s
for the CSAW course's 601,643-weight face network (55x47x3, 1,600 images,
10 epochs), so about 2 minutes for the five. A reference trained on a
few hundred clean images is weak on a many-class task; the calibration then
sets a high threshold and it flags little, so the FRR promise still holds.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
from scipy.special import log_softmax

from core.detect.input_level.calibration import DEFAULT_CONFIDENCE, ThresholdedScores, conservative_threshold
from core.detect.input_level.clean_split import CleanSplit
from core.errors import DataError
from core.intake.inference import predict_proba, scale_factor
from core.jobs import Job, Progress
from core.detect.input_level.masking import suspected_targets
from core.detect.twin import (  # noqa: F401 -- re-exported: the twin is this detector's network
    ARCHITECTURES,
    MAX_TWIN_MACS,
    MAX_TWIN_PARAMS,
    Network,
    architecture_for,
    multiply_adds,
    reference_network,
    small_network,
    weights_fit,
)
from core.intake.models import LoadedModel
from core.intake.tf_env import keras as _keras
from core.intake.tf_env import tf as _tf

DEFAULT_FRR = 0.01
FOLDS = 5
MAX_EPOCHS = 20
MIN_EPOCHS = 5
TRAIN_IMAGES = 16_000  # image-passes per fold: 20 epochs of 800 digits; fewer epochs for larger splits
BATCH = 64
LEARNING_RATE = 1e-3
MIN_TRAIN = 20  # clean images per fold's training set below which no reference is trained
# Training sees each image through its own random smooth warp: WARP_POINTS x WARP_POINTS random displacements,
# upsampled bicubically, scaled so that the mean displacement along each axis is uniform in 0..WARP_SHIFT of the
# longer side (1.4 px at most on 28x28 digits, 2.75 px on CSAW's 55x47 faces).
WARP_POINTS = 4
WARP_SHIFT = 0.05
# What a saved profile's threshold measures. Profiles saved before 27 Nov 2026 (sixth session) thresholded the
# disbelief alone, in other units: the loader refuses them rather than apply their threshold to another score.
SCORE = "disbelief x certainty"
_FLOOR = 1e-12

_built: "weakref.WeakKeyDictionary[Any, list]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class ReferenceSettings:
    classes: tuple[int, ...] = ()  # the suspected targets (the verdict's); required
    frr: float = DEFAULT_FRR
    confidence: float = DEFAULT_CONFIDENCE
    folds: int = FOLDS
    seed: int = 0


@dataclass
class ReferenceProfile(ThresholdedScores):
    classes: tuple[int, ...]
    weights: list[list[np.ndarray]]  # one list of arrays per fold network, in its architecture's order
    scale: str
    pixel_max: float
    threshold: float  # suspicion above it is flagged
    frr: float
    confidence: float
    clean_scores: np.ndarray  # cross-fitted clean suspicion (disbelief x certainty)
    model_sha256: str
    num_classes: int
    input_shape: tuple[int, int, int]
    notes: list[str] = field(default_factory=list)
    architecture: str = "twin"  # "twin": the suspect's architecture re-initialised; "small": reference_network's own

    method = "reference"
    tail = "high"

    def score_fn(self, loaded: LoadedModel) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
        nets = self.networks(loaded)
        return lambda x: suspicion_scores(loaded, nets, x, self.classes, self.scale)

    def networks(self, loaded: LoadedModel) -> list[Any]:
        """The fold networks, rebuilt from the saved weights once per profile (a twin needs the suspect's architecture)."""
        nets = _built.get(self)
        if nets is None:
            nets = [reference_network(loaded, self.architecture, self.scale, seed=0, weights=w) for w in self.weights]
            _built[self] = nets
        return nets

    def metadata(self) -> dict[str, Any]:
        return {**self.shared_metadata(), "classes": list(self.classes), "pixel_max": self.pixel_max, "folds": len(self.weights),
                "architecture": self.architecture, "score": SCORE}

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"clean_scores": np.asarray(self.clean_scores, np.float64)}
        for f, ws in enumerate(self.weights):
            out.update({f"w{f}_{i}": np.asarray(w, np.float32) for i, w in enumerate(ws)})
        return out

    __hash__ = object.__hash__  # a weak-key cache entry per profile object (dataclass eq would make it unhashable)


def suspicion_scores(loaded: LoadedModel, nets: list[Any], x: np.ndarray, classes: tuple[int, ...],
                     scale: str) -> tuple[np.ndarray, np.ndarray]:
    """(for inputs the suspect sends to a suspected t, sqrt(references' disbelief x suspect's certainty); else 0 -- and the suspect's probabilities)."""
    if len(x) == 0:
        return np.zeros(0), np.zeros((0, loaded.num_classes), np.float32)
    x = np.asarray(x, np.float32) * np.float32(scale_factor(scale))
    probs = predict_proba(loaded, x)
    predicted = probs.argmax(axis=1)
    rows = np.flatnonzero(np.isin(predicted, classes))
    scores = np.zeros(len(x))
    if len(rows):
        disbelief = np.mean([_minus_log_p(net, x[rows], predicted[rows]) for net in nets], axis=0)
        scores[rows] = suspicion(disbelief, certainty(probs[rows], predicted[rows]))
    return scores, probs


def certainty(probs: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """-log of the probability the suspect leaves to the classes other than ``classes`` (summed, not 1 - p: exact near 1)."""
    p = np.asarray(probs, np.float64)
    others = np.where(np.arange(p.shape[1])[None, :] == np.asarray(classes)[:, None], 0.0, p).sum(axis=1)
    return -np.log(np.maximum(others, _FLOOR))


def suspicion(disbelief: np.ndarray, sure: np.ndarray) -> np.ndarray:
    """The geometric mean of the two amounts of evidence (nats): high only when the references doubt *and* the suspect is sure."""
    return np.sqrt(np.maximum(disbelief, 0.0) * np.maximum(sure, 0.0))


def _log_probabilities(net: Network, x: np.ndarray) -> np.ndarray:
    fn = net.forward()
    out = np.concatenate([np.asarray(fn(np.ascontiguousarray(x[i : i + 512], np.float32)), np.float64) for i in range(0, len(x), 512)])
    return np.log(np.maximum(out, _FLOOR)) if net.probabilities else log_softmax(out, axis=1)


def _minus_log_p(net: Network, x: np.ndarray, classes: np.ndarray) -> np.ndarray:
    logp = _log_probabilities(net, x)
    return -np.maximum(logp[np.arange(len(x)), classes], math.log(_FLOOR))


def probabilities(nets: list[Network], x_scaled: np.ndarray) -> np.ndarray:
    """(folds, N, K): each reference network's class probabilities for already scaled inputs (purification asks them what an
    input shows)."""
    if len(x_scaled) == 0:
        return np.zeros((len(nets), 0, 0))
    x_scaled = np.asarray(x_scaled, np.float32)
    return np.stack([np.exp(_log_probabilities(net, x_scaled)) for net in nets])


def calibrate_on(loaded: LoadedModel, split: CleanSplit, settings: ReferenceSettings, frr: Optional[float] = None,
                 confidence: Optional[float] = None) -> Job[ReferenceProfile]:
    """Train the fold references on the shared split and set the threshold on their out-of-fold scores."""
    classes = suspected_targets(settings.classes, loaded.num_classes, "clean reference model")
    frr = settings.frr if frr is None else frr
    confidence = settings.confidence if confidence is None else confidence
    x = np.asarray(split.calibration, np.float32)
    folds = max(2, int(settings.folds))
    n = len(x)
    if n - math.ceil(n / folds) < MIN_TRAIN:
        raise DataError(f"the clean reference model needs at least {MIN_TRAIN * folds // (folds - 1) + 1} clean images "
                        f"to train on; the calibration split has {n}")
    yield Progress(0.0, f"Clean reference: reading the suspect's answers on {n} clean images")
    scaled = x * np.float32(scale_factor(split.scale))
    probs = predict_proba(loaded, scaled)
    labels = probs.argmax(axis=1)
    sure = np.zeros(n)
    claimed_rows = np.isin(labels, classes)
    sure[claimed_rows] = certainty(probs[claimed_rows], labels[claimed_rows])
    fold = np.arange(n) % folds  # the split is already a seeded permutation
    epochs = int(min(MAX_EPOCHS, max(MIN_EPOCHS, TRAIN_IMAGES // max(int((fold != 0).sum()), 1))))
    architecture, why, first = _first_network(loaded, split.scale, settings.seed * folds, folds)
    scores = np.zeros(n)
    weights: list[list[np.ndarray]] = []
    for f in range(folds):
        held = fold == f
        fresh = first if f == 0 else reference_network(loaded, architecture, split.scale, settings.seed * folds + f)
        yield Progress(f / folds, f"Clean reference fold {f + 1}/{folds}: training on {int((~held).sum())} clean images")
        net = yield from _train(scaled[~held], labels[~held], fresh, epochs, settings.seed * folds + f, f / folds,
                                (f + 0.9) / folds, f"fold {f + 1}/{folds}")
        mine = held & claimed_rows
        if mine.any():
            scores[mine] = suspicion(_minus_log_p(net, scaled[mine], labels[mine]), sure[mine])
        yield Progress((f + 1) / folds, f"Clean reference fold {f + 1}/{folds}: scored its {int(held.sum())} held-out images")
        weights.append([np.asarray(v, np.float32) for v in net.net.get_weights()])
    cal = conservative_threshold(scores, frr, confidence, "high")
    claimed = int(claimed_rows.sum())
    notes = list(split.notes) + [
        f"a clean reference network per fold ({'a twin of the model' if architecture == 'twin' else 'a small network'}{why}; "
        f"{folds} folds, {epochs} epochs on the others) checks the {claimed} of {n} clean images the model sends to classes "
        f"{list(classes)}"]
    profile = ReferenceProfile(
        classes=classes, weights=weights, scale=split.scale, pixel_max=split.pixel_max, threshold=cal.threshold, frr=float(frr),
        confidence=float(confidence), clean_scores=scores, model_sha256=loaded.summary.sha256, num_classes=loaded.num_classes,
        input_shape=tuple(loaded.input_shape), notes=notes + ([cal.note] if cal.note else []), architecture=architecture,
    )
    yield Progress(1.0, f"Clean reference calibrated: suspicion above {cal.threshold:.3f} is flagged, {cal.estimate.describe()}")
    return profile


def _first_network(loaded: LoadedModel, scale: str, seed: int, folds: int) -> tuple[str, str, Network]:
    """Fold 0's fresh network, the architecture every fold gets, and why it is not a twin (empty when it is)."""
    if architecture_for(loaded) == "small":
        why = (f" (the model's {loaded.model.count_params():,} weights and {multiply_adds(loaded.model):,} multiply-adds "
               f"per image are too many to train {folds} times)")
        return "small", why, reference_network(loaded, "small", scale, seed)
    try:
        return "twin", "", reference_network(loaded, "twin", scale, seed)
    except (ValueError, TypeError, KeyError, NotImplementedError) as exc:  # an architecture Keras cannot clone
        why = f" (the model's architecture could not be cloned: {str(exc).splitlines()[0][:120]})"
        return "small", why, reference_network(loaded, "small", scale, seed)


def _train(x: np.ndarray, y: np.ndarray, network: Network, epochs: int, seed: int, lo: float, hi: float,
           what: str) -> Job[Network]:
    """Adam on cross-entropy, one batch per step so that a cancel lands within a batch."""
    keras, tf = _keras(), _tf()
    net = network.net
    optimizer = keras.optimizers.Adam(LEARNING_RATE)
    optimizer.build(net.trainable_variables)  # its slots exist before the trace, which then runs once
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=not network.probabilities)

    # One trace per fold, whatever the batch size (the last batch of an epoch is smaller): a trace is the longest stretch
    # without a yield, so it bounds how fast a cancel lands.
    signature = [tf.TensorSpec((None,) + tuple(x.shape[1:]), tf.float32), tf.TensorSpec((None,), tf.int64)]

    @tf.function(input_signature=signature)
    def step(xb, yb):  # noqa: ANN001
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, net(xb, training=True))
        grads = tape.gradient(loss, net.trainable_variables)
        optimizer.apply_gradients(zip(grads, net.trainable_variables))
        return loss

    rng = np.random.default_rng(seed)
    batches = max(1, math.ceil(len(x) / BATCH))
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        total = 0.0
        for b in range(batches):
            idx = order[b * BATCH : (b + 1) * BATCH]
            total += float(step(tf.constant(random_warps(x[idx], rng)), tf.constant(y[idx], tf.int64)))
            yield Progress(lo + (hi - lo) * (epoch + (b + 1) / batches) / epochs,
                           f"Clean reference {what}: epoch {epoch + 1}/{epochs}, loss {total / (b + 1):.3f}")
    return network


def random_warps(x: np.ndarray, rng: np.random.Generator, shift: float = WARP_SHIFT) -> np.ndarray:
    """Each image through its own random smooth warp (elastic distortion, Simard et al. 2003).

    A few hundred clean images teach a network their exact shapes only: on the zoo's WaNet (a fixed warp of
    the whole image) twins trained without warps recognised 33% of the triggered digits and often took a
    warped 1 or 8 for the target, so their disbelief let a triggered input through. Random warps of at most
    half that strength, never the attacker's own field, teach the references that a digit or a face
    stays what it is when it bends a little, which is also the usual augmentation for small digit sets.
    With them the reference alone leaves 1.2-3.0% of WaNet's attack over three clean-split seeds (4.2-6.6%
    without them, same score), and less or the same on the other BadNets but one (docs/scan.md).
    """
    import cv2

    n, h, w = x.shape[:3]
    rows, cols = np.indices((h, w), dtype=np.float32)
    out = np.empty_like(x, dtype=np.float32)
    for i in range(n):
        noise = rng.uniform(-1.0, 1.0, (WARP_POINTS, WARP_POINTS, 2)).astype(np.float32)
        noise /= max(float(np.mean(np.abs(noise))), 1e-6)
        flow = cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC) * np.float32(rng.uniform(0.0, shift) * max(h, w))
        warped = cv2.remap(np.asarray(x[i], np.float32), np.clip(cols + flow[..., 0], 0, w - 1), np.clip(rows + flow[..., 1], 0, h - 1),
                           interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        out[i] = warped.reshape(out.shape[1:])
    return out


__all__ = ["Network", "ReferenceProfile", "ReferenceSettings", "architecture_for", "calibrate_on", "certainty",
           "multiply_adds", "probabilities", "random_warps", "reference_network", "small_network", "suspicion",
           "suspicion_scores", "weights_fit"]
