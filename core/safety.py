"""Read a model or data file as data before anything trusts it.

Keras's ``safe_mode`` only guards the native ``.keras`` format and has been
bypassed repeatedly; legacy ``.h5`` models are deserialised with no guard at
all. So, in the spirit of Netron, TrojanScope first reads every file as plain
bytes, JSON and HDF5 structure and refuses it, naming the culprit, when it
could run code or reach other files:

- HDF5: external links, soft links, external raw storage and virtual data sets
  (each can make h5py read the analyst's own files), oversized attributes and
  compression bombs.
- ``.keras`` / ``.npz`` zip archives: member names, member sizes and
  compression ratios are checked from the central directory before anything
  is inflated.
- Model configs: every serialised object must be a built-in Keras class from
  an exact allow-list, from a Keras module; Lambda layers, ``__lambda__``
  functions, functions from other modules and registered custom objects are
  refused.

The scan works on bytes already read into memory, and the loader hands Keras a
private copy of exactly those bytes, so the file cannot be swapped between the
check and the load.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from core.errors import ModelError, UnsafeModelError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"

MAX_MODEL_BYTES = 2 << 30  # 2 GiB: far above any model this tool analyses
MAX_CONFIG_BYTES = 32 << 20  # a config.json or model_config attribute
MAX_ATTRIBUTE_BYTES = 64 << 20
MAX_ARCHIVE_MEMBERS = 10_000
MAX_MEMBER_BYTES = 8 << 30
MAX_COMPRESSION_RATIO = 200  # zip bombs inflate by 1000x and more
MAX_DATASET_BYTES = 64 << 30

# Exactly the Keras layer classes a saved image classifier may use. Left out
# on purpose: Lambda (marshalled Python bytecode), the bare Layer base,
# TFSMLayer / TorchModuleWrapper / JaxLayer / FlaxLayer (load foreign
# programs or pickles), lookup and text layers (read vocabulary files from
# paths), and Keras 2's TFOpLambda family (call TensorFlow functions by name).
ALLOWED_LAYERS = frozenset(
    """
    Activation ActivityRegularization AdaptiveAveragePooling1D
    AdaptiveAveragePooling2D AdaptiveAveragePooling3D AdaptiveMaxPooling1D
    AdaptiveMaxPooling2D AdaptiveMaxPooling3D Add AdditiveAttention AlphaDropout
    Attention AutoContrast Average AveragePooling1D AveragePooling2D
    AveragePooling3D AvgPool1D AvgPool2D AvgPool3D BatchNormalization
    Bidirectional CenterCrop Concatenate Conv1D Conv1DTranspose Conv2D
    Conv2DTranspose Conv3D Conv3DTranspose ConvLSTM1D ConvLSTM2D ConvLSTM3D
    Convolution1D Convolution1DTranspose Convolution2D Convolution2DTranspose
    Convolution3D Convolution3DTranspose Cropping1D Cropping2D Cropping3D Dense
    DepthwiseConv1D DepthwiseConv2D Dot Dropout ELU EinsumDense Embedding
    Flatten GRU GRUCell GaussianDropout GaussianNoise GlobalAveragePooling1D
    GlobalAveragePooling2D GlobalAveragePooling3D GlobalAvgPool1D GlobalAvgPool2D
    GlobalAvgPool3D GlobalMaxPool1D GlobalMaxPool2D GlobalMaxPool3D
    GlobalMaxPooling1D GlobalMaxPooling2D GlobalMaxPooling3D GroupNormalization
    Identity InputLayer LSTM LSTMCell LayerNormalization LeakyReLU Masking
    MaxPool1D MaxPool2D MaxPool3D MaxPooling1D MaxPooling2D MaxPooling3D Maximum
    Minimum MultiHeadAttention Multiply Normalization PReLU Permute
    RMSNormalization RandomBrightness RandomContrast RandomCrop RandomFlip
    RandomRotation RandomTranslation RandomZoom ReLU RepeatVector Rescaling
    Reshape Resizing SeparableConv1D SeparableConv2D SeparableConvolution1D
    SeparableConvolution2D SimpleRNN SimpleRNNCell Softmax SpatialDropout1D
    SpatialDropout2D SpatialDropout3D Subtract TimeDistributed UnitNormalization
    UpSampling1D UpSampling2D UpSampling3D ZeroPadding1D ZeroPadding2D
    ZeroPadding3D
    Functional Model Sequential
    """.split()
)

# Other serialised objects a model config legitimately holds.
ALLOWED_OBJECTS = frozenset(
    """
    Constant GlorotNormal GlorotUniform HeNormal HeUniform IdentityInitializer
    LecunNormal LecunUniform Ones Orthogonal OrthogonalInitializer RandomNormal
    RandomUniform TruncatedNormal VarianceScaling Zeros
    L1 L1L2 L2 OrthogonalRegularizer
    MaxNorm MinMaxNorm NonNeg UnitNorm
    DTypePolicy FloatDTypePolicy Policy
    __keras_tensor__ __tuple__
    """.split()
)

ALLOWED_ACTIVATIONS = frozenset(
    """
    celu elu exponential gelu glu hard_shrink hard_sigmoid hard_silu hard_swish
    hard_tanh leaky_relu linear log_sigmoid log_softmax mish relu relu6 selu
    sigmoid silu soft_shrink softmax softplus softsign sparse_plus sparse_sigmoid
    sparsemax squareplus swish tanh tanh_shrink threshold
    """.split()
)

ALLOWED_MODULES = frozenset(
    {
        None,
        "keras",
        "keras.layers",
        "keras.initializers",
        "keras.regularizers",
        "keras.constraints",
        "keras.activations",
        "keras.models",
        "keras.src.models.functional",
        "keras.src.models.sequential",
        "keras.src.models.model",
    }
)

# Parts of a saved config Keras does not deserialise when we load with
# compile=False; scanning them would refuse models over a custom loss they
# never use.
IGNORED_KEYS = frozenset({"compile_config", "training_config"})


@dataclass
class ConfigFinding:
    """What a config walk learnt: the layers, and what made it unsafe."""

    layers: list[tuple[str, str]] = field(default_factory=list)  # (name, class)
    problems: list[str] = field(default_factory=list)


def sniff_format(head: bytes) -> str:
    """'hdf5', 'zip' or 'unknown', from the first bytes (HDF5 may have a userblock)."""
    if head.startswith(ZIP_MAGIC):
        return "zip"
    for offset in (0, 512, 1024, 2048, 4096):
        if head[offset : offset + 8] == HDF5_MAGIC:
            return "hdf5"
    return "unknown"


def read_limited(path: Path, limit: int = MAX_MODEL_BYTES) -> bytes:
    """Read a whole file, refusing absurd sizes before reading them."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise ModelError(f"{path} is not a file")
    if size == 0:
        raise ModelError(f"{path} is empty")
    if size > limit:
        raise ModelError(f"{path} is {size / 2**30:.1f} GiB, over the {limit / 2**30:.0f} GiB limit for a model")
    return path.read_bytes()


# --------------------------------------------------------------------- configs


def check_config(config: Any, source: str) -> ConfigFinding:
    """Walk a Keras model config and refuse anything outside the allow-lists.

    All problems are collected first (like Keras's loader) so the message can
    say how many there are and name the first.
    """
    finding = ConfigFinding()
    _walk(config, finding, layer_name=None, key=None)
    if finding.problems:
        first = finding.problems[0]
        more = f" (and {len(finding.problems) - 1} more problem(s))" if len(finding.problems) > 1 else ""
        raise UnsafeModelError(f"refusing to load {source}: {first}{more}")
    return finding


def _walk(node: Any, finding: ConfigFinding, layer_name: Optional[str], key: Optional[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, finding, layer_name, key)
        return
    if isinstance(node, str):
        if key in ("activation", "recurrent_activation") and node not in ALLOWED_ACTIVATIONS:
            where = f"layer '{layer_name}'" if layer_name else "the config"
            finding.problems.append(f"{where} uses activation '{node}', which is not a built-in Keras activation")
        return
    if not isinstance(node, dict):
        return
    if "class_name" in node:
        layer_name = _check_object(node, finding, layer_name, key)
    for k, value in node.items():
        if k in IGNORED_KEYS:
            continue
        _walk(value, finding, layer_name, k)


def _check_object(node: dict, finding: ConfigFinding, layer_name: Optional[str], key: Optional[str]) -> Optional[str]:
    cls = node.get("class_name")
    module = node.get("module")
    registered = node.get("registered_name")
    config = node.get("config") if isinstance(node.get("config"), dict) else {}
    name = config.get("name") or node.get("name") or layer_name
    where = f"layer '{name}'" if name else "an object in the config"
    problems = finding.problems

    if not isinstance(cls, str):
        problems.append(f"{where} has a malformed class_name")
        return layer_name
    if cls == "Lambda" or cls == "__lambda__":
        problems.append(
            f"{where} is a Lambda layer, which carries Python code that would run on load"
        )
        return name
    if cls == "function":
        fn = node.get("config")
        if module == "keras.activations" and fn in ALLOWED_ACTIVATIONS:
            return layer_name
        problems.append(f"{where} references the function {module}.{fn}, which is not a built-in Keras activation")
        return layer_name
    if module not in ALLOWED_MODULES:
        problems.append(f"{where} ({cls}) comes from module '{module}', outside Keras's built-ins (custom object)")
        return name
    if registered not in (None, cls, "Functional", "Sequential") and registered != f"keras>{cls}":
        problems.append(f"{where} is the registered custom object '{registered}' and needs custom code")
        return name
    if cls in ALLOWED_LAYERS:
        if key in (None, "layers", "layer", "cell", "forward_layer", "backward_layer") and name:
            finding.layers.append((str(name), cls))
        return name
    if cls in ALLOWED_OBJECTS:
        return layer_name
    problems.append(f"{where} has class '{cls}', which is not a built-in Keras layer TrojanScope allows (custom object?)")
    return name


def parse_config_json(raw: bytes | str, source: str) -> Any:
    if len(raw) > MAX_CONFIG_BYTES:
        raise UnsafeModelError(f"refusing to load {source}: its model config is {len(raw) >> 20} MiB, over the {MAX_CONFIG_BYTES >> 20} MiB limit")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{source}: the model config is not valid JSON ({exc})") from None


# ------------------------------------------------------------------------ HDF5


def scan_hdf5(h5file: Any, source: str, error: type = UnsafeModelError, max_ratio: float = 1000.0) -> None:
    """Refuse links and storage that lead outside the file, and bombs.

    ``h5file`` is an open ``h5py.File``. Soft links are refused too: Keras
    never writes them, and refusing them keeps the walk free of cycles.
    """
    import h5py

    problems: list[str] = []

    def visit(name: str, link: Any) -> None:
        if isinstance(link, h5py.ExternalLink):
            problems.append(f"'{name}' is an external link to {link.filename}:{link.path}")
        elif isinstance(link, h5py.SoftLink):
            problems.append(f"'{name}' is a soft link to {link.path}")

    try:
        h5file.visititems_links(visit)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise error(f"{source} has a damaged HDF5 structure ({exc}): truncated or corrupt?") from None
    if problems:
        raise error(f"refusing to open {source}: {problems[0]} (HDF5 links can read other files)")

    def check_attrs(name: str, obj: Any) -> None:
        for attr_name in obj.attrs:
            try:
                size = obj.attrs.get_id(attr_name).get_storage_size()
            except RuntimeError:  # HDF5 reports an empty attribute as an error
                size = 0
            if size > MAX_ATTRIBUTE_BYTES:
                problems.append(f"attribute '{attr_name}' of '{name}' is {size >> 20} MiB")

    def visit_obj(name: str, obj: Any) -> None:
        check_attrs(name, obj)
        if not isinstance(obj, h5py.Dataset):
            return
        if obj.external:
            problems.append(f"data set '{name}' stores its data in the external file(s) {[e[0] for e in obj.external]}")
            return
        if obj.is_virtual:
            problems.append(f"data set '{name}' is a virtual data set mapped from other files")
            return
        nbytes = obj.size * obj.dtype.itemsize
        if nbytes > MAX_DATASET_BYTES:
            problems.append(f"data set '{name}' claims {nbytes / 2**30:.0f} GiB")
            return
        stored = obj.id.get_storage_size()
        compressed = obj.compression is not None or obj.chunks is not None
        if compressed and nbytes > (64 << 20) and nbytes > max_ratio * max(stored, 1):
            problems.append(
                f"data set '{name}' would inflate {stored} stored bytes to {nbytes >> 20} MiB (compression bomb?)"
            )

    try:
        check_attrs("/", h5file)
        h5file.visititems(visit_obj)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise error(f"{source} has a damaged HDF5 structure ({exc}): truncated or corrupt?") from None
    if problems:
        raise error(f"refusing to open {source}: {problems[0]}")


# ------------------------------------------------------------------------- zip


def scan_zip(data: bytes | Path, source: str, error: type = UnsafeModelError, broken: type = ModelError) -> zipfile.ZipFile:
    """Open a zip archive after checking its directory; nothing is inflated yet.

    ``error`` is raised for dangerous content, ``broken`` for damaged archives.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise broken(f"{source} is not a readable zip archive ({exc}): truncated or corrupt?") from None
    infos = archive.infolist()
    if len(infos) > MAX_ARCHIVE_MEMBERS:
        raise error(f"refusing to open {source}: it holds {len(infos)} members")
    for info in infos:
        name = info.filename
        if name.startswith("/") or ".." in Path(name).parts or "\\" in name:
            raise error(f"refusing to open {source}: member '{name}' has an unsafe path")
        if info.file_size > MAX_MEMBER_BYTES:
            raise error(f"refusing to open {source}: member '{name}' claims {info.file_size >> 20} MiB")
        if info.file_size > (1 << 20) and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise error(
                f"refusing to open {source}: member '{name}' would inflate {info.compress_size} bytes "
                f"to {info.file_size >> 20} MiB (zip bomb?)"
            )
    return archive


def read_member(archive: zipfile.ZipFile, name: str, limit: int, source: str) -> bytes:
    """Inflate one member, never past ``limit`` (the directory can lie)."""
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise UnsafeModelError(f"refusing to open {source}: '{name}' is {info.file_size >> 20} MiB, over the {limit >> 20} MiB limit")
    with archive.open(info) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise UnsafeModelError(f"refusing to open {source}: '{name}' inflates past its declared size")
    return data


def iter_strings(values: Iterable[Any]) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values]


__all__ = [
    "ALLOWED_LAYERS",
    "check_config",
    "parse_config_json",
    "read_limited",
    "read_member",
    "scan_hdf5",
    "scan_zip",
    "sniff_format",
]
