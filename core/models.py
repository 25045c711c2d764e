"""Open suspicious Keras models safely and describe them.

Formats: Keras 3 ``.keras`` archives, legacy Keras 2 full-model ``.h5`` files,
and weights-only ``.h5`` files (legacy ``layer_names`` layout or Keras 3
``.weights.h5``) loaded onto the architecture of another model file.

Every file is read into memory and scanned by :mod:`core.safety` first;
Keras then loads a private temporary copy of exactly those bytes with
``compile=False`` and ``safe_mode=True`` (the second wall).
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from core import safety
from core.errors import ModelError, UnsafeModelError, WeightsOnlyError
from core.jobs import Job
from core.tf_env import keras as _keras


@dataclass(frozen=True)
class ConvLayer:
    name: str
    channels: int


@dataclass(frozen=True)
class ModelSummary:
    """What an analyst needs to know before trusting a model file."""

    path: str
    format: str  # "keras", "h5", or "weights+arch"
    input_shape: tuple[int, int, int]  # H, W, C
    num_classes: int
    conv_layers: tuple[ConvLayer, ...]
    params: int
    keras_version: Optional[str]
    sha256: str
    arch_path: Optional[str] = None
    outputs_probabilities: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "conv_layers": [{"name": c.name, "channels": c.channels} for c in self.conv_layers],
            "params": self.params,
            "keras_version": self.keras_version,
            "sha256": self.sha256,
            "arch_path": self.arch_path,
        }

    def describe(self) -> str:
        h, w, c = self.input_shape
        convs = ", ".join(f"{layer.name} ({layer.channels})" for layer in self.conv_layers) or "none"
        saved = self.keras_version or "unknown"
        return (
            f"input {h}x{w}x{c}, {self.num_classes} classes, {self.params:,} parameters, "
            f"conv layers: {convs}; saved by Keras {saved}"
        )


@dataclass
class LoadedModel:
    """A Keras model together with its summary; the model is ours to use, never to modify."""

    model: Any
    summary: ModelSummary
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.summary.input_shape

    @property
    def num_classes(self) -> int:
        return self.summary.num_classes


@dataclass
class _Scanned:
    data: bytes
    kind: str  # "keras", "h5-model", "h5-weights-legacy", "h5-weights-keras3"
    keras_version: Optional[str]


def load_model(path: str | Path, arch: str | Path | None = None) -> LoadedModel:
    """Scan and load a model; with ``arch``, ``path`` supplies only the weights."""
    path = Path(path)
    scanned = _scan(path)
    if arch is not None:
        base = load_model(arch)
        model = base.model
        _load_weights(model, scanned, path, Path(arch))
        return _describe(model, path, "weights+arch", scanned, arch_path=str(arch))
    if scanned.kind.startswith("h5-weights"):
        raise WeightsOnlyError(
            f"{path} holds weights only (no model config): give a model file of the same network for its architecture",
            fixed_by=("architecture",),
        )
    model = _load_full(scanned, path)
    return _describe(model, path, "keras" if scanned.kind == "keras" else "h5", scanned)


def scan_model_file(path: str | Path) -> str:
    """Scan without loading; returns the detected kind. Raises on anything unsafe."""
    return _scan(Path(path)).kind


# ------------------------------------------------------------------ scanning


def _scan(path: Path) -> _Scanned:
    data = safety.read_limited(path)
    fmt = safety.sniff_format(data[:8192])
    if fmt == "zip":
        return _scan_keras_archive(data, path)
    if fmt == "hdf5":
        return _scan_h5(data, path)
    raise ModelError(
        f"{path} is not a Keras model: expected a .keras archive (zip) or an .h5 file (HDF5); "
        f"it starts with {data[:8]!r}"
    )


def _scan_keras_archive(data: bytes, path: Path) -> _Scanned:
    archive = safety.scan_zip(data, str(path))
    names = set(archive.namelist())
    if "config.json" not in names:
        raise ModelError(f"{path} is a zip archive but not a .keras model (no config.json inside)")
    raw = safety.read_member(archive, "config.json", safety.MAX_CONFIG_BYTES, str(path))
    safety.check_config(safety.parse_config_json(raw, str(path)), str(path))
    version = None
    if "metadata.json" in names:
        try:
            meta = json.loads(safety.read_member(archive, "metadata.json", 1 << 20, str(path)))
            version = meta.get("keras_version")
        except ValueError:
            pass
    for name in names:
        if name.endswith(".h5"):
            member = safety.read_member(archive, name, safety.MAX_MEMBER_BYTES, str(path))
            _scan_h5_bytes(member, f"{path}:{name}")
    return _Scanned(data, "keras", version)


def _open_h5_bytes(data: bytes, source: str) -> Any:
    import h5py

    try:
        return h5py.File(io.BytesIO(data), "r")
    except (OSError, ValueError) as exc:
        raise ModelError(f"{source} is not a readable HDF5 file ({exc}): truncated or corrupt?") from None


def _scan_h5_bytes(data: bytes, source: str) -> Any:
    h5 = _open_h5_bytes(data, source)
    try:
        safety.scan_hdf5(h5, source)
    except Exception:
        h5.close()
        raise
    return h5


def _scan_h5(data: bytes, path: Path) -> _Scanned:
    with _scan_h5_bytes(data, str(path)) as h5:
        attrs = h5.attrs
        version = _attr_str(attrs.get("keras_version"))
        if "model_config" in attrs:
            config = safety.parse_config_json(_attr_str(attrs["model_config"]) or "", str(path))
            safety.check_config(config, str(path))
            return _Scanned(data, "h5-model", version)
        if "layer_names" in attrs:
            return _Scanned(data, "h5-weights-legacy", version)
        if "layers" in h5 or "vars" in h5:
            return _Scanned(data, "h5-weights-keras3", version)
    raise ModelError(f"{path} is an HDF5 file but holds neither a Keras model nor Keras weights")


def _attr_str(value: Any) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


# ------------------------------------------------------------------- loading


def _private_copy(data: bytes, suffix: str) -> tuple[tempfile.TemporaryDirectory, Path]:
    tmpdir = tempfile.TemporaryDirectory(prefix="trojanscope-")
    target = Path(tmpdir.name) / f"model{suffix}"
    target.write_bytes(data)
    return tmpdir, target


def _load_full(scanned: _Scanned, path: Path) -> Any:
    keras = _keras()
    suffix = ".keras" if scanned.kind == "keras" else ".h5"
    tmpdir, copy = _private_copy(scanned.data, suffix)
    try:
        with tmpdir:
            return keras.models.load_model(copy, compile=False, safe_mode=True)
    except UnsafeModelError:
        raise
    except Exception as exc:  # noqa: BLE001 -- Keras raises many types for bad files
        raise ModelError(f"Keras could not load {path}: {_first_line(exc)}") from None


def _load_weights(model: Any, scanned: _Scanned, path: Path, arch: Path) -> None:
    if scanned.kind == "keras":
        suffix = ".keras"
    elif scanned.kind == "h5-weights-keras3":
        suffix = ".weights.h5"
    else:
        suffix = ".h5"  # legacy weights, or the weights of a full legacy model
    tmpdir, copy = _private_copy(scanned.data, suffix)
    try:
        with tmpdir:
            model.load_weights(copy)
    except Exception as exc:  # noqa: BLE001 -- as above: any Keras error means a mismatch
        raise ModelError(
            f"the weights in {path} do not fit the architecture of {arch}: {_first_line(exc)}"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ---------------------------------------------------------------- describing


def _describe(model: Any, path: Path, fmt: str, scanned: _Scanned, arch_path: Optional[str] = None) -> LoadedModel:
    keras = _keras()
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(
            f"{path}: expected an image classifier with one input and one output; "
            f"received {len(model.inputs)} inputs and {len(model.outputs)} outputs"
        )
    in_shape = tuple(model.inputs[0].shape)
    out_shape = tuple(model.outputs[0].shape)
    if len(in_shape) != 4 or any(d is None for d in in_shape[1:]) or in_shape[3] not in (1, 3):
        raise ModelError(
            f"{path}: expected an image input shaped (batch, height, width, 1 or 3 channels); received {in_shape}"
        )
    if len(out_shape) != 2 or out_shape[1] is None or out_shape[1] < 2:
        raise ModelError(f"{path}: expected a class-score output shaped (batch, classes); received {out_shape}")
    convs = tuple(
        ConvLayer(layer.name, int(layer.filters))
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.Conv2DTranspose)
    )
    last = model.layers[-1]
    activation = getattr(last, "activation", None)
    probabilities = getattr(activation, "__name__", "") == "softmax" or type(last).__name__ == "Softmax"
    summary = ModelSummary(
        path=str(path),
        format=fmt,
        input_shape=(int(in_shape[1]), int(in_shape[2]), int(in_shape[3])),
        num_classes=int(out_shape[1]),
        conv_layers=convs,
        params=int(model.count_params()),
        keras_version=scanned.keras_version,
        sha256=hashlib.sha256(scanned.data).hexdigest(),
        arch_path=arch_path,
        outputs_probabilities=probabilities,
    )
    return LoadedModel(model, summary)


def require_conv_layer(loaded: LoadedModel, layer: Optional[str] = None) -> str:
    """The conv layer to analyse: ``layer`` if given and valid, else the last Conv2D."""
    names = [c.name for c in loaded.summary.conv_layers]
    if not names:
        raise ModelError(
            f"{loaded.summary.path} has no Conv2D layer: this analysis needs a convolutional image classifier"
        )
    if layer is None:
        return names[-1]
    if layer not in names:
        raise ModelError(f"{loaded.summary.path} has no Conv2D layer named '{layer}'; its conv layers are {names}")
    return layer


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_model_job(path: str | Path, arch: str | Path | None = None) -> Job[LoadedModel]:
    """:func:`load_model` as a job, so the GUI loads on its worker thread."""
    from core.jobs import Progress

    yield Progress(None, f"Loading {Path(path).name} (importing TensorFlow the first time)")
    loaded = load_model(path, arch)
    yield Progress(1.0, f"Loaded {Path(path).name}")
    return loaded
