"""Live curves fed by a worker: append to buffers, redraw on a timer, never per point.

The pyqtgraph examples' pattern (``scrollingPlots.py``) kept on the widget: each
curve is created once, points go into a preallocated NumPy buffer that doubles
when full, and one 80 ms ``QTimer`` calls ``setData`` on the curves that
changed. A thousand points a second are then a dozen repaints, not a thousand.
The job controller (:mod:`gui.jobs`) starts the timer with a job and stops it
on every ending -- done, cancelled or failed -- after one last redraw, so no
timer ever runs on after a job.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from PySide6.QtCore import QObject, QTimer

REDRAW_MS = 80


class Buffer:
    """A growable pair of float arrays: append cheaply, plot the filled part."""

    def __init__(self, capacity: int = 256) -> None:
        self.x = np.zeros(capacity)
        self.y = np.zeros(capacity)
        self.n = 0

    def append(self, x: float, y: float) -> None:
        if self.n == len(self.x):
            self.x = np.resize(self.x, 2 * self.n)
            self.y = np.resize(self.y, 2 * self.n)
        self.x[self.n], self.y[self.n] = x, y
        self.n += 1

    def clear(self) -> None:
        self.n = 0

    def draw(self, curve: Any) -> None:
        curve.setData(self.x[: self.n], self.y[: self.n])


class LiveCurves(QObject):
    """Named buffers, each bound to a pyqtgraph curve, redrawn together by one timer."""

    def __init__(self, parent: Optional[QObject] = None, interval_ms: int = REDRAW_MS) -> None:
        super().__init__(parent)
        self._curves: dict[str, Any] = {}
        self._buffers: dict[str, Buffer] = {}
        self._dirty: set[str] = set()
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.redraw)

    def add(self, key: str, curve: Any) -> None:
        self._curves[key] = curve
        self._buffers[key] = Buffer()

    def __getitem__(self, key: str) -> Buffer:
        return self._buffers[key]

    def append(self, key: str, x: float, y: float) -> None:
        self._buffers[key].append(x, y)
        self._dirty.add(key)

    def clear(self, *keys: str) -> None:
        """Empty the named buffers (all when none are named) and redraw them empty."""
        for key in keys or tuple(self._buffers):
            self._buffers[key].clear()
            self._dirty.add(key)
        self.redraw()

    def redraw(self) -> None:
        for key in self._dirty:
            self._buffers[key].draw(self._curves[key])
        self._dirty.clear()

    def start(self) -> None:
        self.timer.start()

    def stop(self) -> None:
        """Stop the timer and draw what arrived since its last tick."""
        self.timer.stop()
        self.redraw()

    @property
    def running(self) -> bool:
        return self.timer.isActive()


# Fine-tuning's per-epoch metrics name clean accuracy "clean" (core.repair.pruning) or
# "clean_accuracy" (core.repair.repair); the curves read either, so no method's curve stays empty.
CLEAN_KEYS = ("clean_accuracy", "clean")


def clean_accuracy_of(metrics: dict[str, Any]) -> Optional[float]:
    for key in CLEAN_KEYS:
        if metrics.get(key) is not None:
            return float(metrics[key])
    return None
