"""How much memory, disk and how many images one untrusted input may claim.

A hostile file does not need to run code to hurt the analyst: a 3 KB file can
*declare* gigabytes (an HDF5 data set never written, a zip member compressed
172:1, an ``.npy`` header, a Dense layer with a million units) and the reader
allocates what it is told. So every size a file declares is checked against a
budget *before* anything is allocated, and the budget is derived from what the
machine has free now, capped by a default far above any image classifier this
tool analyses (the CSAW course's largest model holds 2 million weights).

The rare legitimate giant raises the caps with environment variables:

- ``TROJANSCOPE_MAX_MEMORY_GB``: bytes a model or data array may claim in memory
  (default: a quarter of the available memory, at most 2 GB);
- ``TROJANSCOPE_MAX_DISK_GB``: bytes a model may make Keras write to the
  temporary folder (default: a quarter of the free space there, at most 2 GB);
- ``TROJANSCOPE_MAX_IMAGES``: images one data file may declare (default 1,000,000).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

from core.errors import TrojanScopeError

GB = 1 << 30
DEFAULT_MEMORY_CAP = 2 * GB
DEFAULT_DISK_CAP = 2 * GB
DEFAULT_MAX_IMAGES = 1_000_000
# Largest HDF5 chunk a reader may have to inflate at once: h5py's automatic
# chunks are at most 1 MiB, Keras writes none.
MAX_CHUNK_BYTES = 256 << 20
# Seconds the isolated pre-scan of one file may take.
DEFAULT_SCAN_SECONDS = 60


@dataclass(frozen=True)
class Budget:
    """Limits for one untrusted input; ``source`` says where each came from (for messages)."""

    memory_bytes: int
    disk_bytes: int
    max_images: int
    scan_seconds: int = DEFAULT_SCAN_SECONDS

    @property
    def memory_gb(self) -> str:
        return _gb(self.memory_bytes)

    @property
    def disk_gb(self) -> str:
        return _gb(self.disk_bytes)


def current() -> Budget:
    """The budget now: free memory and disk, capped, or the analyst's override."""
    memory = _override("TROJANSCOPE_MAX_MEMORY_GB")
    if memory is None:
        memory = min(DEFAULT_MEMORY_CAP, available_memory() // 4)
    disk = _override("TROJANSCOPE_MAX_DISK_GB")
    if disk is None:
        disk = min(DEFAULT_DISK_CAP, free_disk(tempfile.gettempdir()) // 4)
    images = os.environ.get("TROJANSCOPE_MAX_IMAGES")
    max_images = DEFAULT_MAX_IMAGES
    if images:
        try:
            max_images = int(images)
        except ValueError:
            raise TrojanScopeError(f"TROJANSCOPE_MAX_IMAGES must be a whole number; received {images!r}") from None
    return Budget(memory_bytes=max(memory, 64 << 20), disk_bytes=max(disk, 64 << 20), max_images=max_images)


def available_memory() -> int:
    """Bytes of memory available to a new allocation (Linux /proc/meminfo, else sysconf)."""
    try:
        with open("/proc/meminfo", "rb") as handle:
            for line in handle:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # macOS lacks SC_AVPHYS_PAGES
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
        except (ValueError, OSError, AttributeError):
            return 8 * GB


def free_disk(folder: str) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def _override(name: str) -> int | None:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        gb = float(value)
    except ValueError:
        raise TrojanScopeError(f"{name} must be a number of gigabytes, e.g. 8; received {value!r}") from None
    if gb <= 0:
        raise TrojanScopeError(f"{name} must be positive; received {value!r}")
    return int(gb * GB)


def _gb(nbytes: int) -> str:
    return f"{nbytes / GB:.3g} GB"


def size_text(nbytes: int) -> str:
    """Human size for messages: '3.5 GB', '12 MB', '900 bytes'."""
    if nbytes >= GB:
        return f"{nbytes / GB:.3g} GB"
    if nbytes >= 1 << 20:
        return f"{nbytes / (1 << 20):.3g} MB"
    if nbytes >= 1 << 10:
        return f"{nbytes / (1 << 10):.3g} KB"
    return f"{nbytes} bytes"


def setting_hint(kind: str = "memory") -> str:
    variable = {"memory": "TROJANSCOPE_MAX_MEMORY_GB", "disk": "TROJANSCOPE_MAX_DISK_GB", "images": "TROJANSCOPE_MAX_IMAGES"}[kind]
    return f"set {variable} to raise the limit if you trust this file"
