"""Outputs appear whole or not at all, and never replace the analyst's input.

Writers write to a temporary sibling and ``os.replace`` it into place only when
complete, so a cancelled or crashed job leaves nothing half-written behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

from core.errors import TrojanScopeError

PathLike = Union[str, "os.PathLike[str]"]


def refuse_overwriting(out: PathLike, *inputs: PathLike) -> None:
    """Raise when ``out`` would be one of the analyst's input files."""
    out_path = Path(out).resolve()
    for inp in inputs:
        if inp is None:
            continue
        if Path(inp).resolve() == out_path:
            raise TrojanScopeError(
                f"refusing to write over the input file {inp}: choose another output path", fixed_by=("output",)
            )


@contextlib.contextmanager
def atomic_path(final: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``final``; move it into place on success.

    The temporary keeps ``final``'s suffix (Keras decides the format from it).
    On any exception -- cancel included -- the temporary is removed and
    ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{final.stem}.", suffix=suffix or "".join(final.suffixes) or ".tmp",
        dir=final.parent,
    )
    os.close(fd)
    os.unlink(tmp)  # writers such as Keras want to create the file themselves
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(final: PathLike) -> Iterator[Path]:
    """Like :func:`atomic_path` for a directory (the demo bundle, say)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for the NumPy scalars and arrays results carry."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "items"):
        return dict(value)
    return str(value)


def write_text_atomic(final: PathLike, text: str) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(final)
