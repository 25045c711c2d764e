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

import errno
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from core.intake import budget as budget_module
from core.intake import safety
from core.intake.budget import setting_hint, size_text
from core.errors import DataError
from core.intake.isolation import run_isolated

# OpenCV refuses to decode images above this many pixels (decompression bombs);
# set before cv2 is imported anywhere.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 26))

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
MAX_IMAGE_FILE_BYTES = 64 << 20
MAX_IMAGE_SIDE = 8192
DEFAULT_BATCH = 256
MAX_BATCH_BYTES = 64 << 20  # one batch of float32 images, whatever the file declares


@dataclass(frozen=True)
class Skipped:
    source: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"source": self.source, "reason": self.reason}


@dataclass(frozen=True)
class Conversion:
    """Which changes to an array data set's image shape the analyst allowed: none by default.

    Data whose images are not the model's shape is most often the wrong data (grey digits for a colour
    model, 32x32 images for a 28x28 model); converting it silently gives accuracies that mean nothing.
    So an HDF5 or .npz set must match the model's height, width and channels unless the analyst asks
    for the conversion. Image files in a folder are decoded one by one and always converted to the
    model's input (their size and colour are how each file happens to be encoded): the CLI contract.
    """

    resize: bool = False
    channels: bool = False

    def describe(self, stored: Sequence[int], model: Sequence[int]) -> list[str]:
        """What converting ``stored`` (H, W, C) images to ``model`` (H, W, C) does, in words (empty: nothing)."""
        (h, w, c), (mh, mw, mc) = stored, model
        done = []
        if (h, w) != (mh, mw):
            done.append(f"resized {h}x{w} -> {mh}x{mw}")
        if c != mc:
            done.append(f"channels {c} -> {mc} ({'grey repeated' if c == 1 else 'colour to grey (BT.601)' if mc == 1 else 'alpha dropped'})")
        return done


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

    def close(self) -> None:
        """Release open files (HDF5 sources keep theirs open to stream batches)."""

    def allow(self, conversion: Conversion) -> "DataSource":
        """Allow these conversions of the stored images (arrays only: image files are always converted)."""
        return self

    def conversions(self, shape: Sequence[int]) -> list[str]:
        """What reaching the model's ``shape`` takes, in words (image files: decoded and converted one by one)."""
        return []

    def describe(self) -> str:
        labels = "labelled" if self.labelled else "unlabelled"
        return f"{self.path.name}: {self.count} images ({self.kind}, {labels})"


# ----------------------------------------------------------- opening sources


def open_data(path: str | Path) -> DataSource:
    """Open any supported data source; raise :class:`DataError` with the reason otherwise.

    Only folders and regular files are opened (a FIFO would hang the read, a
    device never ends). HDF5 and ``.npz`` files are first checked in a child
    process with memory and time limits (:mod:`core.intake.isolation`), then opened
    here with every declared size checked against :mod:`core.intake.budget`.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        return _open_folder(path)
    with safety.open_regular(path, DataError) as handle:
        head = handle.read(8192)
    if not head:
        raise DataError(f"{path} is empty")
    fmt = _file_format(path, head)
    if fmt == "image":
        return FolderSource(path, [path], None, [])
    if fmt is None:
        raise DataError(
            f"{path} is not a data set TrojanScope reads: expected HDF5 (data/label or x/y), .npz (x/y) or a folder of images"
        )
    run_isolated("core.intake.data:prescan", (str(path),), str(path), budget_module.current(), DataError)
    return _open_file(path, fmt)


def _file_format(path: Path, head: bytes) -> Optional[str]:
    fmt = safety.sniff_format(head)
    if fmt == "hdf5":
        return "hdf5"
    if fmt == "zip" or path.suffix.lower() == ".npz":
        return "npz"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    return None


def _open_file(path: Path, fmt: str) -> DataSource:
    return HDF5Source.open(path) if fmt == "hdf5" else NPZSource.open(path)


def prescan(path: str) -> None:
    """Open a data file as :func:`open_data` would and read its first batch (run in the isolated child)."""
    file = Path(path)
    with safety.open_regular(file, DataError) as handle:
        head = handle.read(8192)
    fmt = _file_format(file, head)
    if fmt not in ("hdf5", "npz"):
        return None
    source = _open_file(file, fmt)
    try:
        x = source.x
        first = x[: min(len(x), 16)]
        np.asarray(first)
    finally:
        source.close()
    return None


class ArraySource(DataSource):
    """Labelled arrays in memory (tests, demo, fine-tuning subsets)."""

    kind = "arrays"

    def __init__(self, x: np.ndarray, y: Optional[np.ndarray], name: str = "arrays", conversion: Conversion = Conversion()) -> None:
        super().__init__(Path(name), len(x), y is not None)
        self.x = x
        self.y = None if y is None else _check_label_vector(np.asarray(y), len(x), name)
        self.conversion = conversion

    def allow(self, conversion: Conversion) -> "DataSource":
        self.conversion = conversion
        return self

    def stored_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """(H, W, C) of the stored images, read in the layout that best fits a model taking ``shape``."""
        dims = [int(n) for n in self.x.shape[1:]]
        layout = _layout(self.x.shape, shape, str(self.path))
        if layout == "nhw":
            return dims[0], dims[1], 1
        if layout == "nchw":
            return dims[1], dims[2], dims[0]
        return dims[0], dims[1], dims[2]

    def conversions(self, shape: Sequence[int]) -> list[str]:
        """What reaching ``shape`` takes, in words; DataError when the analyst did not allow it."""
        stored = self.stored_shape(shape)
        model = tuple(int(n) for n in shape)
        needed = Conversion(resize=True, channels=True).describe(stored, model)
        size_differs = stored[:2] != model[:2]
        channels_differ = stored[2] != model[2] and not (stored[2] == 4 and model[2] == 3)
        refused = []
        if size_differs and not self.conversion.resize:
            refused.append("resize")
        if channels_differ and not self.conversion.channels:
            refused.append("channels")
        if refused:
            what = " and ".join({"resize": "resizing", "channels": "channel conversion"}[r] for r in refused)
            raise DataError(
                f"{self.path} holds {stored[0]}x{stored[1]}x{stored[2]} images (height x width x channels) but the model "
                f"takes {model[0]}x{model[1]}x{model[2]}, so they are probably not this model's data; nothing was "
                f"converted (allow {what} to use them anyway)",
                fixed_by=tuple(refused),
            )
        return needed

    def batches(self, shape: Sequence[int], batch_size: int = DEFAULT_BATCH) -> Iterator[Batch]:
        self.conversions(shape)
        layout = _layout(self.x.shape, shape, str(self.path))
        step = bounded_batch(self.x.shape[1:], shape, batch_size)
        for start in range(0, self.count, step):
            stop = min(start + step, self.count)
            try:
                stored = np.asarray(self.x[start:stop])
            except (OSError, ValueError, RuntimeError) as exc:  # a damaged chunk deep inside an HDF5 file
                raise DataError(f"{self.path}: images {start}-{stop - 1} cannot be read ({_short(exc)}): damaged file?") from None
            x = conform(_to_nhwc(stored, layout), shape)
            y = None if self.y is None else self.y[start:stop]
            yield Batch(x, y, [f"{self.path}#{i}" for i in range(start, stop)], np.arange(start, stop))


def bounded_batch(image_shape: Sequence[int], model_shape: Sequence[int], batch_size: int) -> int:
    """Images per batch so that one batch, as stored and as float32, stays under MAX_BATCH_BYTES."""
    per_image = 4 * max(math.prod(int(n) for n in image_shape), math.prod(int(n) for n in model_shape), 1)
    return max(1, min(batch_size, MAX_BATCH_BYTES // per_image))


def _check_declared_images(path: Path, key: str, shape: Sequence[int], itemsize: int) -> None:
    """Refuse absurd image counts and image sizes before anything is read."""
    limits = budget_module.current()
    if len(shape) not in (3, 4):
        raise DataError(f"{path}: expected images shaped N,H,W,C or N,C,H,W in '{key}'; received shape {tuple(shape)}")
    count = int(shape[0])
    if count > limits.max_images:
        raise DataError(
            f"refusing to open {path}: '{key}' declares {count:,} images, over the limit of {limits.max_images:,}; "
            f"{setting_hint('images')}"
        )
    dims = [int(n) for n in shape[1:]]
    if any(n > MAX_IMAGE_SIDE for n in dims):
        raise DataError(f"refusing to open {path}: '{key}' declares images of {'x'.join(map(str, dims))} (absurd dimensions)")


class HDF5Source(ArraySource):
    kind = "hdf5"

    @classmethod
    def open(cls, path: Path) -> "HDF5Source":
        import h5py

        safety.open_regular(path, DataError).close()  # a regular file, not a FIFO or device (h5py would block on one)
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
            _check_declared_images(path, x_key, x.shape, x.dtype.itemsize)
            y = None
            if y_key is not None:
                y = h5[y_key]
                if not isinstance(y, h5py.Dataset) or y.dtype.kind not in "uif":
                    raise DataError(f"{path}: '{y_key}' must be a numeric array of labels")
                _check_label_shape(path, y_key, y.shape, y.dtype.itemsize, len(x))
                y = y[()]
            src = cls(x, y, str(path))
            src.path = path
            src._h5 = h5
            return src
        except Exception:
            h5.close()
            raise

    def close(self) -> None:
        self._h5.close()

    def batches(self, shape: Sequence[int], batch_size: int = DEFAULT_BATCH) -> Iterator[Batch]:
        for batch in super().batches(shape, batch_size):
            batch.sources = [str(self.path)] * len(batch.indices)
            yield batch


def _check_label_shape(path: Path, key: str, shape: Sequence[int], itemsize: int, images: int) -> None:
    """Labels are read whole: their declared size must fit, and match the images, before reading."""
    if not shape or int(shape[0]) != images:
        raise DataError(f"{path}: {images} images but {int(shape[0]) if shape else 0} labels ('{key}' is shaped {tuple(shape)})")
    nbytes = math.prod(int(n) for n in shape) * itemsize
    limit = budget_module.current().memory_bytes
    if nbytes > limit or (len(shape) == 2 and int(shape[1]) > 100_000) or len(shape) > 2:
        raise DataError(
            f"refusing to open {path}: '{key}' declares labels shaped {tuple(shape)} ({size_text(nbytes)}); "
            "expected one label (or one one-hot row) per image"
        )


class NPZSource(ArraySource):
    kind = "npz"

    @classmethod
    def open(cls, path: Path) -> "NPZSource":
        limit = budget_module.current().memory_bytes
        with safety.open_regular(path, DataError) as handle:
            archive = safety.scan_zip(handle, str(path), error=DataError, broken=DataError, member_limit=limit)
            files = {name[:-4]: name for name in archive.namelist() if name.endswith(".npy")}
            if "config.json" in archive.namelist():
                raise DataError(f"{path} is a Keras model archive, not a data set: expected .npz arrays x/y")
            x_key, y_key = _pick_keys(list(files), path)
            x_header = safety.npz_member_header(archive, files[x_key], str(path), DataError)
            if x_header.dtype.kind not in "uif":
                raise DataError(f"{path}: '{x_key}' must be a numeric array of images; received dtype {x_header.dtype}")
            _check_declared_images(path, x_key, x_header.shape, x_header.dtype.itemsize)
            if y_key is not None:
                y_header = safety.npz_member_header(archive, files[y_key], str(path), DataError)
                if y_header.dtype.kind not in "uif":
                    raise DataError(f"{path}: '{y_key}' must be a numeric array of labels; received dtype {y_header.dtype}")
                _check_label_shape(path, y_key, y_header.shape, y_header.dtype.itemsize, x_header.shape[0])
            x = safety.read_npz_array(archive, files[x_key], str(path), limit, DataError)
            y = safety.read_npz_array(archive, files[y_key], str(path), limit, DataError) if y_key is not None else None
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
        self.listing_skipped: list[Skipped] = []  # links out, loops, repeats, special files

    def batches(self, shape: Sequence[int], batch_size: int = DEFAULT_BATCH) -> Iterator[Batch]:
        for start in range(0, self.count, batch_size):
            images, sources, indices, labels, skipped = [], [], [], [], []
            if start == 0:
                skipped.extend(self.listing_skipped)
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


class DecodedImages(DataSource):
    """Images of a folder decoded once and held in memory, each converted to a model's shape when asked, as
    :class:`FolderSource` converts them: what :func:`in_memory` makes of a folder."""

    def __init__(self, path: Path, kind: str, images: list[np.ndarray], labels: Optional[list[int]], sources: list[str],
                 skipped: list[Skipped]) -> None:
        super().__init__(path, len(images), labels is not None)
        self.kind = kind
        self.images = images
        self.labels = labels
        self.sources = sources
        self.skipped = skipped

    def batches(self, shape: Sequence[int], batch_size: int = DEFAULT_BATCH) -> Iterator[Batch]:
        for start in range(0, self.count, batch_size):
            stop = min(start + batch_size, self.count)
            images = [conform(image[None].astype(np.float32), shape)[0] for image in self.images[start:stop]]
            x = np.stack(images) if images else np.zeros((0, *shape), np.float32)
            y = np.asarray(self.labels[start:stop], np.int64) if self.labels is not None else None
            yield Batch(x, y, self.sources[start:stop], np.arange(start, stop), self.skipped if start == 0 else [])


def in_memory(source: DataSource, limit: int) -> DataSource:
    """The first ``limit`` readable images of ``source``, as stored, held in memory (read once for many models).

    Each model still gets them converted to its own input shape, exactly as ``source`` would convert them
    (``load_arrays(in_memory(s, n), shape, n)`` equals ``load_arrays(s, shape, n)``); the conversions the analyst
    allowed travel with them. Triage reads its clean data once this way and hands the copy to every model and worker.
    """
    if type(source) in (ArraySource, DecodedImages) and source.count <= limit:
        return source  # already in memory
    if isinstance(source, ArraySource):
        try:
            x = np.asarray(source.x[:limit])
        except (OSError, ValueError, RuntimeError) as exc:
            raise DataError(f"{source.path}: images 0-{limit - 1} cannot be read ({_short(exc)}): damaged file?") from None
        y = None if source.y is None else np.asarray(source.y[:limit])
        copy = ArraySource(x, y, str(source.path), source.conversion)
        copy.path = source.path
        copy.kind = source.kind
        return copy
    if isinstance(source, FolderSource):
        images, labels, sources, skipped = [], [], [], list(source.listing_skipped)
        for i, file in enumerate(source.files):
            if len(images) >= limit:
                break
            try:
                images.append(read_image(file))
            except ImageUnreadable as exc:
                skipped.append(Skipped(str(file), str(exc)))
                continue
            sources.append(str(file))
            if source.labels is not None:
                labels.append(source.labels[i])
        return DecodedImages(source.path, source.kind, images, labels if source.labels is not None else None, sources, skipped)
    raise DataError(f"{source.path}: cannot hold a {source.kind or type(source).__name__} data set in memory")


def _open_folder(path: Path) -> FolderSource:
    """List a folder in either layout; links are resolved and every odd entry is listed in ``skipped``.

    Anything a link leads to outside the chosen folder, a link loop, a second
    path to a file or folder already listed, and anything that is not a
    regular file or folder (FIFO, device, socket) is skipped with that reason
    and never opened.
    """
    walker = _FolderWalker(path)
    entries = walker.entries(path)
    subdirs = [(p, real) for p, real in entries if real.is_dir()]
    if entries and len(subdirs) == len(entries):
        names = [d.name for d, _ in subdirs]
        if all(n.isdigit() for n in names):
            label_of = {n: int(n) for n in names}
        else:
            label_of = {n: i for i, n in enumerate(sorted(names))}
        files, labels = [], []
        for d, real in subdirs:
            for f in walker.walk(d, real):
                files.append(f)
                labels.append(label_of[d.name])
        source = FolderSource(path, files, labels, sorted(names, key=lambda n: label_of[n]))
    else:
        source = FolderSource(path, walker.walk(path, walker.root, entries), None, [])
    source.listing_skipped = walker.skipped
    if source.count == 0:
        reasons = f" ({len(walker.skipped)} skipped: {walker.skipped[0].reason})" if walker.skipped else ""
        raise DataError(f"{path} holds no files to read{reasons}")
    return source


class _FolderWalker:
    """Walks a chosen folder without ever leaving it, looping, or listing a file twice."""

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))
        self.seen: set[Path] = {self.root}
        self.skipped: list[Skipped] = []

    def entries(self, folder: Path) -> list[tuple[Path, Path]]:
        """(path as listed, resolved path) of the usable entries of ``folder``, sorted, hidden ones left out."""
        try:
            names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
        except OSError as exc:
            self.skipped.append(Skipped(str(folder), f"cannot list: {exc.strerror or exc}"))
            return []
        kept = []
        for name in names:
            entry = folder / name
            real = self._resolve(entry)
            if real is not None:
                kept.append((entry, real))
        return kept

    def walk(self, folder: Path, real_folder: Path, entries: Optional[list[tuple[Path, Path]]] = None) -> list[Path]:
        found: list[Path] = []
        stack = [(folder, entries)]
        while stack:
            current, listed = stack.pop()
            listed = self.entries(current) if listed is None else listed
            subfolders = []
            for entry, real in listed:
                if real.is_dir():
                    subfolders.append((entry, None))
                else:
                    found.append(entry)
            stack.extend(reversed(subfolders))
        return found

    def _resolve(self, entry: Path) -> Optional[Path]:
        """The real path of ``entry`` if it may be listed, else None (with the reason in ``skipped``)."""
        try:
            real = Path(os.path.realpath(entry, strict=True))
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._skip(entry, "symbolic link loop")
            elif entry.is_symlink():
                self._skip(entry, "broken symbolic link")
            else:
                self._skip(entry, f"cannot read: {exc.strerror or exc}")
            return None
        try:
            mode = os.stat(real).st_mode
        except OSError as exc:
            self._skip(entry, f"cannot read: {exc.strerror or exc}")
            return None
        via = f" (symbolic link to {real})" if entry.is_symlink() else ""
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            self._skip(entry, f"{safety.file_kind(mode)}, not a regular file{via}")
            return None
        if real != self.root and self.root not in real.parents:
            self._skip(entry, f"symbolic link to {real}, outside the chosen folder")
            return None
        if stat.S_ISDIR(mode) and (real == self.root or real in entry.parent.resolve().parents or real == entry.parent.resolve()):
            self._skip(entry, "symbolic link loop (leads back to a folder that contains it)")
            return None
        if real in self.seen:
            self._skip(entry, f"repeats {real}, already listed")
            return None
        self.seen.add(real)
        return real

    def _skip(self, entry: Path, reason: str) -> None:
        self.skipped.append(Skipped(str(entry), reason))


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
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise ImageUnreadable(f"{safety.file_kind(mode)}, not a regular file")
        with safety.open_regular(path, ImageUnreadable) as handle:  # non-blocking open: a swapped-in FIFO cannot hang
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                raise ImageUnreadable("empty file")
            if size > MAX_IMAGE_FILE_BYTES:
                raise ImageUnreadable(f"file too large for an image ({size >> 20} MiB)")
            data = handle.read(MAX_IMAGE_FILE_BYTES + 1)
    except OSError as exc:
        raise ImageUnreadable(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_IMAGE_FILE_BYTES:
        raise ImageUnreadable(f"file grew past {MAX_IMAGE_FILE_BYTES >> 20} MiB while being read")
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
    "Conversion",
    "DataSource",
    "Skipped",
    "check_labels",
    "conform",
    "encode_png",
    "in_memory",
    "load_arrays",
    "open_data",
    "read_image",
    "write_png",
]
