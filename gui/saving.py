"""Saving a repaired model from a panel: a file dialog, then the save on the worker thread.

Fine-Pruning and unlearning save the same way (atomically, never over an
input, with a JSON record beside the model); only the engine's ``save_result``
differs, so the panels pass theirs in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from PySide6.QtWidgets import QFileDialog, QWidget

from core.jobs import Progress

MODEL_FILTERS = "Keras model (*.keras);;Legacy HDF5 (*.h5)"


def ask_save_path(parent: QWidget, suggested: Path) -> str:
    path, _ = QFileDialog.getSaveFileName(parent, "Save the repaired model", str(suggested), MODEL_FILTERS)
    return path


def save_in_background(
    window: Any,
    save_result: Callable[..., Any],
    repaired: Any,
    path: str,
    then: Optional[Callable[[bool], None]] = None,
) -> bool:
    """Run ``save_result(repaired, loaded, path, inputs)`` as a job; ``then(ok)`` afterwards."""
    loaded = window.state.loaded
    if repaired is None or loaded is None:
        return False
    inputs = [str(s.path) for s in window.state.data.values()]

    def job():
        yield Progress(None, f"Saving {Path(path).name}")
        return save_result(repaired, loaded, path, inputs)

    def finished(result: Any) -> None:
        window.status.setText(f"Saved {result.saved} and its record {result.record_path}")
        if then:
            then(True)

    return window.start_job("Saving the repaired model", job, finished, on_error=lambda _m: then(False) if then else None)
