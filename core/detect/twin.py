"""A clean twin of the suspect: its own architecture, trained from scratch on clean images alone.

A backdoor lives in the suspect's weights, so a network the analyst trains
from scratch on clean images has none. Two detectors use one:

- the input-level clean reference (core.detect.input_level.reference) asks
  whether the twin believes what the suspect says about an input;
- the model-level twin comparison (core.detect.model_level.judge, statistic
  ``twin``) runs Neural Cleanse on the twin too: on digits, 8 is the easiest
  class to reach for every network, backdoored or not, and a clean model can
  make one class very easy to reach. What is abnormal is a class far easier
  to reach on the suspect *than on its clean twin* (docs/zoo.md).

By default the twin is the suspect's own architecture (its layer
configuration, already checked when the model was loaded), re-initialised.
Models above ``MAX_TWIN_PARAMS`` weights or ``MAX_TWIN_MACS`` multiply-adds
per image, or that Keras cannot clone, get a small convolutional network
sized to the input instead (images above 64 px averaged down first), so
training stays bounded on a CPU.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from core.errors import DataError
from core.intake.inference import predict_labels, scale_factor
from core.intake.models import LoadedModel
from core.intake.tf_env import keras as _keras
from core.intake.tf_env import tf as _tf
from core.jobs import Job, Progress

SMALLEST_SIDE = 8  # convolution + pooling blocks until the feature map is at most this many pixels a side
MAX_BLOCKS = 4
# Above either bound the suspect's architecture costs too much to train five times on CPU. The CSAW face network
# (601,643 weights, 8.2 million multiply-adds per image) trains in about 24 s per fold on 2 cores.
MAX_TWIN_PARAMS = 2_000_000
MAX_TWIN_MACS = 16_000_000  # multiply-adds per image of the convolution and dense layers
SMALL_SIDE = 64  # the small network first averages larger images down to at most this many pixels a side
ARCHITECTURES = ("twin", "small")
# Distilling the suspect's answers into one twin (the model-level comparison): as many image-passes as one fold of
# the input-level reference, at least 5 and at most 20 epochs.
DISTIL_IMAGES = 16_000
DISTIL_BATCH = 64
DISTIL_LEARNING_RATE = 2e-3
# Random translations while distilling, of up to this share of each side (2 px on 28x28 digits). Measured on the
# zoo's dev half: a twin trained without them is not the reference a suspect trained with augmentation or label
# smoothing deserves -- its 8s are harder to reach, and clean augmented models looked 3-5.6 spreads easier there
# (docs/zoo.md); with them the clean models' statistic fell to 0.9-2.1 and the BadNets' stayed (4.4-7.9).
SHIFT_SHARE = 1 / 14


@dataclass
class Network:
    """A fold's reference network and whether it ends in a softmax (a twin of a model that outputs probabilities)."""

    net: Any
    probabilities: bool
    _fn: Any = field(default=None, repr=False, compare=False)

    def forward(self) -> Callable[[np.ndarray], Any]:
        """The network's inference pass, traced once (an eager call of a small network costs tens of milliseconds in
        Keras's layer dispatch, and purification asks the five references about every filled image)."""
        if self._fn is None:
            tf, net = _tf(), self.net

            @tf.function(reduce_retracing=True, autograph=False)
            def fn(x):  # noqa: ANN001
                return net(x, training=False)

            self._fn = fn
        return self._fn


def architecture_for(loaded: LoadedModel) -> str:
    """The suspect's own architecture unless it is too large to train five times on CPU."""
    model = loaded.model
    return "twin" if model.count_params() <= MAX_TWIN_PARAMS and multiply_adds(model) <= MAX_TWIN_MACS else "small"


def multiply_adds(model: Any) -> int:
    """Multiply-adds per image of the convolution and dense layers (nested models included), from their symbolic shapes.

    Weights alone miss what a large input costs: a 1-million-weight convolutional network on 224x224 images does
    hundreds of times the work of one on 28x28 digits.
    """
    total = 0
    for layer in model.layers:
        if getattr(layer, "layers", None):
            total += multiply_adds(layer)
            continue
        kind = type(layer).__name__
        if kind not in ("Conv2D", "DepthwiseConv2D", "Dense"):
            continue
        inp, out = tuple(layer.input.shape), tuple(layer.output.shape)
        if kind == "Dense":
            total += int(np.prod(inp[1:])) * int(out[-1])
            continue
        kh, kw = layer.kernel_size
        per_pixel = kh * kw * (int(inp[-1]) * layer.depth_multiplier if kind == "DepthwiseConv2D"
                               else int(inp[-1]) // layer.groups * int(out[-1]))
        total += int(np.prod(out[1:3])) * per_pixel
    return total


def reference_network(loaded: LoadedModel, architecture: str, scale: str, seed: int,
                      weights: Optional[list[np.ndarray]] = None) -> Network:
    """A fresh reference (``weights`` None) or a saved fold's; saved weights must fit the architecture exactly."""
    if architecture not in ARCHITECTURES:
        raise DataError(f"unknown reference architecture {architecture!r}; expected one of {ARCHITECTURES}")
    if architecture == "twin":
        keras = _keras()
        keras.utils.set_random_seed(seed)  # clone_model draws the fresh weights from the global generators
        net = Network(keras.models.clone_model(loaded.model), bool(loaded.summary.outputs_probabilities))
    else:
        net = Network(small_network(loaded.input_shape, loaded.num_classes, scale, seed), False)
    if weights is not None:
        if not weights_fit(net.net, weights):
            raise DataError(f"the reference networks' saved weights do not fit this model's {architecture} architecture "
                            f"({loaded.summary.path}): the profile was made for another model")
        net.net.set_weights([np.asarray(a, np.float32) for a in weights])
    return net


def weights_fit(net: Any, weights: list[np.ndarray]) -> bool:
    """Whether saved weights have exactly the shapes of ``net``'s, in order."""
    return [tuple(np.shape(a)) for a in weights] == [tuple(v.shape) for v in net.weights]


def small_network(input_shape: tuple[int, int, int], num_classes: int, scale: str, seed: int) -> Any:
    """Convolution and pooling until the image is at most ``SMALLEST_SIDE`` a side, then a dense head; seeded initialisers."""
    keras = _keras()
    h, w, c = (int(s) for s in input_shape)
    init = lambda k: keras.initializers.GlorotUniform(seed=seed * 101 + k)  # noqa: E731
    inp = keras.Input((h, w, c))
    x = keras.layers.Rescaling(1.0 if scale == "1" else 1.0 / 255.0)(inp)  # the suspect's input range -> 0..1
    pool = math.ceil(max(h, w) / SMALL_SIDE)
    if pool > 1:  # large images: convolve a cheap average-pooled copy
        x = keras.layers.AveragePooling2D(pool, padding="same")(x)
        h, w = math.ceil(h / pool), math.ceil(w / pool)
    blocks = 0
    while min(h, w) > SMALLEST_SIDE and blocks < MAX_BLOCKS:
        x = keras.layers.Conv2D(16 << blocks, 3, padding="same", activation="relu", kernel_initializer=init(blocks))(x)
        x = keras.layers.MaxPooling2D()(x)
        h, w, blocks = h // 2, w // 2, blocks + 1
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.3, seed=seed)(x)
    x = keras.layers.Dense(64, activation="relu", kernel_initializer=init(10))(x)
    out = keras.layers.Dense(num_classes, kernel_initializer=init(11))(x)  # logits
    return keras.Model(inp, out)


def distil(loaded: LoadedModel, x: np.ndarray, scale: str, seed: int = 0) -> Job[LoadedModel]:
    """A clean twin trained on the clean images ``x`` with the suspect's own answers as labels, as a LoadedModel.

    The suspect's answers, not the data's labels: the twin should be the suspect minus whatever the clean images
    do not teach -- a backdoor, and nothing else. One batch per step, so a cancel lands within a batch.
    """
    keras, tf = _keras(), _tf()
    if len(x) < 20:
        raise DataError(f"a clean twin needs at least 20 clean images; received {len(x)}")
    architecture = architecture_for(loaded)
    try:
        net = reference_network(loaded, architecture, scale, seed)
    except (ValueError, TypeError, KeyError, NotImplementedError):  # an architecture Keras cannot clone
        architecture, net = "small", reference_network(loaded, "small", scale, seed)
    labels = predict_labels(loaded, x, scale).astype(np.int64)
    factor = np.float32(scale_factor(scale))  # fed as the suspect is fed (the small network rescales again, as it was trained)
    optimizer = keras.optimizers.Adam(DISTIL_LEARNING_RATE)
    optimizer.build(net.net.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=not net.probabilities)
    signature = [tf.TensorSpec((None,) + tuple(x.shape[1:]), tf.float32), tf.TensorSpec((None,), tf.int64)]

    @tf.function(input_signature=signature)
    def step(xb, yb):  # noqa: ANN001
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, net.net(xb, training=True))
        grads = tape.gradient(loss, net.net.trainable_variables)
        optimizer.apply_gradients(zip(grads, net.net.trainable_variables))
        return loss

    rng = np.random.default_rng(seed)
    epochs = int(min(20, max(5, DISTIL_IMAGES // len(x))))
    batches = max(1, math.ceil(len(x) / DISTIL_BATCH))
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        for b in range(batches):
            idx = order[b * DISTIL_BATCH : (b + 1) * DISTIL_BATCH]
            step(tf.constant(random_shifts(np.asarray(x[idx], np.float32), rng) * factor), tf.constant(labels[idx]))
            yield Progress((epoch + (b + 1) / batches) / epochs, f"Clean twin: epoch {epoch + 1}/{epochs}")
    summary = loaded.summary if net.probabilities == loaded.summary.outputs_probabilities else \
        dataclasses.replace(loaded.summary, outputs_probabilities=net.probabilities)
    twin = LoadedModel(net.net, summary, {"twin_of": loaded.summary.sha256, "architecture": architecture})
    agreement = float(np.mean(predict_labels(twin, x, scale) == labels))
    twin.extra["agreement"] = agreement
    return twin


def random_shifts(x: np.ndarray, rng: np.random.Generator, share: float = SHIFT_SHARE) -> np.ndarray:
    """Each image moved by its own random whole-pixel translation of up to ``share`` of each side, zero-filled."""
    n, h, w = x.shape[:3]
    kh, kw = max(1, round(share * h)), max(1, round(share * w))
    out = np.zeros_like(x)
    for i, (dr, dc) in enumerate(zip(rng.integers(-kh, kh + 1, n), rng.integers(-kw, kw + 1, n))):
        src = x[i, max(0, -dr) : h - max(0, dr), max(0, -dc) : w - max(0, dc)]
        out[i, max(0, dr) : max(0, dr) + src.shape[0], max(0, dc) : max(0, dc) + src.shape[1]] = src
    return out
