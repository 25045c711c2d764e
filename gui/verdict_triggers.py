"""The Verdict panel's reversed-trigger views: the mask-norm chart per class (threshold and median lines, flagged bars red) and the gallery of masks, patterns and stamped images."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGridLayout, QGroupBox, QLabel, QScrollArea, QVBoxLayout, QWidget

from gui.images import to_pixmap

NORMAL_BRUSH = pg.mkBrush("#7f9fbf")
FLAGGED_BRUSH = pg.mkBrush("#d62728")
CELL = 40  # trigger thumbnails, pixels high: ten classes fit side by side


def titled_plot(title: str, xlabel: str, ylabel: str, legend: bool = True) -> pg.PlotWidget:
    """A white plot with a title, axis labels, a light grid and (by default) a legend: the Verdict panel's four views."""
    plot = pg.PlotWidget(background="w")
    plot.setTitle(title, color="k")
    plot.setLabel("bottom", xlabel)
    plot.setLabel("left", ylabel)
    plot.showGrid(x=True, y=True, alpha=0.25)
    if legend:
        plot.addLegend(offset=(-10, 10), labelTextColor="k", brush=pg.mkBrush(255, 255, 255, 200))
    return plot


class NormChart:
    """One bar per optimised class (its reversed mask's L1 norm) on ``plot``, with the anomaly threshold and the median."""

    def __init__(self) -> None:
        self.plot = titled_plot("Mask L1 norm per class (smaller = easier)", "class", "mask norm (pixels)")
        self.plot.getAxis("bottom").setTickSpacing(1, 1)
        self.bar_item: Optional[pg.BarGraphItem] = None
        self.threshold_line = pg.InfiniteLine(
            angle=0, pen=pg.mkPen("#d62728", width=2, style=Qt.PenStyle.DashLine),
        )
        self.median_line = pg.InfiniteLine(
            angle=0, pen=pg.mkPen("#555555", width=1, style=Qt.PenStyle.DotLine),
        )
        # legend entries for the two lines (labels on the lines would sit behind the bars)
        self.plot.plot([], [], pen=self.threshold_line.pen, name="anomaly threshold (index 2)")
        self.plot.plot([], [], pen=self.median_line.pen, name="median")
        for line in (self.threshold_line, self.median_line):
            line.setVisible(False)
            self.plot.addItem(line)

    def draw_bars(self, bars: dict[int, float], flagged: set) -> None:
        """``bars``: norm per class so far; ``flagged`` classes are drawn red."""
        if self.bar_item is not None:
            self.plot.removeItem(self.bar_item)
            self.bar_item = None
        if not bars:
            return
        classes = sorted(bars)
        many = len(classes) > 12 or max(classes) >= 100  # big class ids: plot by rank, label in the title
        xs = np.arange(len(classes)) if many else np.array(classes)
        brushes = [FLAGGED_BRUSH if c in flagged else NORMAL_BRUSH for c in classes]
        self.bar_item = pg.BarGraphItem(x=xs, height=[bars[c] for c in classes], width=0.7,
                                        brushes=brushes, pens=[pg.mkPen(None)] * len(classes))
        self.plot.addItem(self.bar_item)
        self.plot.setXRange(float(xs.min()) - 0.6, float(xs.max()) + 0.6, padding=0)
        axis = self.plot.getAxis("bottom")
        axis.setTicks([[(float(x), str(c)) for x, c in zip(xs, classes)]])

    def show_result(self, r: Any, bars: dict[int, float]) -> None:
        """A finished Neural Cleanse run (``core.detect.model_level.cleanse.CleanseResult``): its bars, threshold and median."""
        self.draw_bars(bars, set(r.flagged_classes))
        self.plot.setTitle(
            "Mask L1 norm per class: flagged in red" if r.flagged_classes
            else "Mask L1 norm per class: none below the threshold", color="k")
        if np.isfinite(r.threshold_norm) and r.mad > 0:
            self.threshold_line.setValue(max(r.threshold_norm, 0.0))
            self.threshold_line.setVisible(True)
        self.median_line.setValue(r.median)
        self.median_line.setVisible(True)
        self.plot.setYRange(0, max(r.norms.values()) * 1.4)  # head-room for the legend

    def clear(self) -> None:
        self.draw_bars({}, set())
        self.threshold_line.setVisible(False)
        self.median_line.setVisible(False)


class TriggerGallery(QGroupBox):
    """Each reversed trigger's mask, pattern and a clean image stamped with it, one column per class."""

    def __init__(self) -> None:
        super().__init__("Reversed triggers: mask, pattern, a clean image stamped with it")
        tlayout = QVBoxLayout(self)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        self.trigger_host = QWidget()
        self.trigger_grid = QGridLayout(self.trigger_host)
        self.trigger_grid.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.trigger_grid.setHorizontalSpacing(6)
        self.trigger_grid.setVerticalSpacing(2)
        scroll.setWidget(self.trigger_host)
        tlayout.addWidget(scroll)

    def fill(self, r: Any, example: Optional[np.ndarray], pixel_max: float) -> None:
        """One column per reversed trigger, flagged first; the label-specific (untargeted) one first when flagged, else last."""
        from core.detect.model_level.verdict import is_label_specific_backdoor

        order = sorted(r.candidates, key=lambda c: (c not in r.flagged_classes, r.norms[c]))
        columns = [(f"<b>{c}</b>{' ⚑' if c in r.flagged_classes else ''}", r.triggers[c], c in r.flagged_classes) for c in order]
        if r.label_specific is not None:
            flagged = is_label_specific_backdoor(r.label_specific)
            column = (f"<b>any\u2192other</b>{' ⚑' if flagged else ''}", r.label_specific.trigger, flagged)
            columns = [column] + columns if flagged else columns + [column]
        scale = 255.0 / pixel_max
        rows = ("mask", "pattern", "stamped")
        for row, name in enumerate(rows):
            label = QLabel(name)
            label.setStyleSheet("font-size: 10px; color: #555")
            self.trigger_grid.addWidget(label, row * 2 + 1, 0)
        for col, (title, trigger, flagged) in enumerate(columns, start=1):
            header = QLabel(f"{title}<br>{trigger.norm:.0f} px")
            header.setAlignment(Qt.AlignmentFlag.AlignCenter)
            header.setStyleSheet(f"font-size: 10px; color: {'#b3261e' if flagged else '#333'}")
            self.trigger_grid.addWidget(header, 0, col)
            images = [trigger.mask[..., None] * 255.0, trigger.pattern * scale]
            if example is not None:
                images.append(trigger.stamp(example[None])[0] * scale)
            for row, image in enumerate(images):
                picture = QLabel()
                picture.setPixmap(to_pixmap(image, CELL))
                if flagged:
                    picture.setStyleSheet("border: 2px solid #d62728")
                self.trigger_grid.addWidget(picture, row * 2 + 1, col)

    def clear(self) -> None:
        while self.trigger_grid.count():
            item = self.trigger_grid.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
