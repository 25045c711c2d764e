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
import math
import os
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Optional

from core.intake import budget as budget_module
from core.intake.budget import MAX_CHUNK_BYTES, Budget, setting_hint, size_text
from core.errors import DataError, ModelError, UnsafeModelError
from core.intake.param_estimate import estimate_params

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"

MAX_MODEL_BYTES = 2 << 30  # 2 GiB: far above any model this tool analyses
MAX_CONFIG_BYTES = 32 << 20  # a config.json or model_config attribute
MAX_ATTRIBUTE_BYTES = 64 << 20
MAX_ARCHIVE_MEMBERS = 10_000
MAX_MEMBER_BYTES = 8 << 30
MAX_COMPRESSION_RATIO = 200  # zip bombs inflate by 1000x and more
MAX_DATASET_BYTES = 64 << 30
MAX_JSON_DEPTH = 100
INFLATE_STEP = 1 << 20
MAX_HDF5_OBJECTS = 100_000
UNCHECKED_DATASET_BYTES = 1 << 20  # below this, a data set cannot hurt

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


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words an analyst recognises."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_regular(path: Path, error: type = ModelError) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file (links followed).

    Opened non-blocking and checked with ``fstat`` on the open descriptor, so
    a FIFO cannot hang the open and a file swapped for a device after a
    ``stat`` is still refused.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise error(f"cannot read {path}: {exc.strerror or exc}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise error(f"{path} is {file_kind(mode)}, not a regular file: refusing to read it")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_limited(path: Path, limit: int = MAX_MODEL_BYTES, error: type = ModelError) -> bytes:
    """Read a whole regular file, refusing special files and absurd sizes before reading."""
    with open_regular(path, error) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            raise error(f"{path} is empty")
        if size > limit:
            raise error(f"{path} is {size / 2**30:.1f} GiB, over the {limit / 2**30:.0f} GiB limit for a model")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise error(f"{path} grew past the {limit / 2**30:.0f} GiB limit while being read")
    return data


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


_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


def json_depth(raw: bytes) -> int:
    """Deepest nesting of ``raw`` JSON, counted without recursion (strings skipped)."""
    depth = deepest = 0
    for match in _JSON_BRACKET.finditer(_JSON_STRING.sub(b'""', raw)):
        if match.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_config_json(raw: bytes | str, source: str) -> Any:
    """Parse a model config, refusing huge or absurdly nested JSON before parsing it.

    Python's ``json`` recurses once per level and raises RecursionError (an
    internal error, not a refusal) around a thousand levels; Keras configs
    nest a few dozen deep at most.
    """
    if len(raw) > MAX_CONFIG_BYTES:
        raise UnsafeModelError(f"refusing to load {source}: its model config is {len(raw) >> 20} MiB, over the {MAX_CONFIG_BYTES >> 20} MiB limit")
    data = raw.encode("utf-8", "replace") if isinstance(raw, str) else raw
    depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise UnsafeModelError(
            f"refusing to load {source}: its model config is nested {depth} levels deep; "
            f"expected at most {MAX_JSON_DEPTH} (a Keras config nests a few dozen)"
        )
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ModelError(f"{source}: the model config is not valid JSON ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def check_architecture(config: Any, source: str, budget: Optional[Budget] = None) -> int:
    """Refuse a config whose layers would allocate more weights than the memory budget.

    Keras allocates every weight while building the model from its config,
    before any stored weight is read (see :mod:`core.intake.param_estimate`).
    """
    budget = budget or budget_module.current()
    params = estimate_params(config)
    nbytes = params * 4  # float32, the smallest dtype Keras builds weights in by default
    if nbytes > budget.memory_bytes:
        raise UnsafeModelError(
            f"refusing to load {source}: its architecture declares {params:,} weights "
            f"({size_text(nbytes)} to allocate before any weight is read), over the memory budget of "
            f"{budget.memory_gb}; {setting_hint('memory')}"
        )
    return params


# ------------------------------------------------------------------------ HDF5


def scan_hdf5(
    h5file: Any, source: str, error: type = UnsafeModelError, max_ratio: float = 1000.0, total_limit: Optional[int] = None
) -> int:
    """Refuse links and storage that lead outside the file, and bombs; return the declared bytes.

    ``total_limit`` caps the declared size of all data sets together (a model's
    weights are all read into memory; data files are read in batches instead).

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

    declared_total = [0]
    objects = [0]

    def visit_obj(name: str, obj: Any) -> None:
        objects[0] += 1
        if objects[0] > MAX_HDF5_OBJECTS:
            if objects[0] == MAX_HDF5_OBJECTS + 1:
                problems.append(f"it holds more than {MAX_HDF5_OBJECTS:,} groups and data sets")
            return
        check_attrs(name, obj)
        if not isinstance(obj, h5py.Dataset):
            return
        if obj.external:
            problems.append(f"data set '{name}' stores its data in the external file(s) {[e[0] for e in obj.external]}")
            return
        if obj.is_virtual:
            problems.append(f"data set '{name}' is a virtual data set mapped from other files")
            return
        problem = _dataset_problem(name, obj, max_ratio)
        if problem:
            problems.append(problem)
        declared_total[0] += _declared_bytes(obj)

    try:
        check_attrs("/", h5file)
        h5file.visititems(visit_obj)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise error(f"{source} has a damaged HDF5 structure ({exc}): truncated or corrupt?") from None
    if problems:
        raise error(f"refusing to open {source}: {problems[0]}")
    if total_limit is not None and declared_total[0] > total_limit:
        raise error(
            f"refusing to open {source}: its data sets declare {size_text(declared_total[0])} in all, "
            f"over the memory budget of {size_text(total_limit)}; {setting_hint('memory')}"
        )
    return declared_total[0]


def _declared_bytes(dataset: Any) -> int:
    return int(math.prod(int(n) for n in dataset.shape or ())) * int(dataset.dtype.itemsize) if dataset.shape else int(dataset.dtype.itemsize)


def _dataset_problem(name: str, dataset: Any, max_ratio: float) -> Optional[str]:
    """Why reading this data set would cost far more than the file holds, or None.

    The declared size counts whether or not the data was ever written: HDF5
    hands back fill values for storage that was never allocated, so a few-KB
    file can declare gigabytes (allocated late, never written), and one
    compressed chunk is inflated whole even to read a single value.
    """
    nbytes = _declared_bytes(dataset)
    if nbytes > MAX_DATASET_BYTES:
        return f"data set '{name}' declares {size_text(nbytes)}"
    if dataset.chunks is not None:
        chunk = int(math.prod(dataset.chunks)) * int(dataset.dtype.itemsize)
        if chunk > MAX_CHUNK_BYTES:
            return (
                f"data set '{name}' is stored in chunks of {size_text(chunk)} "
                f"(over {size_text(MAX_CHUNK_BYTES)}): reading one value would inflate a whole chunk"
            )
    if nbytes <= UNCHECKED_DATASET_BYTES:
        return None
    stored = dataset.id.get_storage_size()
    filtered = dataset.id.get_create_plist().get_nfilters() > 0
    if not filtered and stored < nbytes // 2:
        return (
            f"data set '{name}' declares {size_text(nbytes)} but stores only {size_text(stored)} "
            "(never written: reading it would allocate fill values)"
        )
    if filtered and nbytes > max_ratio * max(stored, 1):
        return f"data set '{name}' would inflate {size_text(stored)} stored to {size_text(nbytes)} (compression bomb?)"
    return None


# ------------------------------------------------------------------------- zip


def read_own_archive(path: Path, max_bytes: int, kind: str, origin: str, fixed_by: tuple[str, ...] = (),
                     inflated_limit: Optional[int] = None) -> tuple[bytes, zipfile.ZipFile]:
    """Read an .npz this tool writes (a STRIP or scan profile, reversed triggers) as hostile bytes.

    A regular file, at most ``max_bytes``, a zip whose directory passes
    :func:`scan_zip` (nothing inflated yet; with ``inflated_limit``, the
    members together may declare no more). ``kind`` names it ("a scan
    profile"), ``origin`` says where a good one comes from.
    """
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file: expected {kind} (.npz) {origin}", fixed_by=fixed_by)
    size = path.stat().st_size
    if size > max_bytes:
        raise DataError(f"{path} is {size >> 20} MiB, too large for {kind}")
    data = path.read_bytes()
    if sniff_format(data[:8]) != "zip":
        raise DataError(f"{path} is not {kind}: expected an .npz archive {origin}", fixed_by=fixed_by)
    return data, scan_zip(data, str(path), error=DataError, broken=DataError, total_limit=inflated_limit)


def scan_zip(
    data: bytes | Path | BinaryIO,
    source: str,
    error: type = UnsafeModelError,
    broken: type = ModelError,
    member_limit: int = MAX_MEMBER_BYTES,
    total_limit: Optional[int] = None,
) -> zipfile.ZipFile:
    """Open a zip archive after checking its directory; nothing is inflated yet.

    ``error`` is raised for dangerous content, ``broken`` for damaged archives.
    Each member's declared size must fit ``member_limit`` and all together
    ``total_limit``; the sizes are only claims, which :func:`inflate_member`
    holds them to while inflating.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise broken(f"{source} is not a readable zip archive ({_first_line(exc)}): truncated or corrupt?") from None
    infos = archive.infolist()
    if len(infos) > MAX_ARCHIVE_MEMBERS:
        raise error(f"refusing to open {source}: it holds {len(infos)} members")
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise error(f"refusing to open {source}: member '{twice}' appears twice (which one is read depends on the reader)")
    total = 0
    for info in infos:
        name = info.filename
        if name.startswith("/") or ".." in Path(name).parts or "\\" in name:
            raise error(f"refusing to open {source}: member '{name}' has an unsafe path")
        if info.flag_bits & 0x1:
            raise error(f"refusing to open {source}: member '{name}' is encrypted (models and data are never encrypted)")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise broken(
                f"{source}: member '{name}' uses compression method {info.compress_type}; expected stored or deflate"
            )
        if info.file_size > member_limit:
            raise error(
                f"refusing to open {source}: member '{name}' declares {size_text(info.file_size)}, "
                f"over the limit of {size_text(member_limit)}; {setting_hint('memory')}"
            )
        if info.file_size > (1 << 20) and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise error(
                f"refusing to open {source}: member '{name}' would inflate {info.compress_size} bytes "
                f"to {info.file_size >> 20} MiB (zip bomb?)"
            )
        total += info.file_size
    if total_limit is not None and total > total_limit:
        raise error(
            f"refusing to open {source}: its members declare {size_text(total)} in all, "
            f"over the limit of {size_text(total_limit)}; {setting_hint('memory')}"
        )
    return archive


def inflate_member(
    archive: zipfile.ZipFile, name: str, limit: int, source: str, keep: bool = True, broken: type = ModelError
) -> Optional[bytes]:
    """Inflate one member with a running byte count that stops at ``limit``.

    The central directory's sizes can lie: zipfile stops at the declared size
    and checks the CRC at the end, so a member that inflates to more or less
    than it declares, or whose CRC does not match, is refused here as damaged.
    With ``keep=False`` nothing is held in memory (a verification pass).
    """
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise UnsafeModelError(
            f"refusing to open {source}: '{name}' declares {size_text(info.file_size)}, over the limit of {size_text(limit)}"
        )
    pieces: list[bytes] = []
    count = 0
    try:
        with archive.open(info) as handle:
            while True:
                piece = handle.read(INFLATE_STEP)
                if not piece:
                    break
                count += len(piece)
                if count > min(limit, info.file_size):
                    raise UnsafeModelError(f"refusing to open {source}: '{name}' inflates past its declared size")
                if keep:
                    pieces.append(piece)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise broken(f"{source}: member '{name}' is damaged ({_first_line(exc)}): its sizes or CRC do not match its data") from None
    if count != info.file_size:
        raise broken(f"{source}: member '{name}' declares {info.file_size} bytes but inflates to {count}")
    return b"".join(pieces) if keep else None


def read_member(archive: zipfile.ZipFile, name: str, limit: int, source: str) -> bytes:
    """Inflate one member into memory, never past ``limit`` (the directory can lie)."""
    data = inflate_member(archive, name, limit, source)
    if data is None:  # inflate_member keeps the bytes whenever it is asked to
        raise UnsafeModelError(f"{source}: member {name} could not be read")
    return data


# ------------------------------------------------------------------------- npy


@dataclass(frozen=True)
class NpyHeader:
    shape: tuple[int, ...]
    fortran_order: bool
    dtype: Any
    offset: int  # bytes before the array data

    @property
    def count(self) -> int:
        return int(math.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.count * int(self.dtype.itemsize)


def read_npy_header(handle: BinaryIO, where: str, error: type = UnsafeModelError) -> NpyHeader:
    """Parse an ``.npy`` header from a stream without allocating the array.

    Object arrays are refused: NumPy stores them as pickles, which run code.
    """
    import numpy as np
    from numpy.lib import format as npy

    try:
        major, _minor = npy.read_magic(handle)
        read = npy.read_array_header_1_0 if major == 1 else npy.read_array_header_2_0
        shape, fortran, dtype = read(handle)
        offset = handle.tell()
    except (ValueError, EOFError, OSError, SyntaxError, TypeError, zipfile.BadZipFile, zlib.error) as exc:
        raise error(f"{where} has a malformed .npy header ({_first_line(exc)})") from None
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise error(f"{where} holds Python objects (a pickle, which could run code); expected numbers")
    if any(not isinstance(n, int) or n < 0 for n in shape):
        raise error(f"{where} has an absurd .npy shape {shape}")
    return NpyHeader(tuple(int(n) for n in shape), bool(fortran), dtype, int(offset))


def npz_member_header(archive: zipfile.ZipFile, name: str, source: str, error: type = UnsafeModelError) -> NpyHeader:
    """The header of one ``.npy`` member, checked against the member's declared size."""
    info = archive.getinfo(name)
    where = f"{source}: '{name}'"
    try:
        with archive.open(info) as handle:
            header = read_npy_header(handle, where, error)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError) as exc:
        raise error(f"{where} is damaged ({_first_line(exc)})") from None
    if header.offset + header.nbytes != info.file_size:
        raise error(
            f"{where} has a lying .npy header: it declares shape {header.shape} ({size_text(header.nbytes)}) "
            f"but the member holds {size_text(max(info.file_size - header.offset, 0))}"
        )
    return header


def read_npz_array(archive: zipfile.ZipFile, name: str, source: str, limit: int, error: type = UnsafeModelError) -> Any:
    """Read one array of an ``.npz`` with its size checked first and a running byte count.

    ``np.load`` would allocate what the header declares before looking at
    the data; here the header must agree with the member's size and fit the
    budget before anything is allocated, and the inflation stops at the size.
    """
    import numpy as np

    header = npz_member_header(archive, name, source, error)
    if header.nbytes > limit:
        raise error(
            f"refusing to open {source}: '{name}' declares shape {header.shape} ({size_text(header.nbytes)}), "
            f"over the memory budget of {size_text(limit)}; {setting_hint('memory')}"
        )
    array = np.empty(header.count, header.dtype)
    target = array.view(np.uint8) if header.count else np.empty(0, np.uint8)
    filled = 0
    try:
        with archive.open(name) as handle:
            handle.read(header.offset)
            while filled < header.nbytes:
                piece = handle.read(min(INFLATE_STEP, header.nbytes - filled))
                if not piece:
                    break
                target[filled : filled + len(piece)] = np.frombuffer(piece, np.uint8)
                filled += len(piece)
            if handle.read(1):
                raise error(f"{source}: '{name}' holds more data than its header declares")
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError) as exc:
        raise error(f"{source}: member '{name}' is damaged ({_first_line(exc)}): its sizes or CRC do not match its data") from None
    if filled != header.nbytes:
        raise error(f"{source}: '{name}' ends after {filled} of the {header.nbytes} bytes its header declares")
    return array.reshape(header.shape, order="F" if header.fortran_order else "C")


__all__ = [
    "ALLOWED_LAYERS",
    "check_architecture",
    "check_config",
    "inflate_member",
    "open_regular",
    "read_npz_array",
    "read_own_archive",
    "parse_config_json",
    "read_limited",
    "read_member",
    "scan_hdf5",
    "scan_zip",
    "sniff_format",
]
