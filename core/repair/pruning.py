"""Fine-Pruning: remove the channels a backdoor hides in, then fine-tune.

Liu, Dolan-Gavitt and Garg, "Fine-Pruning: Defending Against Backdooring
Attacks on Deep Neural Networks" (RAID 2018). Backdoor neurons lie dormant on
clean inputs, so the channels of the last convolutional layer that clean data
activates least are the likely hiding places. We

1. choose the layer (:func:`default_layer`): the deepest Conv2D that every
   path from the input to the output passes through and that reaches a Dense
   layer through no other convolution. In a Sequential stack that is the last
   conv; in the CSAW DeepID net it is ``conv_3``: ``conv_4`` is deeper but sits
   on one of two branches only (``pool_3`` also feeds ``fc_1`` directly), so
   pruning it would leave half the head's input untouched;
2. rank its channels by mean activation over clean data, ascending;
3. sweep: prune them one at a time and record clean accuracy (and attack
   success rate on suspected-poisoned data). Fast because the network up to
   the pruned layer runs once: its output is cached, and each step re-runs
   only the sub-model after it with a channel mask (:class:`_Splitter`). The
   mask is pushed through channel-wise layers that keep zeros zero
   (max-pooling, ReLU, dropout...), so ``pool_3`` is cached, not ``conv_3``;
4. stop at the largest prune whose clean accuracy drop stays within
   ``max_acc_drop`` (4 points, as in the paper), or at a fraction / count;
5. prune permanently (filters and biases zeroed on a clone) and fine-tune on
   clean data with the masks re-applied after every optimizer step
   (:mod:`core.repair.finetune`), so the saved model shows exactly the reported
   channels as zero -- unlike the CSAW student model, whose pruned ``conv_3``
   channels had all grown back;
6. save atomically next to the input, never over it, with a JSON record.

Defaults (:class:`PruneSettings`), measured on the demo BadNet (``python main.py demo``;
target 7; 1,000 clean validation images, 20% held out for the figures), on
clean_test / poisoned_test: before 96.0% clean, 98.4% attack success. Pruning
alone (18/32 conv_3 channels, the 4-point stop) leaves attack success at 97%:
on this small net the backdoor is not confined to dormant channels.
Fine-tuning 10 epochs, Adam 1e-2 cosine-decayed, batch 32, random shifts, on
800 clean images: 94.6% clean (-1.4 points), 1.4% attack success. Adam 1e-3
constant left ~60% attack success after 12 epochs; 5e-3 left ~14%.
Fine-tuning alone at 1e-2 does about as well here (95.7% / 1.1%), so the
high-rate fine-tuning does most of the work. Reproduce: ``python main.py prune
--model DEMO/badnet.keras --clean DEMO/clean_valid.h5 --poisoned DEMO/poisoned_test.h5
--out r.keras --json`` then ``python main.py evaluate --model r.keras --clean
DEMO/clean_test.h5 --poisoned DEMO/poisoned_test.h5``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from core.intake.atomic import atomic_path, json_default, refuse_overwriting, write_text_atomic
from core.errors import DataError, ModelError, TrojanScopeError
from core.repair.finetune import (
    FineTuneResult,
    FineTuneSettings,
    apply_masks,
    clone_model,
    fine_tune,
)
from core.intake.inference import scale_factor
from core.jobs import Job, Progress, rescaled
from core.intake.models import LoadedModel, file_sha256
from core.intake.tf_env import keras as _keras
from core.intake.tf_env import tf as _tf

DEFAULT_MAX_ACC_DROP = 0.04  # 4 points of clean accuracy, the paper's budget
# Fine-tuning after pruning, chosen on the demo BadNet (figures in the module docstring):
# a high initial rate, cosine-decayed to zero, is what unlearns the trigger;
# Adam at 1e-3 left 60% attack success after 12 epochs.
DEFAULT_EPOCHS = 10
DEFAULT_LEARNING_RATE = 1e-2
DEFAULT_BATCH_SIZE = 32
DEFAULT_AUGMENT = True
SCHEDULE = "cosine"
DEFAULT_HOLDOUT = 0.2  # share of the clean data kept out of fine-tuning to measure it honestly
SWEEP_CHUNK = 2048

# Layers that act on each channel separately and map an all-zero channel to an
# all-zero channel: a 0/1 channel mask commutes with them exactly.
_CHANNELWISE = {"MaxPooling2D", "AveragePooling2D", "Dropout", "SpatialDropout2D", "ZeroPadding2D", "ReLU", "Cropping2D"}


# ----------------------------------------------------------------- settings


@dataclass(frozen=True)
class PruneSettings:
    """Where and how far to prune, and how to fine-tune afterwards.

    The stop rule: ``count`` channels, else a ``fraction`` of them, else the
    largest prune whose clean accuracy stays within ``max_acc_drop`` (a
    fraction: 0.04 = 4 points) of the unpruned model's. ``layer`` None: the
    :func:`default_layer`. A share ``holdout`` of the clean data is never
    fine-tuned on; the before/after figures are measured there.
    """

    layer: Optional[str] = None
    max_acc_drop: float = DEFAULT_MAX_ACC_DROP
    fraction: Optional[float] = None
    count: Optional[int] = None
    epochs: int = DEFAULT_EPOCHS
    learning_rate: float = DEFAULT_LEARNING_RATE
    batch_size: int = DEFAULT_BATCH_SIZE
    augment: bool = DEFAULT_AUGMENT
    holdout: float = DEFAULT_HOLDOUT
    seed: int = 0

    def fine_tuning(self) -> FineTuneSettings:
        return FineTuneSettings(epochs=self.epochs, learning_rate=self.learning_rate, batch_size=self.batch_size,
                                augment=self.augment, schedule=SCHEDULE, seed=self.seed)


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class Metrics:
    clean_accuracy: Optional[float]
    attack_success_rate: Optional[float]

    def as_dict(self) -> dict[str, Optional[float]]:
        return {"clean_accuracy": self.clean_accuracy, "attack_success_rate": self.attack_success_rate}


@dataclass(frozen=True)
class Ranking:
    """Event: the layer's channels and their mean activation on clean data."""

    layer: str
    activations: tuple[float, ...]
    order: tuple[int, ...]  # channels, least active first


@dataclass(frozen=True)
class SweepPoint:
    """Event: the metrics with the first ``pruned`` channels of the ranking removed."""

    pruned: int
    channels_total: int
    channel: Optional[int]  # the channel removed at this step (None for the unpruned point)
    clean_accuracy: float
    attack_success_rate: Optional[float]

    @property
    def fraction(self) -> float:
        return self.pruned / self.channels_total

    def as_dict(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "pruned": self.pruned, "channel": self.channel,
                "clean_accuracy": self.clean_accuracy, "attack_success_rate": self.attack_success_rate}


@dataclass(frozen=True)
class StageMetrics:
    """Event: the held-out metrics at a stage ('before', 'after_prune', 'after_fine_tune')."""

    stage: str
    metrics: Metrics


@dataclass
class SweepResult:
    layer: str
    channels_total: int
    activations: np.ndarray
    order: np.ndarray
    curve: list[SweepPoint]
    stop: int  # channels to prune by the stop rule
    scale: str
    target: Optional[int]
    n_clean: int
    n_poisoned: int
    seconds: float
    stop_rule: str

    def channels_for(self, count: int) -> list[int]:
        return sorted(int(c) for c in self.order[:count])


@dataclass
class PruneResult:
    layer: str
    channels_total: int
    pruned_channels: list[int]
    sweep: SweepResult
    before: Metrics
    after_prune: Metrics
    after_fine_tune: Metrics
    model: Any  # the repaired Keras model
    fine_tune: Optional[FineTuneResult]
    settings: dict[str, Any]
    saved: Optional[str] = None
    record_path: Optional[str] = None
    n_holdout: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "channels_total": self.channels_total,
            "pruned_channels": list(self.pruned_channels),
            "curve": [p.as_dict() for p in self.sweep.curve],
            "before": self.before.as_dict(),
            "after_prune": self.after_prune.as_dict(),
            "after_fine_tune": self.after_fine_tune.as_dict(),
            "saved": self.saved,
            "record": self.record_path,
            "stop_rule": self.sweep.stop_rule,
            "scale": self.sweep.scale,
            "target": self.sweep.target,
            "n_clean": self.sweep.n_clean,
            "n_poisoned": self.sweep.n_poisoned,
            "n_holdout": self.n_holdout,
            "metrics_measured_on": "held-out clean data (never fine-tuned on) and all poisoned data"
            if self.n_holdout else "the clean data used for fine-tuning (no hold-out) and all poisoned data",
            "clean_accuracy_measured_on": f"{self.n_holdout} held-out clean images (never fine-tuned on)"
            if self.n_holdout else "the clean images fine-tuned on (no hold-out)",
            "after_prune_means": "the pruned channels zeroed, before any fine-tuning",
            "settings": self.settings,
        }


# ----------------------------------------------------------- graph analysis


def _graph(model: Any) -> tuple[dict[str, list[str]], dict[str, list[str]], dict[str, Any]]:
    """(inbound, outbound, layers) by layer name, from the functional graph."""
    layers = {layer.name: layer for layer in model.layers}
    inbound: dict[str, list[str]] = {name: [] for name in layers}
    outbound: dict[str, list[str]] = {name: [] for name in layers}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                parent = tensor._keras_history.operation.name
                if parent in layers and parent not in inbound[layer.name]:
                    inbound[layer.name].append(parent)
                    outbound[parent].append(layer.name)
    return inbound, outbound, layers


def _is_conv(layer: Any) -> bool:
    keras = _keras()
    return isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.Conv2DTranspose)


def _reachable(start: Iterable[str], outbound: dict[str, list[str]], blocked: str = "") -> set[str]:
    seen: set[str] = set()
    stack = [s for s in start if s != blocked]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(n for n in outbound[name] if n != blocked)
    return seen


def default_layer(model: Any) -> str:
    """The conv layer Fine-Pruning should prune (see the module docstring).

    Rule: among Conv2D layers that (a) every input-to-output path passes
    through and (b) reach a Dense layer without crossing another Conv2D, the
    deepest. Falls back to the deepest conv satisfying (b), then the last conv.
    """
    model = getattr(model, "model", model)
    keras = _keras()
    inbound, outbound, layers = _graph(model)
    sources = [n for n, ins in inbound.items() if not ins]
    sinks = [layer.name for layer in model.layers if not outbound[layer.name]]
    convs = [layer.name for layer in model.layers if _is_conv(layer)]
    if not convs:
        raise ModelError("this model has no Conv2D layer: Fine-Pruning needs a convolutional image classifier")

    def feeds_dense(conv: str) -> bool:
        stack, seen = list(outbound[conv]), set()
        while stack:
            name = stack.pop()
            if name in seen or _is_conv(layers[name]):
                continue
            seen.add(name)
            if isinstance(layers[name], keras.layers.Dense):
                return True
            stack.extend(outbound[name])
        return False

    def dominates(conv: str) -> bool:
        return not (set(sinks) & _reachable(sources, outbound, blocked=conv))

    depth = _depths(inbound, model)
    feeding = [c for c in convs if feeds_dense(c)]
    dominating = [c for c in feeding if dominates(c)]
    for group in (dominating, feeding, convs):
        if group:
            return max(group, key=lambda c: (depth[c], convs.index(c)))
    raise AssertionError("unreachable")


def _depths(inbound: dict[str, list[str]], model: Any) -> dict[str, int]:
    """Longest distance from an input, per layer (a topological depth)."""
    depth: dict[str, int] = {}

    def visit(name: str) -> int:
        if name not in depth:
            depth[name] = 1 + max((visit(p) for p in inbound[name]), default=-1)
        return depth[name]

    for layer in model.layers:
        visit(layer.name)
    return depth


def conv_layers(model: Any) -> list[tuple[str, int]]:
    """(name, channels) of every Conv2D, for pickers."""
    model = getattr(model, "model", model)
    return [(layer.name, int(layer.filters)) for layer in model.layers if _is_conv(layer)]


def resolve_layer(loaded: LoadedModel, layer: Optional[str]) -> str:
    names = [name for name, _ in conv_layers(loaded.model)]
    if layer is None:
        return default_layer(loaded.model)
    if layer not in names:
        raise ModelError(f"{loaded.summary.path} has no Conv2D layer named '{layer}'; its conv layers are {names}")
    return layer


# ----------------------------------------------------------------- the split


class _Splitter:
    """The model cut after the pruned layer: a prefix run once, a suffix run per step.

    ``mask_at`` is the layer whose output gets the channel mask: the pruned
    conv itself, or a chain of channel-wise zero-preserving layers after it
    (each the only consumer of the previous). ``frontier`` are other tensors
    the suffix needs that do not depend on the pruned layer (when the analyst
    picks a conv on one branch of a multi-branch net).
    """

    def __init__(self, model: Any, layer: str) -> None:
        keras = _keras()
        tf = _tf()
        inbound, outbound, layers = _graph(model)
        conv = layers[layer]
        zero = float(np.asarray(conv.activation(tf.zeros([1])))[0]) if getattr(conv, "activation", None) else 0.0
        self.fill = zero  # what a pruned channel outputs (activation(0): 0 for relu)
        mask_at = layer
        while zero == 0.0 and len(outbound[mask_at]) == 1:
            nxt = layers[outbound[mask_at][0]]
            if not self._channelwise(nxt) or len(inbound[nxt.name]) != 1:
                break
            mask_at = nxt.name
        self.mask_at = mask_at
        downstream = _reachable(outbound[mask_at], outbound)
        frontier = []
        for name in [layer.name for layer in model.layers]:
            if name in downstream:
                for parent in inbound[name]:
                    if parent not in downstream and parent != mask_at and parent not in frontier:
                        frontier.append(parent)
        self.frontier = frontier
        cut = [layers[mask_at].output] + [layers[n].output for n in frontier]
        self.prefix = keras.Model(model.inputs, [conv.output] + cut)
        self.suffix = keras.Model(cut if len(cut) > 1 else cut[0], model.outputs)
        prefix, suffix = self.prefix, self.suffix

        @tf.function(reduce_retracing=True, autograph=False)
        def run_prefix(x):  # noqa: ANN001
            outs = prefix(x, training=False)
            means = tf.reduce_sum(outs[0], axis=[1, 2])  # per-image channel sums
            return [means] + list(outs[1:])

        @tf.function(reduce_retracing=True, autograph=False)
        def run_suffix(h, mask, rest):  # noqa: ANN001
            masked = h * mask + (1.0 - mask) * zero if zero else h * mask
            inputs = [masked] + list(rest) if rest else masked
            return tf.argmax(suffix(inputs, training=False), axis=-1)

        self._run_prefix = run_prefix
        self._run_suffix = run_suffix
        self.spatial = int(np.prod(conv.output.shape[1:3]))
        self.channels = int(conv.filters)

    @staticmethod
    def _channelwise(layer: Any) -> bool:
        name = type(layer).__name__
        if name == "Activation":
            return getattr(layer.activation, "__name__", "") in ("relu", "linear")
        if name == "ReLU":
            return not getattr(layer, "negative_slope", 0) and not getattr(layer, "threshold", 0)
        return name in _CHANNELWISE

    def cache(self, x_scaled: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """(per-image channel sums of the conv output, [mask-point output, frontier...])."""
        sums, cut = [], []
        for i in range(0, len(x_scaled), 256):
            outs = self._run_prefix(np.ascontiguousarray(x_scaled[i : i + 256], np.float32))
            sums.append(np.asarray(outs[0]))
            cut.append([np.asarray(o) for o in outs[1:]])
        return np.concatenate(sums), [np.concatenate([c[k] for c in cut]) for k in range(len(cut[0]))]

    def predict(self, cut: list[np.ndarray], mask: np.ndarray) -> np.ndarray:
        mask = mask.astype(np.float32)
        preds = []
        for i in range(0, len(cut[0]), SWEEP_CHUNK):
            h = cut[0][i : i + SWEEP_CHUNK]
            rest = [c[i : i + SWEEP_CHUNK] for c in cut[1:]]
            preds.append(np.asarray(self._run_suffix(h, mask, rest)))
        return np.concatenate(preds) if preds else np.zeros(0, np.int64)


def _splitter(model: Any, layer: str) -> _Splitter:
    """One split (and its traced functions) per model and layer: re-sweeps skip the tracing."""
    # Kept on the model itself (not in a weak dict whose values would pin the key),
    # so the split is freed with the model.
    per_model = model.__dict__.setdefault("_trojanscope_splitters", {})
    if layer not in per_model:
        per_model[layer] = _Splitter(model, layer)
    return per_model[layer]


# -------------------------------------------------------------------- sweep


def _accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(pred == labels)) if len(labels) else float("nan")


def _asr(pred: np.ndarray, labels: Optional[np.ndarray], target: Optional[int]) -> Optional[float]:
    if len(pred) == 0:
        return None
    if target is not None:
        return float(np.mean(pred == target))
    return float(np.mean(pred == labels))


def choose_stop(
    curve: list[SweepPoint],
    max_acc_drop: Optional[float] = DEFAULT_MAX_ACC_DROP,
    fraction: Optional[float] = None,
    count: Optional[int] = None,
) -> tuple[int, str]:
    """How many channels to prune, and the rule in words.

    ``count`` or ``fraction`` when given (analyst's choice); otherwise the
    largest prune whose clean accuracy is within ``max_acc_drop`` (a fraction,
    0.04 = 4 points) of the unpruned model's.
    """
    total = curve[0].channels_total
    if count is not None:
        if not 0 <= count <= total:
            raise DataError(f"prune count must lie in 0..{total}; received {count}")
        return int(count), f"{count} channels (as requested)"
    if fraction is not None:
        if not 0 <= fraction <= 1:
            raise DataError(f"prune fraction must lie in 0..1; received {fraction}")
        return int(round(fraction * total)), f"{fraction:.0%} of the channels (as requested)"
    drop = DEFAULT_MAX_ACC_DROP if max_acc_drop is None else max_acc_drop
    if not 0 <= drop <= 1:
        raise DataError(f"max accuracy drop must lie in 0..100 points; received {drop * 100:g}")
    base = curve[0].clean_accuracy
    ok = [p.pruned for p in curve if p.clean_accuracy >= base - drop - 1e-9]
    return max(ok), f"largest prune within {drop * 100:g} points of clean accuracy"


def sweep(
    loaded: LoadedModel,
    x_clean: np.ndarray,
    y_clean: np.ndarray,
    scale: str,
    settings: PruneSettings = PruneSettings(),
    *,
    x_poisoned: Optional[np.ndarray] = None,
    y_poisoned: Optional[np.ndarray] = None,
    target: Optional[int] = None,
) -> Job[SweepResult]:
    """Rank the layer's channels on clean data and prune them one at a time.

    Yields :class:`Ranking`, then one :class:`SweepPoint` per step (the first
    with nothing pruned), and ``Progress``; returns :class:`SweepResult` (its
    ``stop`` follows the settings' stop rule). Inputs are pixel values as
    stored; ``scale`` is '255' or '1'. ``x_poisoned`` (suspected-poisoned
    images) with ``target``, or else their labels ``y_poisoned``, adds the
    attack success rate to each point.
    """
    started = time.perf_counter()
    layer = resolve_layer(loaded, settings.layer)
    y_clean = np.asarray(y_clean).reshape(-1)
    if len(x_clean) == 0 or len(y_clean) != len(x_clean):
        raise DataError("the pruning sweep needs labelled clean images")
    has_poison = x_poisoned is not None and len(x_poisoned) > 0
    if has_poison and target is None and y_poisoned is None:
        raise DataError("poisoned data has no labels: give the attacker's target class")
    factor = scale_factor(scale)
    yield Progress(0.0, f"Splitting the model after {layer}")
    split = _splitter(loaded.model, layer)
    total = split.channels
    yield Progress(0.02, f"Running the network up to {split.mask_at} once on {len(x_clean)} clean images")
    sums, cut_clean = split.cache(np.asarray(x_clean, np.float32) * factor)
    activations = sums.sum(axis=0) / (len(x_clean) * split.spatial)
    order = np.argsort(activations, kind="stable")
    yield Ranking(layer, tuple(float(a) for a in activations), tuple(int(c) for c in order))
    cut_poison = None
    if has_poison:
        yield Progress(0.1, f"... and on {len(x_poisoned)} suspected-poisoned images")
        _, cut_poison = split.cache(np.asarray(x_poisoned, np.float32) * factor)
    y_poisoned = None if y_poisoned is None else np.asarray(y_poisoned).reshape(-1)

    mask = np.ones(total, np.float32)
    curve: list[SweepPoint] = []
    for k in range(total + 1):
        if k:
            mask[order[k - 1]] = 0.0
        acc = _accuracy(split.predict(cut_clean, mask), y_clean)
        asr = _asr(split.predict(cut_poison, mask), y_poisoned, target) if cut_poison is not None else None
        point = SweepPoint(k, total, int(order[k - 1]) if k else None, acc, asr)
        curve.append(point)
        yield point
        yield Progress(0.15 + 0.85 * (k + 1) / (total + 1), f"Pruned {k}/{total} channels of {layer}: clean accuracy {acc:.3f}"
                       + (f", attack success {asr:.3f}" if asr is not None else ""))
    stop, rule = choose_stop(curve, settings.max_acc_drop, settings.fraction, settings.count)
    return SweepResult(layer, total, activations, order, curve, stop, scale, target,
                       len(x_clean), len(x_poisoned) if has_poison else 0, time.perf_counter() - started, rule)


# ------------------------------------------------------ pruning and repair


def channel_mask(total: int, pruned: Iterable[int]) -> np.ndarray:
    mask = np.ones(total, np.float32)
    mask[list(pruned)] = 0.0
    return mask


def prune_model(model: Any, layer: str, channels: Iterable[int]) -> Any:
    """A clone of ``model`` with ``channels`` of ``layer`` zeroed (filters and biases)."""
    model = getattr(model, "model", model)
    clone = clone_model(model)
    total = int(clone.get_layer(layer).kernel.shape[-1])
    apply_masks(clone, {layer: channel_mask(total, channels)})
    return clone


def zero_channels(model: Any, layer: str) -> list[int]:
    """Channels of ``layer`` whose filter and bias are exactly zero (what a saved file shows)."""
    model = getattr(model, "model", model)
    conv = model.get_layer(layer)
    kernel = np.asarray(conv.kernel.numpy())
    dead = np.all(kernel.reshape(-1, kernel.shape[-1]) == 0, axis=0)
    if getattr(conv, "bias", None) is not None:
        dead &= np.asarray(conv.bias.numpy()) == 0
    return [int(c) for c in np.flatnonzero(dead)]


def split_holdout(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fine-tune indices, held-out indices), reproducible from ``seed``."""
    order = np.random.default_rng(seed).permutation(n)
    k = int(round(holdout * n)) if holdout > 0 else 0
    if k and n - k < 1:
        raise DataError(f"not enough clean images ({n}) to hold {holdout:.0%} out")
    return np.sort(order[k:]), np.sort(order[:k])


def _measure(model: Any, x: np.ndarray, y: np.ndarray, xp: Optional[np.ndarray], yp: Optional[np.ndarray],
             target: Optional[int], scale: str) -> Metrics:
    tf = _tf()
    factor = scale_factor(scale)

    @tf.function(reduce_retracing=True, autograph=False)
    def predict(xb):  # noqa: ANN001
        return tf.argmax(model(xb, training=False), axis=-1)

    def labels(data: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(predict(np.ascontiguousarray(data[i : i + 512] * factor, np.float32)))
                               for i in range(0, len(data), 512)]) if len(data) else np.zeros(0, np.int64)

    acc = _accuracy(labels(x), y) if len(x) else None
    asr = _asr(labels(xp), yp, target) if xp is not None and len(xp) else None
    return Metrics(acc, asr)


def repair(
    loaded: LoadedModel,
    result: SweepResult,
    x_clean: np.ndarray,
    y_clean: np.ndarray,
    settings: PruneSettings = PruneSettings(),
    *,
    x_poisoned: Optional[np.ndarray] = None,
    y_poisoned: Optional[np.ndarray] = None,
) -> Job[PruneResult]:
    """Prune ``settings.count`` channels (None: the sweep's stop) permanently and fine-tune.

    A share ``settings.holdout`` of the clean data is never trained on: the
    before / after figures are measured there, so fine-tuning cannot flatter
    itself. Yields the fine-tuning events (:class:`~core.repair.finetune.BatchLoss`,
    :class:`~core.repair.finetune.EpochMetrics`), :class:`StageMetrics` and Progress.
    """
    count = result.stop if settings.count is None else int(settings.count)
    holdout, seed, epochs = settings.holdout, settings.seed, settings.epochs
    if not 0 <= count <= result.channels_total:
        raise DataError(f"prune count must lie in 0..{result.channels_total}; received {count}")
    x_clean = np.asarray(x_clean, np.float32)
    y_clean = np.asarray(y_clean).reshape(-1)
    fit_idx, hold_idx = split_holdout(len(x_clean), holdout, seed)
    x_fit, y_fit = x_clean[fit_idx], y_clean[fit_idx]
    x_hold, y_hold = (x_clean[hold_idx], y_clean[hold_idx]) if len(hold_idx) else (x_fit, y_fit)
    yp = None if y_poisoned is None else np.asarray(y_poisoned).reshape(-1)
    target, scale, layer = result.target, result.scale, result.layer
    channels = result.channels_for(count)

    yield Progress(0.0, "Measuring the model before pruning")
    before = _measure(loaded.model, x_hold, y_hold, x_poisoned, yp, target, scale)
    yield StageMetrics("before", before)
    pruned = prune_model(loaded.model, layer, channels)
    after_prune = _measure(pruned, x_hold, y_hold, x_poisoned, yp, target, scale)
    yield StageMetrics("after_prune", after_prune)
    eval_sets: dict[str, Any] = {"clean": (x_hold, y_hold, None)}
    if x_poisoned is not None and len(x_poisoned):
        eval_sets["attack_success_rate"] = (x_poisoned, yp, target)
    mask = {layer: channel_mask(result.channels_total, channels)}
    tuned = None
    model = pruned
    if epochs > 0:
        tuned = yield from fine_tune(pruned, x_fit, y_fit, scale, settings.fine_tuning(), masks=mask, eval_sets=eval_sets)
        model = tuned.model
    after = _measure(model, x_hold, y_hold, x_poisoned, yp, target, scale)
    yield StageMetrics("after_fine_tune", after)
    if set(channels) - set(zero_channels(model, layer)):
        raise AssertionError(f"pruned channels of {layer} are no longer zero after fine-tuning")  # a bug, never input
    record = {
        "layer": layer, "pruned": count, "stop_rule": result.stop_rule, "epochs": epochs,
        "learning_rate": settings.learning_rate, "schedule": SCHEDULE, "batch_size": settings.batch_size,
        "augment": settings.augment, "holdout": holdout, "seed": seed, "scale": scale, "target": target,
    }
    return PruneResult(layer, result.channels_total, channels, result, before, after_prune, after,
                       model, tuned, record, n_holdout=len(hold_idx))


# ------------------------------------------------------------------ saving


def default_output_path(model_path: str | Path, fmt: str = "keras") -> Path:
    """``<name>.fine-pruned.keras`` beside the input, numbered if taken; never the input."""
    model_path = Path(model_path)
    stem = model_path.name.split(".")[0] or "model"
    for n in range(1, 1000):
        tag = "" if n == 1 else f"-{n}"
        candidate = model_path.with_name(f"{stem}.fine-pruned{tag}.{fmt}")
        if not candidate.exists():
            return candidate
    raise TrojanScopeError(f"too many fine-pruned copies beside {model_path}: choose an output path")


def save_result(result: PruneResult, loaded: LoadedModel, out: str | Path, inputs: Iterable[Any] = ()) -> PruneResult:
    """Write the repaired model to ``out`` (.keras or .h5) atomically, plus ``out``.json.

    Refuses to write over the model or data files it was made from.
    """
    out = Path(out)
    if out.suffix.lower() not in (".keras", ".h5"):
        raise TrojanScopeError(f"the output must end in .keras or .h5; received {out}")
    record_path = out.with_name(out.name + ".json")
    refuse_overwriting(out, loaded.summary.path, *[i for i in inputs if i])
    refuse_overwriting(record_path, loaded.summary.path, *[i for i in inputs if i])
    with atomic_path(out) as tmp:
        result.model.save(tmp)
    result.saved = str(out)
    result.record_path = str(record_path)
    record = result.as_dict()
    record.update({
        "input_model": loaded.summary.path, "input_sha256": loaded.summary.sha256,
        "output_sha256": file_sha256(out), "method": "fine-pruning (Liu et al., 2018)",
        "fine_tune_history": [asdict(e) for e in result.fine_tune.history] if result.fine_tune else [],
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    })
    write_text_atomic(record_path, json.dumps(record, indent=2, default=json_default))
    return result


def fine_prune(
    loaded: LoadedModel,
    x_clean: np.ndarray,
    y_clean: np.ndarray,
    scale: str,
    settings: PruneSettings = PruneSettings(),
    *,
    x_poisoned: Optional[np.ndarray] = None,
    y_poisoned: Optional[np.ndarray] = None,
    target: Optional[int] = None,
    out: Optional[str | Path] = None,
    inputs: Iterable[Any] = (),
) -> Job[PruneResult]:
    """The whole defence in one job: sweep, stop rule, prune, fine-tune, save (when ``out``)."""
    if out is not None:  # fail before minutes of work, not after
        if Path(out).suffix.lower() not in (".keras", ".h5"):
            raise TrojanScopeError(f"the output must end in .keras or .h5; received {out}")
        refuse_overwriting(out, loaded.summary.path, *[i for i in inputs if i])
    result = yield from rescaled(
        sweep(loaded, x_clean, y_clean, scale, settings, x_poisoned=x_poisoned, y_poisoned=y_poisoned, target=target), 0.0, 0.4)
    repaired = yield from rescaled(
        repair(loaded, result, x_clean, y_clean, settings, x_poisoned=x_poisoned, y_poisoned=y_poisoned), 0.4, 0.97)
    if out is not None:
        yield Progress(0.98, f"Saving {out}")
        save_result(repaired, loaded, out, inputs)
    yield Progress(1.0, "Fine-pruning done")
    return repaired
