"""Fine-tuning on clean data, as a cancellable job shared by every repair.

Fine-Pruning (Liu et al., 2018) prunes dormant channels and then fine-tunes
on clean data; Neural Cleanse's unlearning (Wang et al., 2019) fine-tunes on
clean data with reversed triggers stamped on part of each batch. Both are
"train this model a little more, on a clone, and report as you go", so the
loop lives here once:

- the input model is never modified: we clone it (architecture + weights);
- ``masks`` (conv layer name -> per-channel 0/1 vector) are applied before
  the first step and re-applied after *every* optimizer step, so a pruned
  filter and its bias stay exactly zero however Adam's momentum pushes them
  (zeroing once and training on is how the CSAW student model lost its pruning);
- ``transform(x_unscaled, y, rng)`` lets a caller rewrite each batch before
  scaling (unlearning stamps reversed triggers with it);
- it is a generator: one :class:`BatchLoss` and one ``Progress`` per batch,
  so Cancel (``generator.close()``) takes effect between batches, and one
  :class:`EpochMetrics` per epoch with every ``eval_sets`` metric (an epoch 0
  event carries the metrics before any training).

A small ``tf.GradientTape`` loop in a ``tf.function`` is used rather than
``model.fit``: fit cannot yield between batches, and re-applying the masks
inside the compiled step costs nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import numpy as np

from core.errors import DataError, ModelError
from core.intake.inference import scale_factor
from core.jobs import Job, Progress
from core.intake.tf_env import keras as _keras
from core.intake.tf_env import tf as _tf

# Defaults measured on the demo BadNet (see core/repair/pruning.py's module docstring).
DEFAULT_EPOCHS = 10
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_BATCH_SIZE = 32

EvalSet = tuple[np.ndarray, Optional[np.ndarray], Optional[int]]
Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class FineTuneSettings:
    """How to fine-tune. Each defence keeps its own measured defaults and builds one of these.

    ``schedule`` 'cosine' decays the learning rate to zero over the run (a high
    rate early unlearns, a low one late recovers accuracy); 'constant' keeps it.
    ``augment`` adds random shifts of up to 2 pixels to each batch.
    """

    epochs: int = DEFAULT_EPOCHS
    learning_rate: float = DEFAULT_LEARNING_RATE
    batch_size: int = DEFAULT_BATCH_SIZE
    augment: bool = False
    schedule: str = "constant"
    seed: int = 0


@dataclass(frozen=True)
class BatchLoss:
    """The training loss of one batch (``step`` counts batches from 1 over all epochs)."""

    epoch: int  # 1-based
    batch: int  # 1-based within the epoch
    batches: int  # batches per epoch
    step: int
    loss: float


@dataclass(frozen=True)
class EpochMetrics:
    """Metrics after an epoch (``epoch`` 0: before training).

    ``metrics`` maps each eval set name to its accuracy, or to its attack
    success rate when the set was given a target. ``train_loss`` and
    ``train_accuracy`` are running means over the epoch's batches (None at epoch 0).
    """

    epoch: int
    epochs: int
    train_loss: Optional[float]
    train_accuracy: Optional[float]
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass
class FineTuneResult:
    model: Any  # the new Keras model (a clone of the input)
    history: list[EpochMetrics]  # epoch 0 (before) .. epochs
    losses: list[float]  # per batch
    settings: dict[str, Any]
    seconds: float

    @property
    def final(self) -> Mapping[str, float]:
        return self.history[-1].metrics if self.history else {}


def clone_model(model: Any) -> Any:
    """A new Keras model with ``model``'s architecture and a copy of its weights."""
    keras = _keras()
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def outputs_probabilities(model: Any) -> bool:
    """True when the model ends in a softmax (so its loss must not apply one again)."""
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", "") == "softmax" or type(last).__name__ == "Softmax"


def check_masks(model: Any, masks: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Validate ``masks`` against ``model``; returns float32 0/1 vectors."""
    out: dict[str, np.ndarray] = {}
    for name, mask in masks.items():
        try:
            layer = model.get_layer(name)
        except ValueError:
            raise ModelError(f"cannot mask channels of '{name}': the model has no such layer") from None
        kernel = getattr(layer, "kernel", None)
        if kernel is None:
            raise ModelError(f"cannot mask channels of '{name}': it has no kernel (not a Conv2D or Dense layer)")
        mask = np.asarray(mask, np.float32).reshape(-1)
        channels = int(kernel.shape[-1])
        if mask.shape[0] != channels:
            raise ModelError(f"the mask for '{name}' has {mask.shape[0]} entries but the layer has {channels} channels")
        if not np.all((mask == 0) | (mask == 1)):
            raise ModelError(f"the mask for '{name}' must hold only 0 and 1")
        out[name] = mask
    return out


def apply_masks(model: Any, masks: Mapping[str, np.ndarray]) -> None:
    """Zero the masked filters (kernel output channels) and biases of ``model``, in place."""
    for name, mask in check_masks(model, masks).items():
        layer = model.get_layer(name)
        layer.kernel.assign(layer.kernel.numpy() * mask)
        bias = getattr(layer, "bias", None)
        if bias is not None:
            bias.assign(bias.numpy() * mask)


def fine_tune(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    scale: str,
    settings: FineTuneSettings = FineTuneSettings(),
    *,
    masks: Optional[dict[str, np.ndarray]] = None,
    eval_sets: Optional[dict[str, EvalSet]] = None,
    transform: Optional[Transform] = None,
) -> Job[FineTuneResult]:
    """Fine-tune a clone of ``model`` on (``x``, ``y``), pixel values as stored.

    ``scale`` is '255' or '1' (see :mod:`core.intake.inference`). ``eval_sets`` maps a
    name to ``(x, labels, target)``: accuracy against ``labels`` when
    ``target`` is None, else the attack success rate (fraction predicted as
    ``target``; target -1: the fraction sent off ``labels``). Yields :class:`BatchLoss`, :class:`EpochMetrics` and
    ``Progress``; returns :class:`FineTuneResult`.
    """
    tf = _tf()
    keras = _keras()
    epochs, learning_rate, batch_size = settings.epochs, settings.learning_rate, settings.batch_size
    augment, schedule, seed = settings.augment, settings.schedule, settings.seed
    model = getattr(model, "model", model)  # accept a LoadedModel too
    factor = scale_factor(scale)
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if len(x) == 0 or len(x) != len(y):
        raise DataError(f"fine-tuning needs labelled clean images: received {len(x)} images and {len(y)} labels")
    if schedule not in ("constant", "cosine"):
        raise DataError(f"learning-rate schedule must be 'constant' or 'cosine'; received {schedule!r}")
    if epochs < 0 or batch_size < 1 or not learning_rate > 0:
        raise DataError(f"fine-tuning needs epochs >= 0, batch size >= 1 and a positive learning rate; received {epochs}, {batch_size}, {learning_rate}")
    num_classes = int(model.outputs[0].shape[-1])
    if y.min() < 0 or y.max() >= num_classes:
        raise DataError(f"fine-tuning labels must lie in 0..{num_classes - 1}; received {y.min()}..{y.max()}")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    settings = {
        "epochs": int(epochs), "learning_rate": float(learning_rate), "batch_size": int(batch_size),
        "augment": bool(augment), "seed": int(seed), "scale": str(scale), "images": int(len(x)),
        "masked_layers": sorted(masks) if masks else [], "schedule": schedule,
    }

    yield Progress(0.0, "Copying the model for fine-tuning")
    clone = clone_model(model)
    masks = check_masks(clone, masks or {})
    apply_masks(clone, masks)
    mask_pairs = []
    for name, mask in masks.items():
        layer = clone.get_layer(name)
        mask_pairs.append((layer.kernel, tf.constant(mask)))
        if getattr(layer, "bias", None) is not None:
            mask_pairs.append((layer.bias, tf.constant(mask)))

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=not outputs_probabilities(clone))
    batches = (len(x) + batch_size - 1) // batch_size
    rate: Any = learning_rate
    if schedule == "cosine" and epochs > 0:
        rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=epochs * batches)
    optimizer = keras.optimizers.Adam(rate)
    variables = clone.trainable_variables

    @tf.function(reduce_retracing=True, autograph=False)
    def train_step(xb, yb):  # noqa: ANN001
        with tf.GradientTape() as tape:
            out = clone(xb, training=True)
            loss = loss_fn(yb, out)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        for var, mask in mask_pairs:  # keep pruned channels exactly zero
            var.assign(var * tf.reshape(mask, [1] * (len(var.shape) - 1) + [-1]))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(out, axis=-1), tf.cast(yb, tf.int64)), tf.float32))
        return loss, correct

    @tf.function(reduce_retracing=True, autograph=False)
    def predict(xb):  # noqa: ANN001
        return tf.argmax(clone(xb, training=False), axis=-1)

    def evaluate_all() -> dict[str, float]:
        out: dict[str, float] = {}
        for name, (ex, labels, target) in (eval_sets or {}).items():
            ex = np.asarray(ex, np.float32)
            if len(ex) == 0:
                continue
            pred = np.concatenate([
                np.asarray(predict(np.ascontiguousarray(ex[i : i + 512] * factor)))
                for i in range(0, len(ex), 512)
            ])
            if target is not None and int(target) < 0 and labels is not None:  # a label-specific trigger: off their class
                out[name] = float(np.mean(pred != np.asarray(labels).reshape(-1)))
            elif target is not None:
                out[name] = float(np.mean(pred == int(target)))
            elif labels is not None:
                out[name] = float(np.mean(pred == np.asarray(labels).reshape(-1)))
        return out

    history = [EpochMetrics(0, epochs, None, None, evaluate_all())]
    yield history[0]
    losses: list[float] = []
    step = 0
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x))
        loss_sum = correct_sum = seen = 0.0
        for b in range(batches):
            idx = order[b * batch_size : (b + 1) * batch_size]
            xb, yb = x[idx], y[idx]
            if augment:
                xb = _augment(xb, rng)
            if transform is not None:
                xb, yb = transform(xb, yb, rng)
                xb = np.asarray(xb, np.float32)
                yb = np.asarray(yb).astype(np.int64).reshape(-1)
            loss, correct = train_step(np.ascontiguousarray(xb * factor, dtype=np.float32), yb)
            loss = float(loss)
            step += 1
            losses.append(loss)
            loss_sum += loss * len(yb)
            correct_sum += float(correct)
            seen += len(yb)
            yield BatchLoss(epoch, b + 1, batches, step, loss)
            yield Progress(step / max(epochs * batches, 1), f"Fine-tuning: epoch {epoch}/{epochs}, batch {b + 1}/{batches}, loss {loss:.4f}")
        event = EpochMetrics(epoch, epochs, loss_sum / max(seen, 1), correct_sum / max(seen, 1), evaluate_all())
        history.append(event)
        yield event
    return FineTuneResult(clone, history, losses, settings, time.perf_counter() - started)


def _augment(xb: np.ndarray, rng: np.random.Generator, max_shift: int = 2) -> np.ndarray:
    """Random shifts of up to ``max_shift`` pixels (zero fill) and mild contrast jitter.

    No flips: digits, traffic signs and faces are not mirror-symmetric classes.
    """
    out = np.zeros_like(xb)
    h, w = xb.shape[1:3]
    for i in range(len(xb)):
        dy, dx = rng.integers(-max_shift, max_shift + 1, size=2)
        src = xb[i, max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
        out[i, max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    gain = rng.uniform(0.9, 1.1, size=(len(xb), 1, 1, 1)).astype(np.float32)
    peak = float(xb.max()) if xb.size else 1.0
    return np.clip(out * gain, 0.0, peak)
