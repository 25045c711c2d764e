"""Count the weights a Keras model config will allocate, without Keras.

Keras allocates every weight while it *builds* a model from its config, before
a single stored weight is read: a 3 KB config with a Dense layer of 500,000
units on a flattened feature map asks for billions of floats. So the count is
computed here from the JSON alone, by propagating shapes through the layers
the allow-list in :mod:`core.intake.safety` admits, and checked against the memory
budget before Keras sees the file.

The estimate is a lower bound by construction (unknown dimensions count as 1,
layers without a rule count as 0 weights and pass their input shape through),
so a legitimate model is never refused for an over-estimate; the layers that
make shapes grow (Dense, convolutions, Embedding, recurrent layers, up-sampling,
padding, resizing, repeats, concatenation) are modelled exactly, which is what
a bomb needs. Tests compare it with Keras's own ``count_params``.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

Shape = Optional[tuple[Optional[int], ...]]  # without the batch axis; None = unknown

MODEL_CLASSES = frozenset({"Functional", "Model", "Sequential"})


def estimate_params(config: Any) -> int:
    """Weights a model config declares (a lower bound; exact for common classifiers)."""
    if not isinstance(config, dict):
        return 0
    if config.get("class_name") in MODEL_CLASSES:
        return _model(config, None)[0]
    return _layer(config, None)[0]


# --------------------------------------------------------------- models


def _model(node: dict, outer: Shape) -> tuple[int, Shape]:
    body = node.get("config") if isinstance(node.get("config"), dict) else {}
    layers = body.get("layers")
    if not isinstance(layers, list):
        return 0, outer
    total = 0
    shapes: dict[str, Shape] = {}
    previous: Shape = outer
    build = body.get("build_input_shape")
    if previous is None and isinstance(build, list) and build:
        previous = _shape(build[1:])
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        layer_config = layer.get("config") if isinstance(layer.get("config"), dict) else {}
        name = layer_config.get("name") or layer.get("name")
        inputs = [shapes[n] for n in _inbound_names(layer.get("inbound_nodes")) if n in shapes]
        if not inputs:
            declared = layer_config.get("batch_shape") or layer_config.get("batch_input_shape")
            if isinstance(declared, list) and declared:
                inputs = [_shape(declared[1:])]
            elif previous is not None:
                inputs = [previous]
        params, shape = _layer(layer, inputs)
        total += params
        if isinstance(name, str):
            shapes[name] = shape
        previous = shape
    return total, previous


def _inbound_names(nodes: Any) -> list[str]:
    """Layer names feeding a layer: Keras 3 ``keras_history`` or Keras 2 ``[name, node, tensor, kwargs]``."""
    found: list[str] = []
    stack = [nodes]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            history = item.get("keras_history") if item.get("keras_history") is not None else None
            if isinstance(history, list) and history and isinstance(history[0], str):
                found.append(history[0])
                continue
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            if len(item) >= 3 and isinstance(item[0], str) and isinstance(item[1], int):
                found.append(item[0])
                continue
            stack.extend(reversed(item))
    return found


# --------------------------------------------------------------- layers


def _layer(node: dict, inputs: Optional[list[Shape]]) -> tuple[int, Shape]:
    cls = node.get("class_name")
    c = node.get("config") if isinstance(node.get("config"), dict) else {}
    s = inputs[0] if inputs else None
    if cls in MODEL_CLASSES:
        return _model(node, s)
    if cls == "InputLayer":
        declared = c.get("batch_shape") or c.get("batch_input_shape")
        if isinstance(declared, list) and declared:
            return 0, _shape(declared[1:])
        return 0, _shape(c.get("shape")) if isinstance(c.get("shape"), list) else s
    if cls in ("TimeDistributed", "Bidirectional"):
        inner = c.get("layer") if isinstance(c.get("layer"), dict) else {}
        inner_in = s[1:] if s else None
        params, out = _layer(inner, [inner_in] if inner_in is not None else None)
        if cls == "Bidirectional":
            params *= 2
        return params, ((s[0],) + out) if (s and out is not None and cls == "TimeDistributed") else out
    rule = _RULES.get(_family(str(cls)))
    if rule is None:
        return 0, s
    return rule(c, s, inputs or [])


def _family(cls: str) -> str:
    for prefix, family in (
        ("SeparableConv", "separable"), ("DepthwiseConv", "depthwise"), ("Conv1DTranspose", "transpose"),
        ("Conv2DTranspose", "transpose"), ("Conv3DTranspose", "transpose"), ("Convolution1DTranspose", "transpose"),
        ("Convolution2DTranspose", "transpose"), ("Convolution3DTranspose", "transpose"), ("ConvLSTM", "convlstm"),
        ("Conv", "conv"), ("Global", "global"), ("MaxPool", "pool"), ("AveragePool", "pool"), ("AvgPool", "pool"),
        ("UpSampling", "upsampling"), ("ZeroPadding", "padding"), ("Cropping", "cropping"),
    ):
        if cls.startswith(prefix):
            return family
    return cls


def _dim(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 1


def _int(value: Any, default: int = 1) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def _shape(values: Any) -> Shape:
    if not isinstance(values, (list, tuple)):
        return None
    return tuple(v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None for v in values)


def _tuple(value: Any, rank: int, default: int = 1) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        items = [_int(v, default) for v in value][:rank]
        return tuple(items + [default] * (rank - len(items)))
    return (_int(value, default),) * rank


def _rank(s: Shape, fallback: int = 2) -> int:
    return max(len(s) - 1, 1) if s else fallback


def _last(s: Shape) -> int:
    return _dim(s[-1]) if s else 1


def _bias(c: dict) -> int:
    return 0 if c.get("use_bias") is False else 1


def _spatial(s: Shape, rank: int, kernel: tuple[int, ...], strides: tuple[int, ...], padding: Any, dilation: Optional[tuple[int, ...]] = None) -> tuple:
    dims = list(s[:-1]) if s else [None] * rank
    dilation = dilation or (1,) * rank
    out = []
    for i, n in enumerate(dims[:rank]):
        k, st, d = kernel[i], strides[i], dilation[i]
        if n is None:
            out.append(None)
        elif padding == "same":
            out.append(math.ceil(n / st))
        else:
            out.append(max((n - ((k - 1) * d + 1)) // st + 1, 0) or None)
    return tuple(out)


def _dense(c: dict, s: Shape, _: list) -> tuple[int, Shape]:
    units = _int(c.get("units"))
    return _last(s) * units + units * _bias(c), (tuple(s[:-1]) + (units,)) if s else (units,)


def _conv(c: dict, s: Shape, _: list) -> tuple[int, Shape]:
    rank = _rank(s)
    kernel = _tuple(c.get("kernel_size"), rank)
    filters = _int(c.get("filters"))
    groups = _int(c.get("groups"))
    params = math.prod(kernel) * (_last(s) // groups or 1) * filters + filters * _bias(c)
    dims = _spatial(s, rank, kernel, _tuple(c.get("strides"), rank), c.get("padding"), _tuple(c.get("dilation_rate"), rank))
    return params, dims + (filters,)


def _transpose(c: dict, s: Shape, _: list) -> tuple[int, Shape]:
    rank = _rank(s)
    kernel = _tuple(c.get("kernel_size"), rank)
    strides = _tuple(c.get("strides"), rank)
    filters = _int(c.get("filters"))
    params = math.prod(kernel) * _last(s) * filters + filters * _bias(c)
    dims = tuple(None if n is None else n * strides[i] for i, n in enumerate((s[:-1] if s else (None,) * rank)[:rank]))
    return params, dims + (filters,)


def _depthwise(c: dict, s: Shape, _: list) -> tuple[int, Shape]:
    rank = _rank(s)
    kernel = _tuple(c.get("kernel_size"), rank)
    channels = _last(s) * _int(c.get("depth_multiplier"))
    dims = _spatial(s, rank, kernel, _tuple(c.get("strides"), rank), c.get("padding"), _tuple(c.get("dilation_rate"), rank))
    return math.prod(kernel) * channels + channels * _bias(c), dims + (channels,)


def _separable(c: dict, s: Shape, _: list) -> tuple[int, Shape]:
    rank = _rank(s)
    kernel = _tuple(c.get("kernel_size"), rank)
    middle = _last(s) * _int(c.get("depth_multiplier"))
    filters = _int(c.get("filters"))
    dims = _spatial(s, rank, kernel, _tuple(c.get("strides"), rank), c.get("padding"), _tuple(c.get("dilation_rate"), rank))
    return math.prod(kernel) * middle + middle * filters + filters * _bias(c), dims + (filters,)


def _pool(c: dict, s: Shape, _: list) -> tuple[int, Shape]:
    rank = _rank(s)
    size = _tuple(c.get("pool_size"), rank, 2)
    strides = _tuple(c.get("strides"), rank) if c.get("strides") is not None else size
    return 0, _spatial(s, rank, size, strides, c.get("padding")) + ((s[-1],) if s else (None,))


def _global(c: dict, s: Shape, _: list) -> tuple[int, Shape]:
    if not s:
        return 0, None
    return 0, ((1,) * (len(s) - 1) + (s[-1],)) if c.get("keepdims") else (s[-1],)


def _upsampling(c: dict, s: Shape, _: list) -> tuple[int, Shape]:
    if not s:
        return 0, None
    rank = len(s) - 1
    size = _tuple(c.get("size"), rank, 2)
    return 0, tuple(None if n is None else n * size[i] for i, n in enumerate(s[:-1])) + (s[-1],)


def _padding(c: dict, s: Shape, _: list, sign: int = 1) -> tuple[int, Shape]:
    if not s:
        return 0, None
    rank = len(s) - 1
    value = c.get("padding") if sign > 0 else c.get("cropping")
    per_axis: list[int] = []
    for i in range(rank):
        item = value[i] if isinstance(value, (list, tuple)) and i < len(value) else value
        if isinstance(item, (list, tuple)):
            per_axis.append(sum(_int(v, 0) for v in item[:2]))
        else:
            per_axis.append(2 * _int(item, 1 if sign > 0 else 0))
    dims = tuple(None if n is None else max(n + sign * per_axis[i], 1) for i, n in enumerate(s[:-1]))
    return 0, dims + (s[-1],)


def _flatten(c: dict, s: Shape, _: list) -> tuple[int, Shape]:
    return 0, (math.prod(_dim(n) for n in s),) if s else None


def _reshape(c: dict, s: Shape, _: list) -> tuple[int, Shape]:
    target = _shape(c.get("target_shape"))
    if target is None:
        return 0, s
    if s and any(n is None for n in target):
        known = math.prod(_dim(n) for n in target)
        total = math.prod(_dim(n) for n in s)
        target = tuple((total // known or 1) if n is None else n for n in target)
    return 0, target


def _embedding(c: dict, s: Shape, _: list) -> tuple[int, Shape]:
    dim = _int(c.get("output_dim"))
    return _int(c.get("input_dim")) * dim, (tuple(s) + (dim,)) if s else (None, dim)


def _recurrent(gates: int, extra_bias: int = 0):
    def rule(c: dict, s: Shape, _: list) -> tuple[int, Shape]:
        units = _int(c.get("units"))
        params = gates * (units * (_last(s) + units) + units * (1 + extra_bias) * _bias(c))
        out = ((s[0] if s else None), units) if c.get("return_sequences") else (units,)
        return params, out

    return rule


def _norm(count: int):
    def rule(c: dict, s: Shape, _: list) -> tuple[int, Shape]:
        return count * _last(s), s

    return rule


def _prelu(c: dict, s: Shape, _: list) -> tuple[int, Shape]:
    return (math.prod(_dim(n) for n in s) if s else 1), s


def _attention(c: dict, s: Shape, _: list) -> tuple[int, Shape]:
    heads, key = _int(c.get("num_heads")), _int(c.get("key_dim"))
    return 4 * heads * key * _last(s), s


def _concatenate(c: dict, s: Shape, inputs: list) -> tuple[int, Shape]:
    known = [i for i in inputs if i]
    if not known:
        return 0, s
    first = known[0]
    axis = c.get("axis", -1)
    axis = axis if isinstance(axis, int) and -len(first) <= axis - (1 if axis > 0 else 0) < len(first) else -1
    index = axis - 1 if axis > 0 else axis
    total = sum(_dim(i[index]) for i in known if len(i) == len(first))
    out = list(first)
    out[index] = total
    return 0, tuple(out)


def _repeat(c: dict, s: Shape, _: list) -> tuple[int, Shape]:
    return 0, (_int(c.get("n")),) + (tuple(s) if s else (None,))


def _resizing(c: dict, s: Shape, _: list) -> tuple[int, Shape]:
    return 0, (_int(c.get("height")), _int(c.get("width"))) + ((s[-1],) if s else (None,))


def _einsum(c: dict, s: Shape, _: list) -> tuple[int, Shape]:
    out = _shape(c.get("output_shape") if isinstance(c.get("output_shape"), list) else [c.get("output_shape")])
    return (_last(s) * math.prod(_dim(n) for n in out) if out else 0), out or s


_RULES = {
    "Dense": _dense,
    "conv": _conv,
    "transpose": _transpose,
    "depthwise": _depthwise,
    "separable": _separable,
    "pool": _pool,
    "global": _global,
    "upsampling": _upsampling,
    "padding": _padding,
    "cropping": lambda c, s, i: _padding(c, s, i, sign=-1),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Embedding": _embedding,
    "LSTM": _recurrent(4),
    "GRU": _recurrent(3, extra_bias=1),
    "SimpleRNN": _recurrent(1),
    "BatchNormalization": _norm(4),
    "LayerNormalization": _norm(2),
    "GroupNormalization": _norm(2),
    "RMSNormalization": _norm(1),
    "PReLU": _prelu,
    "MultiHeadAttention": _attention,
    "Concatenate": _concatenate,
    "RepeatVector": _repeat,
    "Resizing": _resizing,
    "EinsumDense": _einsum,
}


def describe_shape(shape: Sequence[Optional[int]]) -> str:
    return "x".join("?" if n is None else str(n) for n in shape)
