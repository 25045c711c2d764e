"""What the analyst has opened, shared by every panel.

Panels read the model and data from here and listen to its signals instead of
talking to each other, so a new panel never needs to know the old ones.
"""

from __future__ import annotations

from typing import Any, Optional

from PySide6.QtCore import QObject, Signal

from core.data import DataSource
from core.models import LoadedModel

ROLES = {
    "clean_valid": "Clean validation data",
    "clean_test": "Clean test data",
    "poisoned": "Suspected-poisoned data",
    "scan": "Folder to scan",
}


class AppState(QObject):
    model_changed = Signal()
    data_changed = Signal(str)  # the role that changed
    evaluated = Signal(object)  # core.evaluate.EvalResult

    def __init__(self) -> None:
        super().__init__()
        self.loaded: Optional[LoadedModel] = None
        self.data: dict[str, DataSource] = {}
        self.scale = "auto"
        self.target: Optional[int] = None
        self.demo: Any = None
        self.last_eval: Any = None

    def set_model(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.last_eval = None
        self.model_changed.emit()

    def set_data(self, role: str, source: Optional[DataSource]) -> None:
        if source is None:
            self.data.pop(role, None)
        else:
            self.data[role] = source
        self.data_changed.emit(role)

    def clean_for_calibration(self) -> Optional[DataSource]:
        """Clean validation data if opened, else clean test data."""
        return self.data.get("clean_valid") or self.data.get("clean_test")
