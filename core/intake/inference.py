"""Fast batched prediction shared by every analysis.

``model.predict`` re-creates its data pipeline on every call, which dominates
the cost on small batches; a cached ``tf.function`` over ``model(x)`` does not.
Models whose last layer emits logits get a softmax here, so entropies (STRIP)
and confidences are always computed on probabilities.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import numpy as np

from core.intake.models import LoadedModel
from core.intake.tf_env import tf as _tf

SCALES = {"255": 1.0 / 255.0, "1": 1.0}
_compiled: "weakref.WeakKeyDictionary[Any, Callable]" = weakref.WeakKeyDictionary()


def scale_factor(scale: str) -> float:
    try:
        return SCALES[str(scale)]
    except KeyError:
        raise ValueError(f"scale must be '255' or '1'; received {scale!r}") from None


def probability_fn(loaded: LoadedModel) -> Callable[[Any], Any]:
    """A compiled callable mapping a scaled batch to class probabilities."""
    model = loaded.model
    fn = _compiled.get(model)
    if fn is None:
        tf = _tf()
        softmax = not loaded.summary.outputs_probabilities

        @tf.function(reduce_retracing=True, autograph=False)
        def fn(x):  # noqa: ANN001
            out = model(x, training=False)
            return tf.nn.softmax(out) if softmax else out

        _compiled[model] = fn
    return fn


def predict_proba(loaded: LoadedModel, x_scaled: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Probabilities for already-scaled inputs, in chunks of ``batch_size``."""
    fn = probability_fn(loaded)
    outs = [
        np.asarray(fn(np.ascontiguousarray(x_scaled[i : i + batch_size], dtype=np.float32)))
        for i in range(0, len(x_scaled), batch_size)
    ]
    if not outs:
        return np.zeros((0, loaded.num_classes), np.float32)
    return np.concatenate(outs)


def predict_labels(loaded: LoadedModel, x: np.ndarray, scale: str, batch_size: int = 512) -> np.ndarray:
    """Class predictions for unscaled inputs (pixel values as stored)."""
    return predict_proba(loaded, x * scale_factor(scale), batch_size).argmax(axis=1)
