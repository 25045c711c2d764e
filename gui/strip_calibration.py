"""The STRIP panel's calibration view: the clean and scanned histograms, the draggable threshold line, the figures under them and Reset."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from core.detect.input_level import scanner
from gui.strip_table import FLAGGED, SCORE_HEADER

BINS = 50
EMPTY_X, EMPTY_Y = np.array([0.0, 1e-6]), np.array([0.0])  # an empty step curve
CLEAN_BRUSH = (60, 110, 200, 110)
SCAN_BRUSH = (230, 120, 30, 110)
AXIS = {"strip": "mean entropy per blend (bits)", "features": "distance to the predicted class's clean features (Mahalanobis)",
        "scaleup": "scaled prediction consistency (SCALE-UP)",
        "masking": "fall of the target's log-probability once its reversed trigger is masked",
        "target_features": "distance to the suspected target's clean features (Mahalanobis)",
        "reference": "clean networks' disbelief x the model's certainty (geometric mean, nats)"}


class CalibrationView(QWidget):
    """The histogram of the line's detector (clean calibration vs scanned) and its threshold; the panel owns the threshold."""

    def __init__(self) -> None:
        super().__init__()
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        self.plot = pg.PlotWidget(background="w")
        self.plot.setMinimumHeight(220)
        self.plot.setLabel("bottom", "mean entropy per blend (bits)")
        self.plot.setLabel("left", "% of images")
        self.plot.getAxis("left").enableAutoSIPrefix(False)
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.plot.addLegend(offset=(-10, 10))
        self.clean_curve = pg.PlotCurveItem(x=EMPTY_X, y=EMPTY_Y, stepMode="center", fillLevel=0, brush=CLEAN_BRUSH, pen=pg.mkPen((40, 80, 170), width=1.5), name="clean (calibration)")
        self.scan_curve = pg.PlotCurveItem(x=EMPTY_X, y=EMPTY_Y, stepMode="center", fillLevel=0, brush=SCAN_BRUSH, pen=pg.mkPen((200, 100, 20), width=1.5), name="scanned")
        self.plot.addItem(self.clean_curve)
        self.plot.addItem(self.scan_curve)
        self.line = pg.InfiniteLine(angle=90, movable=True, pen=pg.mkPen(FLAGGED, width=2), hoverPen=pg.mkPen(FLAGGED, width=4),
                                    label="threshold", labelOpts={"position": 0.92, "color": FLAGGED, "movable": True})
        self.line.setVisible(False)
        self.plot.addItem(self.line)
        column.addWidget(self.plot, 1)

        info_row = QHBoxLayout()
        self.info = QLabel("Calibrate on the clean validation data to set a threshold. Drag the red line to move it.")
        self.info.setWordWrap(True)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip("Back to the threshold the calibration chose")
        info_row.addWidget(self.info, 1)
        info_row.addWidget(self.reset_button, 0, Qt.AlignmentFlag.AlignTop)
        column.addLayout(info_row)

    def place_line(self, threshold: float) -> None:
        """Move the line without emitting its drag signal."""
        self.line.blockSignals(True)
        self.line.setValue(threshold)
        self.line.blockSignals(False)

    def show_detector(self, method: str) -> None:
        """A profile arrived: the axis names its first detector's score; the line appears."""
        self.plot.setLabel("bottom", AXIS.get(method, "score"))
        self.line.setVisible(True)

    def clear(self, message: str) -> None:
        self.line.setVisible(False)
        self.clean_curve.setData(EMPTY_X, EMPTY_Y)
        self.scan_curve.setData(EMPTY_X, EMPTY_Y)
        self.info.setText(message)

    def draw(self, p: Any, scanned: np.ndarray, threshold: Optional[float]) -> None:
        """Histograms of the profile's clean scores and the scanned scores, in % of each set."""
        top = max(float(np.max(p.scores, initial=0.0)), float(np.max(scanned, initial=0.0)), threshold or 0.0)
        if p.method != "strip":  # distances have a long tail (the triggered inputs): keep the clean bulk readable
            top = min(top, 3.0 * max(float(np.max(p.scores, initial=0.0)), threshold or 0.0))
        edges = np.linspace(0.0, top * 1.05 + 1e-6, BINS + 1)
        clean_counts, _ = np.histogram(p.scores, edges)
        self.clean_curve.setData(edges, 100.0 * clean_counts / max(len(p.scores), 1))
        if len(scanned):
            counts, _ = np.histogram(np.clip(scanned, edges[0], edges[-1]), edges)
            self.scan_curve.setData(edges, 100.0 * counts / len(scanned))
        else:
            self.scan_curve.setData(EMPTY_X, EMPTY_Y)

    def show_figures(self, p: Any, current: scanner.ScanProfile, threshold: float, n: int, flagged: int) -> None:
        """The line's rule, the expected false rejection there, and the scan's counts (``n`` rows, ``flagged`` of them)."""
        est = current.frr_estimate()
        moved = "" if abs(threshold - p.threshold) < 1e-12 else " (moved)"
        side = "below" if p.tail == "low" else "above"
        lines = [
            f"<b>{scanner.LABELS[current.method].capitalize()}</b>: {SCORE_HEADER.get(p.method, 'score').lower()} {side} "
            f"<b>{threshold:.4f}</b>{moved} is flagged as trojaned (label {p.num_classes})"
            + "".join(f"; {scanner.LABELS[k]} {'below' if d.tail == 'low' else 'above'} {d.threshold:.4f}"
                      for k, d in current.detectors.items() if k != p.method) + ".",
            f"<b>Expected false rejection here: {est.expected:.2%}</b> on clean images calibration never saw "
            f"(95% interval {est.low:.2%}–{est.high:.2%}; ≤ {est.bound:.2%} with {est.confidence:.0%} confidence), "
            f"estimated from the {est.flagged_in_calibration} of {est.n} clean calibration images "
            + ("these thresholds flag" if len(current.detectors) > 1 else "this threshold flags")
            + f". Target {current.frr:.1%}"
            + (f", split between {len(current.detectors)} detectors" if len(current.detectors) > 1 else "") + f"; scale {current.scale}.",
        ]
        if n:
            lines.append(f"<b>Scanned {n}: {flagged} flagged ({flagged / n:.1%})</b>, {n - flagged} accepted.")
        self.info.setText("<br>".join(lines))
