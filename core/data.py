"""Open analysts' data in its many layouts and stream it in the model's layout.

Sources: CSAW-course HDF5 (``data``/``label``, channels first or last), HDF5
with ``x``/``y``, ``.npz`` (``x``/``y``), a folder of class sub-folders, or any
other folder of images (unlabelled, recursive). Everything is delivered as
float32 batches shaped like the model's input (N, H, W, C) with the pixel
values as stored (0..255 for images); dividing by 255 is the separate
``scale`` decision (see :mod:`core.evaluate`), because the CSAW course shipped
models of both kinds.

Folders and HDF5 files are streamed batch by batch, so 50,000 images never
sit in memory at once. Files that cannot be read as images are skipped and
reported with the reason; they never stop a job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from core import safety
from core.errors import DataError

# OpenCV refuses to decode images above this many pixels (decompression bombs);
# set before cv2 is imported anywhere.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 26))

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
MAX_IMAGE_FILE_BYTES = 64 << 20
MAX_IMAGE_SIDE = 8192
DEFAULT_BATCH = 256


@dataclass(frozen=True)
class Skipped:
    source: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"source": self.source, "reason": self.reason}


@dataclass
class Batch:
    """Images in the model's layout (float32, unscaled), with what is known of them."""

    x: np.ndarray
    y: Optional[np.ndarray]
    sources: list[str]
    indices: np.ndarray  # position of each image in the source
    skipped: list[Skipped] = field(default_factory=list)


@dataclass
class Arrays:
    """A whole (small) data set held in memory: fine-tuning and calibration sets."""

    x: np.ndarray
    y: Optional[np.ndarray]
    sources: list[str]
    skipped: list[Skipped]

    def __len__(self) -> int:
        return len(self.x)


class DataSource:
    """A data set on disk, opened and checked but not read."""

    kind: str = ""

    def __init__(self, path: Path, count: int, labelled: bool) -> None:
        self.path = path
        self.count = count
        self.labelled = labelled

    def batches(self, shape: Sequence[int], batch_size: int = DEFAULT_BATCH) -> Iterator[Batch]:
        raise NotImplementedError

    def describe(self) -> str:
        labels = "labelled" if self.labelled else "unlabelled"
        return f"{self.path.name}: {self.count} images ({self.kind}, {labels})"


# ----------------------------------------------------------- opening sources


def open_data(path: str | Path) -> DataSource:
    """Open any supported data source; raise :class:`DataError` with the reason otherwise."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist")
    if path.is_dir():
        return _open_folder(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(8192)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not head:
        raise DataError(f"{path} is empty")
    fmt = safety.sniff_format(head)
    if fmt == "hdf5":
        return HDF5Source.open(path)
    if fmt == "zip" or path.suffix.lower() == ".npz":
        return NPZSource.open(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return FolderSource(path, [path], None, [])
    raise DataError(
        f"{path} is not a data set TrojanScope reads: expected HDF5 (data/label or x/y), .npz (x/y) or a folder of images"
    )


class ArraySource(DataSource):
    """Labelled arrays in memory (tests, demo, fine-tuning subsets)."""

    kind = "arrays"

    def __init__(self, x: np.ndarray, y: Optional[np.ndarray], name: str = "arrays") -> None:
        super().__init__(Path(name), len(x), y is not None)
        self.x = x
        self.y = None if y is None else _check_label_vector(np.asarray(y), len(x), name)

    def batches(self, shape: Sequence[int], batch_size: int = DEFAULT_BATCH) -> Iterator[Batch]:
        layout = _layout(self.x.shape, shape, str(self.path))
        for start in range(0, self.count, batch_size):
            stop = min(start + batch_size, self.count)
            x = conform(_to_nhwc(np.asarray(self.x[start:stop]), layout), shape)
            y = None if self.y is None else self.y[start:stop]
            yield Batch(x, y, [f"{self.path}#{i}" for i in range(start, stop)], np.arange(start, stop))


class HDF5Source(ArraySource):
    kind = "hdf5"

    @classmethod
    def open(cls, path: Path) -> "HDF5Source":
        import h5py

        try:
            h5 = h5py.File(path, "r")
        except (OSError, ValueError) as exc:
            raise DataError(f"{path} is not a readable HDF5 file ({_short(exc)}): truncated or corrupt?") from None
        try:
            safety.scan_hdf5(h5, str(path), error=DataError)
            x_key, y_key = _pick_keys(list(h5.keys()), path)
            x = h5[x_key]
            if not isinstance(x, h5py.Dataset) or x.dtype.kind not in "uif":
                raise DataError(f"{path}: '{x_key}' must be a numeric array of images; received {getattr(x, 'dtype', type(x))}")
            y = None
            if y_key is not None:
                y = h5[y_key]
                if not isinstance(y, h5py.Dataset) or y.dtype.kind not in "uif":
                    raise DataError(f"{path}: '{y_key}' must be a numeric array of labels")
                y = y[()]
            src = cls(x, y, str(path))
            src.path = path
            src._h5 = h5
            return src
        except Exception:
            h5.close()
            raise

    def batches(self, shape: Sequence[int], batch_size: int = DEFAULT_BATCH) -> Iterator[Batch]:
        for batch in super().batches(shape, batch_size):
            batch.sources = [str(self.path)] * len(batch.indices)
            yield batch


class NPZSource(ArraySource):
    kind = "npz"

    @classmethod
    def open(cls, path: Path) -> "NPZSource":
        safety.scan_zip(path, str(path), error=DataError, broken=DataError)
        try:
            npz = np.load(path, allow_pickle=False)
            if "config.json" in npz.files:
                raise DataError(f"{path} is a Keras model archive, not a data set: expected .npz arrays x/y")
            x_key, y_key = _pick_keys([k for k in npz.files], path)
            x = npz[x_key]
            y = npz[y_key] if y_key is not None else None
        except DataError:
            raise
        except (ValueError, OSError, EOFError, KeyError) as exc:
            raise DataError(f"{path} is not a readable .npz file ({_short(exc)}): truncated, corrupt or pickled?") from None
        if x.dtype.kind not in "uif":
            raise DataError(f"{path}: '{x_key}' must be a numeric array of images; received dtype {x.dtype}")
        src = cls(x, y, str(path))
        src.path = path
        return src

    def batches(self, shape: Sequence[int], batch_size: int = DEFAULT_BATCH) -> Iterator[Batch]:
        for batch in super().batches(shape, batch_size):
            batch.sources = [str(self.path)] * len(batch.indices)
            yield batch


def _pick_keys(keys: list[str], path: Path) -> tuple[str, Optional[str]]:
    for x_key, y_key in (("data", "label"), ("x", "y"), ("data", "labels"), ("images", "labels")):
        if x_key in keys:
            return x_key, (y_key if y_key in keys else None)
    raise DataError(f"{path}: expected arrays named data/label or x/y; found {sorted(keys)}")


class FolderSource(DataSource):
    kind = "folder"

    def __init__(self, path: Path, files: list[Path], labels: Optional[list[int]], class_names: list[str]) -> None:
        super().__init__(path, len(files), labels is not None)
        self.files = files
        self.labels = labels
        self.class_names = class_names
        if labels is not None:
            self.kind = "class folders"

    def batches(self, shape: Sequence[int], batch_size: int = DEFAULT_BATCH) -> Iterator[Batch]:
        for start in range(0, self.count, batch_size):
            images, sources, indices, labels, skipped = [], [], [], [], []
            for i in range(start, min(start + batch_size, self.count)):
                file = self.files[i]
                try:
                    image = read_image(file)
                except ImageUnreadable as exc:
                    skipped.append(Skipped(str(file), str(exc)))
                    continue
                images.append(conform(image[None].astype(np.float32), shape)[0])
                sources.append(str(file))
                indices.append(i)
                if self.labels is not None:
                    labels.append(self.labels[i])
            x = np.stack(images) if images else np.zeros((0, *shape), np.float32)
            y = np.asarray(labels, np.int64) if self.labels is not None else None
            yield Batch(x, y, sources, np.asarray(indices, np.int64), skipped)


def _open_folder(path: Path) -> FolderSource:
    entries = [p for p in sorted(path.iterdir()) if not p.name.startswith(".")]
    subdirs = [p for p in entries if p.is_dir()]
    if entries and len(subdirs) == len(entries):
        names = [d.name for d in subdirs]
        if all(n.isdigit() for n in names):
            label_of = {n: int(n) for n in names}
        else:
            label_of = {n: i for i, n in enumerate(sorted(names))}
        files, labels = [], []
        for d in subdirs:
            for f in _walk_files(d):
                files.append(f)
                labels.append(label_of[d.name])
        source = FolderSource(path, files, labels, sorted(names, key=lambda n: label_of[n]))
    else:
        source = FolderSource(path, _walk_files(path), None, [])
    if source.count == 0:
        raise DataError(f"{path} holds no files to read")
    return source


def _walk_files(root: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return found


# ------------------------------------------------------------------- images


class ImageUnreadable(Exception):
    """Why a file is skipped (the message is the reason shown to the analyst)."""


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to RGB (H, W, 3) or grey (H, W, 1) uint8.

    OpenCV decodes to BGR; we convert to RGB here, once, so no caller can
    forget (a classic silent bug that costs 10 points of accuracy).
    """
    import cv2

    try:
        size = path.stat().st_size
        if size == 0:
            raise ImageUnreadable("empty file")
        if size > MAX_IMAGE_FILE_BYTES:
            raise ImageUnreadable(f"file too large for an image ({size >> 20} MiB)")
        data = path.read_bytes()
    except OSError as exc:
        raise ImageUnreadable(f"cannot read: {exc.strerror or exc}") from None
    _check_complete(data)
    buffer = np.frombuffer(data, np.uint8)
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        image = None
    if image is None:
        kind = "an image" if path.suffix.lower() in IMAGE_SUFFIXES else f"an image ({path.suffix or 'no extension'})"
        raise ImageUnreadable(f"not {kind} OpenCV can decode (corrupt, truncated, too large, or not an image)")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[0] > MAX_IMAGE_SIDE or image.shape[1] > MAX_IMAGE_SIDE:
        raise ImageUnreadable(f"absurd dimensions {image.shape[1]}x{image.shape[0]}")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    channels = image.shape[2]
    if channels == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    elif channels == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    elif channels != 1:
        raise ImageUnreadable(f"unsupported number of channels: {channels}")
    return image if image.ndim == 3 else image[:, :, None]


def _check_complete(data: bytes) -> None:
    """Catch truncated PNG/JPEG files, which OpenCV may half-decode silently."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) >= 24:
            width = int.from_bytes(data[16:20], "big")
            height = int.from_bytes(data[20:24], "big")
            if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE:
                raise ImageUnreadable(f"absurd dimensions {width}x{height}")
        if b"IEND" not in data[-64:]:
            raise ImageUnreadable("truncated PNG (no IEND chunk)")
    elif data.startswith(b"\xff\xd8") and b"\xff\xd9" not in data[-4096:]:
        raise ImageUnreadable("truncated JPEG (no end-of-image marker)")


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB (or grey) image; the mirror of :func:`read_image`."""
    import cv2

    image = np.clip(np.asarray(rgb), 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise DataError("could not encode an image as PNG")
    return encoded.tobytes()


def write_png(path: Path, rgb: np.ndarray) -> None:
    Path(path).write_bytes(encode_png(rgb))


# --------------------------------------------------------------- conversion


def _layout(array_shape: Sequence[int], target: Sequence[int], source: str) -> str:
    """'nhwc', 'nchw' or 'nhw' for an array of images, decided once per source."""
    h, w, c = target
    dims = tuple(array_shape[1:])
    if len(dims) == 2:
        return "nhw"
    if len(dims) != 3:
        raise DataError(f"{source}: expected images shaped N,H,W,C or N,C,H,W; received shape {tuple(array_shape)}")
    if dims == (h, w, c):
        return "nhwc"
    if dims == (c, h, w):
        return "nchw"
    last_is_channels = dims[2] in (1, 3, 4)
    first_is_channels = dims[0] in (1, 3, 4)
    if last_is_channels and not first_is_channels:
        return "nhwc"
    if first_is_channels and not last_is_channels:
        return "nchw"
    if last_is_channels:
        return "nhwc"
    raise DataError(
        f"{source}: cannot tell the channel axis of images shaped {tuple(array_shape)} "
        f"(expected 1, 3 or 4 channels first or last, for a model taking {h}x{w}x{c})"
    )


def _to_nhwc(array: np.ndarray, layout: str) -> np.ndarray:
    if layout == "nhw":
        return array[..., None]
    if layout == "nchw":
        return np.transpose(array, (0, 2, 3, 1))
    return array


def conform(images: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resize (area interpolation) and convert channels to the model's (H, W, C)."""
    import cv2

    h, w, c = (int(s) for s in shape)
    images = np.asarray(images, dtype=np.float32)
    if images.shape[-1] == 4:
        images = images[..., :3]
    if images.shape[1:3] != (h, w):
        resized = [cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) for img in images]
        images = np.stack([r if r.ndim == 3 else r[:, :, None] for r in resized]) if resized else np.zeros((0, h, w, images.shape[-1]), np.float32)
    have = images.shape[-1]
    if have == c:
        return np.ascontiguousarray(images)
    if have == 1 and c == 3:
        return np.repeat(images, 3, axis=-1)
    if have == 3 and c == 1:
        grey = images @ np.asarray([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as cv2
        return grey[..., None].astype(np.float32)
    raise DataError(f"cannot convert {have}-channel images to the model's {c} channels")


# ------------------------------------------------------------------- labels


def _check_label_vector(y: np.ndarray, n: int, source: str) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    elif y.ndim == 2 and y.shape[1] > 1:
        y = np.argmax(y, axis=1)  # one-hot labels
    if y.ndim != 1:
        raise DataError(f"{source}: labels must be one per image; received shape {y.shape}")
    if len(y) != n:
        raise DataError(f"{source}: {n} images but {len(y)} labels")
    if y.dtype.kind == "f" and not (np.all(np.isfinite(y)) and np.all(np.equal(np.mod(y, 1), 0))):
        bad = int(np.flatnonzero(~np.isfinite(y) | (np.mod(np.nan_to_num(y), 1) != 0))[0])
        raise DataError(f"{source}: label {y[bad]!r} at index {bad} is not a whole number")
    return y.astype(np.int64)


def check_labels(y: np.ndarray, num_classes: int, source: str) -> None:
    """Refuse labels outside [0, num_classes) naming the first offender."""
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{source}: label {int(y[i])} at index {i} is out of range for a {num_classes}-class model "
            f"({bad.size} such labels)"
        )


def load_arrays(source: DataSource, shape: Sequence[int], limit: Optional[int] = None) -> Arrays:
    """Read a whole source into memory (for small sets: fine-tuning, calibration)."""
    xs, ys, sources, skipped = [], [], [], []
    seen = 0
    for batch in source.batches(shape):
        xs.append(batch.x)
        if batch.y is not None:
            ys.append(batch.y)
        sources.extend(batch.sources)
        skipped.extend(batch.skipped)
        seen += len(batch.x)
        if limit is not None and seen >= limit:
            break
    x = np.concatenate(xs) if xs else np.zeros((0, *shape), np.float32)
    y = np.concatenate(ys) if ys else None
    if limit is not None:
        x, y, sources = x[:limit], (None if y is None else y[:limit]), sources[:limit]
    return Arrays(x, y, sources, skipped)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


__all__ = [
    "Arrays",
    "ArraySource",
    "Batch",
    "DataSource",
    "Skipped",
    "check_labels",
    "conform",
    "encode_png",
    "load_arrays",
    "open_data",
    "read_image",
    "write_png",
]
