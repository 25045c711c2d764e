"""Grad-CAM: which part of the input drives the model's score for a class.

Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization" (ICCV 2017). For a conv layer with activations
A^k (k = channel) and the class score y^c *before the softmax*:

    alpha_k^c = mean over (i, j) of d y^c / d A^k_ij      (channel importance)
    L^c       = ReLU( sum_k alpha_k^c A^k )                 (the map)

The ReLU keeps only what *raises* the class score: that is what a trigger
does. The map has the conv layer's resolution; it is upsampled bilinearly to
the input size so boxes are in input pixels. Each map is divided by its own
maximum (0..1), because only relative values are used (box thresholds,
display) and raw gradients differ by orders of magnitude between models.

Scores are taken before the softmax (as in the paper): the gradient of a
saturated probability (a trigger gives 0.999...) vanishes and the map turns
to noise. For a last Dense layer with a softmax activation we recompute its
logits from its input; for a separate Softmax layer we take its input; for
any other model we fall back to log-probabilities, whose gradient does not
saturate either.

Many images are processed in batches under one ``tf.GradientTape``: the
per-image scores are independent, so the gradient of their sum gives every
image's own gradient in one backward pass.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from core.intake.inference import scale_factor
from core.jobs import Job, Progress
from core.intake.models import LoadedModel, require_conv_layer
from core.intake.tf_env import keras as _keras
from core.intake.tf_env import tf as _tf

DEFAULT_BATCH = 64

# (model -> {layer name -> compiled function}); weak so closed models are freed.
_cache: "weakref.WeakKeyDictionary[Any, dict[str, Callable]]" = weakref.WeakKeyDictionary()


@dataclass
class GradCam:
    """Grad-CAM maps of a batch of images, for one class each."""

    maps: np.ndarray  # (N, H, W) float32 in [0, 1], input resolution
    classes: np.ndarray  # (N,) the class each map explains
    probabilities: np.ndarray  # (N, K) the model's probabilities for the images
    layer: str


def gradcam(
    loaded: LoadedModel,
    x: np.ndarray,
    scale: str,
    layer: Optional[str] = None,
    classes: Optional[int | Sequence[int]] = None,
    batch_size: int = DEFAULT_BATCH,
) -> Job[GradCam]:
    """Grad-CAM maps for images ``x`` (model layout, pixel values as stored).

    ``classes``: None explains each image's predicted class; an int explains
    that class for every image; a sequence gives one class per image.
    Yields progress after each batch.
    """
    layer = require_conv_layer(loaded, layer)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    n = len(x)
    wanted = _class_vector(classes, n, loaded.num_classes)  # -1: the predicted class
    fn = _gradcam_fn(loaded, layer)
    factor = scale_factor(scale)
    h, w = loaded.input_shape[:2]
    maps = np.zeros((n, h, w), np.float32)
    probs = np.zeros((n, loaded.num_classes), np.float32)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        xb = np.ascontiguousarray(x[start:stop] * factor, dtype=np.float32)
        cam, p = fn(xb, wanted[start:stop])
        maps[start:stop] = np.asarray(cam)
        probs[start:stop] = np.asarray(p)
        yield Progress(stop / n, f"Grad-CAM on {layer}: {stop}/{n} images")
    chosen = np.where(wanted >= 0, wanted, probs.argmax(axis=1))
    return GradCam(maps, chosen.astype(np.int64), probs, layer)


def gradcam_maps(
    loaded: LoadedModel,
    x: np.ndarray,
    scale: str,
    layer: Optional[str] = None,
    classes: Optional[int | Sequence[int]] = None,
    batch_size: int = DEFAULT_BATCH,
) -> GradCam:
    """:func:`gradcam` run to completion (scripts and tests that need no progress)."""
    from core.jobs import run_job

    return run_job(gradcam(loaded, x, scale, layer, classes, batch_size))


# ------------------------------------------------------------------ internals


def _class_vector(classes: Optional[int | Sequence[int]], n: int, num_classes: int) -> np.ndarray:
    if classes is None:
        return np.full(n, -1, np.int64)
    vec = np.full(n, int(classes), np.int64) if np.isscalar(classes) else np.asarray(classes, np.int64).reshape(-1)
    if len(vec) != n:
        raise ValueError(f"got {len(vec)} classes for {n} images")
    bad = vec[(vec < -1) | (vec >= num_classes)]
    if bad.size:
        from core.errors import DataError

        raise DataError(f"class {int(bad[0])} is out of range for a {num_classes}-class model")
    return vec


def _gradcam_fn(loaded: LoadedModel, layer: str) -> Callable:
    """A compiled (x_scaled, classes) -> (maps, probabilities); class -1 = predicted."""
    model = loaded.model
    per_model = _cache.setdefault(model, {})
    if layer in per_model:
        return per_model[layer]
    tf = _tf()
    keras = _keras()
    conv = model.get_layer(layer)
    last = model.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", "")
    if isinstance(last, keras.layers.Dense) and activation == "softmax":
        mode = "dense-logits"  # recompute the logits of the softmax Dense layer
        probe = keras.Model(model.inputs, [conv.output, last.input])
    elif type(last).__name__ == "Softmax":
        mode = "softmax-input"
        probe = keras.Model(model.inputs, [conv.output, last.input])
    else:
        mode = "log-prob" if loaded.summary.outputs_probabilities else "logits"
        probe = keras.Model(model.inputs, [conv.output, model.outputs[0]])
    h, w = loaded.input_shape[:2]

    @tf.function(reduce_retracing=True, autograph=False)
    def fn(x, classes):  # noqa: ANN001
        with tf.GradientTape() as tape:
            acts, out = probe(x, training=False)
            if mode == "dense-logits":
                scores = tf.matmul(out, tf.convert_to_tensor(last.kernel))
                if last.use_bias:
                    scores = scores + tf.convert_to_tensor(last.bias)
                probs = tf.nn.softmax(scores)
            elif mode == "softmax-input":
                scores = out
                probs = tf.nn.softmax(scores)
            elif mode == "log-prob":
                probs = out
                scores = tf.math.log(tf.maximum(out, 1e-12))
            else:
                scores = out
                probs = tf.nn.softmax(out)
            predicted = tf.argmax(probs, axis=1, output_type=tf.int64)
            target = tf.where(classes >= 0, tf.cast(classes, tf.int64), predicted)
            picked = tf.gather(scores, target, axis=1, batch_dims=1)
            total = tf.reduce_sum(picked)  # images are independent: one backward pass for all
        grads = tape.gradient(total, acts)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # alpha_k^c
        cam = tf.nn.relu(tf.reduce_sum(weights * acts, axis=-1))  # (N, h', w')
        cam = tf.image.resize(cam[..., None], (h, w), method="bilinear")[..., 0]
        cam = tf.nn.relu(cam)  # bilinear interpolation of non-negative values stays >= 0; be exact anyway
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        cam = tf.math.divide_no_nan(cam, peak)
        return cam, probs

    per_model[layer] = fn
    return fn
