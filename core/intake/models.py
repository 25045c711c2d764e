"""Open suspicious Keras models safely and describe them.

Formats: Keras 3 ``.keras`` archives, legacy Keras 2 full-model ``.h5`` files,
and weights-only ``.h5`` files (legacy ``layer_names`` layout or Keras 3
``.weights.h5``) loaded onto the architecture of another model file.

Every file is read into memory and scanned by :mod:`core.intake.safety` first, in a
child process with memory and time limits (:mod:`core.intake.isolation`), with every
declared size checked against :mod:`core.intake.budget` (weights, zip members, the
weights the architecture will allocate); Keras then loads a private temporary
copy of exactly the bytes scanned with ``compile=False`` and
``safe_mode=True`` (the second wall).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from core.intake import budget as budget_module
from core.intake import safety
from core.intake.budget import Budget, setting_hint, size_text
from core.errors import ModelError, TrojanScopeError, UnsafeModelError, WeightsOnlyError
from core.intake.isolation import run_isolated
from core.jobs import Job
from core.intake.tf_env import keras as _keras


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
    scanned = _scan_isolated(path)
    if arch is not None:
        base = load_model(arch)
        model = base.model
        _load_weights(model, scanned, path, Path(arch))
        return _describe(model, path, "weights+arch", scanned, arch_path=str(arch))
    if scanned.kind.startswith("h5-weights"):
        raise _weights_only(path)
    model = _load_full(scanned, path)
    return _describe(model, path, "keras" if scanned.kind == "keras" else "h5", scanned)


def _weights_only(path: Path) -> WeightsOnlyError:
    return WeightsOnlyError(
        f"{path} holds weights only (no model config): give a model file of the same network for its architecture",
        fixed_by=("architecture",),
    )


# ------------------------------------------------- scanned here, loaded elsewhere
# Triage (core.detect.model_level.triage) scans every file where the analyst runs it and hands only the bytes
# that passed to whoever judges them: this process, or a Dask worker on another machine. The worker scans
# them again (the same isolated pre-scan: nothing it receives is trusted more than a file) before Keras sees them.


@dataclass(frozen=True)
class ScannedModel:
    """A full model file's bytes that passed the isolated pre-scan, with what the scan learnt."""

    path: str  # the analyst's file, named in every message
    data: bytes
    kind: str  # "keras" or "h5-model"
    keras_version: Optional[str]
    sha256: str


def scan_model(path: str | Path) -> ScannedModel:
    """The pre-scan :func:`load_model` runs (isolated child, budgets), without loading: refuses what it would refuse."""
    path = Path(path)
    scanned = _scan_isolated(path)
    if scanned.kind.startswith("h5-weights"):
        raise _weights_only(path)
    return ScannedModel(str(path), scanned.data, scanned.kind, scanned.keras_version, hashlib.sha256(scanned.data).hexdigest())


def load_scanned(scanned: ScannedModel, rescan: bool = True) -> LoadedModel:
    """Load the bytes of :func:`scan_model`; ``rescan`` scans them again first, in isolation (bytes that crossed a network)."""
    if hashlib.sha256(scanned.data).hexdigest() != scanned.sha256:
        raise ModelError(f"{scanned.path}: the bytes received are not the ones that were checked (SHA-256 differs): refusing them")
    if scanned.kind not in ("keras", "h5-model"):
        raise ModelError(f"{scanned.path}: not a full model ({scanned.kind})")
    inner = _Scanned(scanned.data, scanned.kind, scanned.keras_version)
    path = Path(scanned.path)
    if rescan:
        _rescan(scanned)
    model = _load_full(inner, path)
    return _describe(model, path, "keras" if scanned.kind == "keras" else "h5", inner)


def _rescan(scanned: ScannedModel) -> None:
    """The isolated pre-scan of bytes held in memory: written to a private file for the child, messages naming the original."""
    tmpdir, copy = _private_copy(scanned.data, ".keras" if scanned.kind == "keras" else ".h5")
    with tmpdir:
        try:
            kind, _version, digest = run_isolated("core.intake.models:prescan", (str(copy),), scanned.path, budget_module.current(), ModelError)
        except TrojanScopeError as exc:
            raise type(exc)(str(exc).replace(str(copy), scanned.path), fixed_by=exc.fixed_by) from None
    if digest != scanned.sha256 or kind != scanned.kind:
        raise ModelError(f"{scanned.path}: the second check of its bytes disagrees with the first: refusing it")


# ------------------------------------------------------------------ scanning


def _scan_isolated(path: Path) -> _Scanned:
    """Scan in a limited child process (:mod:`core.intake.isolation`), then keep exactly the bytes it scanned.

    The parent reads the file once; the child reads and scans it and returns
    the SHA-256 of what it scanned, so a file swapped between the two reads is
    refused rather than loaded unscanned.
    """
    data = safety.read_limited(path)
    kind, version, digest = run_isolated("core.intake.models:prescan", (str(path),), str(path), budget_module.current(), ModelError)
    if digest != hashlib.sha256(data).hexdigest():
        raise ModelError(f"{path} changed while it was being checked: refusing to load it")
    return _Scanned(data, kind, version)


def prescan(path: str) -> tuple[str, Optional[str], str]:
    """The whole scan of one model file: (kind, Keras version, SHA-256 of the bytes scanned).

    Runs in the isolated child; never imports TensorFlow.
    """
    scanned = _scan(Path(path))
    return scanned.kind, scanned.keras_version, hashlib.sha256(scanned.data).hexdigest()


def _scan(path: Path, budget: Optional[Budget] = None) -> _Scanned:
    budget = budget or budget_module.current()
    data = safety.read_limited(path)
    fmt = safety.sniff_format(data[:8192])
    if fmt == "zip":
        return _scan_keras_archive(data, path, budget)
    if fmt == "hdf5":
        return _scan_h5(data, path, budget)
    raise ModelError(
        f"{path} is not a Keras model: expected a .keras archive (zip) or an .h5 file (HDF5); "
        f"it starts with {data[:8]!r}"
    )


# Bytes a weight costs once Keras's npz store turns it into Python lists
# (``tolist()``): an 8-byte list slot and a 24-byte float object.
PYTHON_FLOAT_BYTES = 32


def _scan_keras_archive(data: bytes, path: Path, budget: Budget) -> _Scanned:
    source = str(path)
    archive = safety.scan_zip(data, source, member_limit=budget.memory_bytes)
    infos = archive.infolist()
    names = {info.filename for info in infos}
    if "config.json" not in names:
        raise ModelError(f"{path} is a zip archive but not a .keras model (no config.json inside)")
    declared = sum(info.file_size for info in infos)
    if len(infos) > 3 and declared > budget.disk_bytes:
        raise UnsafeModelError(
            f"refusing to load {path}: Keras would extract its {len(infos)} members "
            f"({size_text(declared)}) to the temporary folder, over the disk budget of {budget.disk_gb}; "
            f"{setting_hint('disk')}"
        )
    raw = safety.read_member(archive, "config.json", safety.MAX_CONFIG_BYTES, source)
    config = safety.parse_config_json(raw, source)
    safety.check_config(config, source)
    safety.check_architecture(config, source, budget)
    version = None
    if "metadata.json" in names:
        try:
            meta = json.loads(safety.read_member(archive, "metadata.json", 1 << 20, source))
            version = meta.get("keras_version") if isinstance(meta, dict) else None
        except (ValueError, RecursionError):
            pass
    for info in infos:
        name = info.filename
        if name.endswith(".h5"):
            member = safety.read_member(archive, name, budget.memory_bytes, source)
            _scan_h5_bytes(member, f"{path}:{name}", budget.memory_bytes).close()
        elif name.endswith(".npz"):
            _scan_weights_npz(safety.read_member(archive, name, budget.memory_bytes, source), f"{path}:{name}", budget)
        elif name not in ("config.json", "metadata.json"):
            safety.inflate_member(archive, name, budget.disk_bytes, source, keep=False)
    return _Scanned(data, "keras", version)


def _scan_weights_npz(data: bytes, source: str, budget: Budget) -> None:
    """Keras's npz weight store: numbers only, and small enough once turned into Python lists."""
    inner = safety.scan_zip(data, source, member_limit=budget.memory_bytes, total_limit=budget.memory_bytes)
    total = 0
    for info in inner.infolist():
        header = safety.npz_member_header(inner, info.filename, source)
        total += header.count
        if total * PYTHON_FLOAT_BYTES > budget.memory_bytes:
            raise UnsafeModelError(
                f"refusing to load {source}: its weights declare {total:,} values, which Keras's npz loader "
                f"expands to Python lists of {size_text(total * PYTHON_FLOAT_BYTES)}, over the memory budget of "
                f"{budget.memory_gb}; {setting_hint('memory')}"
            )
        safety.inflate_member(inner, info.filename, budget.memory_bytes, source, keep=False)


def _open_h5_bytes(data: bytes, source: str) -> Any:
    import h5py

    try:
        return h5py.File(io.BytesIO(data), "r")
    except (OSError, ValueError) as exc:
        raise ModelError(f"{source} is not a readable HDF5 file ({exc}): truncated or corrupt?") from None


def _scan_h5_bytes(data: bytes, source: str, total_limit: int) -> Any:
    h5 = _open_h5_bytes(data, source)
    try:
        safety.scan_hdf5(h5, source, total_limit=total_limit)
    except Exception:
        h5.close()
        raise
    return h5


def _scan_h5(data: bytes, path: Path, budget: Budget) -> _Scanned:
    with _scan_h5_bytes(data, str(path), budget.memory_bytes) as h5:
        attrs = h5.attrs
        version = _attr_str(attrs.get("keras_version"))
        if "model_config" in attrs:
            config = safety.parse_config_json(_attr_str(attrs["model_config"]) or "", str(path))
            safety.check_config(config, str(path))
            safety.check_architecture(config, str(path), budget)
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
        with tmpdir, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras's "Skipping nested container ..." lines: a mismatch is reported below
            model.load_weights(copy)
    except Exception as exc:  # noqa: BLE001 -- as above: any Keras error means a mismatch
        raise ModelError(f"the weights in {path} do not fit the architecture of {arch}: {_weights_mismatch(exc)}") from None


def _weights_mismatch(exc: BaseException) -> str:
    """Keras's multi-line loading error as one complete clause: the first layer that does not fit, and why.

    Keras 3 says "A total of 2 objects could not be loaded. Example error message for object <Conv2D name=c1,
    built=True>:" and puts the reason, the variable's values and the list of layers on the lines after it.
    """
    text = str(exc)
    layer = re.search(r"object <(\w+) name=([^,>]+)", text)
    shapes = re.search(r"variable\.shape=(\([^)]*\)), Received: value\.shape=(\([^)]*\))", text)
    listed = re.search(r"List of objects that could not be loaded:\s*\[(.*)\]", text, re.S)
    if layer is None:
        return _first_line(exc).rstrip(":")
    kind, name = layer.groups()
    clause = f"layer '{name}' ({kind})"
    if shapes:
        clause += f" has weights shaped {shapes.group(1)} in the architecture but {shapes.group(2)} in the weights file"
    else:
        reason = next((line.strip() for line in text.splitlines()[1:] if line.strip()), "")
        clause += f" does not fit ({reason.split('. ')[0]})" if reason else " does not fit"
    others = re.findall(r"name=([^,>]+)", listed.group(1)) if listed else []
    if len(others) > 1:
        clause += f"; {len(others)} layers in all do not fit ({', '.join(others)})"
    return clause


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
