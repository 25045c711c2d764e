"""The Verdict panel's reversed-trigger views: the mask-norm chart per class (threshold and median lines, flagged bars red) and the gallery of masks, patterns and stamped images."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, Qt
from PySide6.QtWidgets import QGridLayout, QGroupBox, QLabel, QScrollArea, QVBoxLayout, QWidget

from gui.images import to_pixmap
from gui.plots import titled_plot

NORMAL_BRUSH = pg.mkBrush("#7f9fbf")
FLAGGED_BRUSH = pg.mkBrush("#d62728")
CELL = 36  # trigger thumbnails, pixels high: ten classes and the untargeted trigger fit side by side at 1,280 x 720
SPACING = 4


class NormChart:
    """One bar per optimised class (its reversed mask's L1 norm) on ``plot``, with the anomaly threshold and the median."""

    def __init__(self) -> None:
        self.plot = titled_plot("Mask norm per class (smaller = easier)", "class", "mask L1 norm (pixels)")
        self.plot.getAxis("bottom").setTickSpacing(1, 1)
        self.bar_item: Optional[pg.BarGraphItem] = None
        self.threshold_line = pg.InfiniteLine(
            angle=0, pen=pg.mkPen("#d62728", width=2, style=Qt.PenStyle.DashLine),
        )
        self.median_line = pg.InfiniteLine(
            angle=0, pen=pg.mkPen("#555555", width=1, style=Qt.PenStyle.DotLine),
        )
        # legend entries for the two lines (labels on the lines would sit behind the bars), under the chart
        self.plot.plot([], [], pen=self.threshold_line.pen, name="threshold (index 2)")
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
            "Mask norm per class: flagged in red" if r.flagged_classes
            else "Mask norm per class: none flagged", color="k")
        if np.isfinite(r.threshold_norm) and r.mad > 0:
            self.threshold_line.setValue(max(r.threshold_norm, 0.0))
            self.threshold_line.setVisible(True)
        self.median_line.setValue(r.median)
        self.median_line.setVisible(True)
        self.plot.setYRange(0, max(max(r.norms.values()), r.median) * 1.08)

    def clear(self) -> None:
        self.draw_bars({}, set())
        self.threshold_line.setVisible(False)
        self.median_line.setVisible(False)


class TriggerGallery(QGroupBox):
    """Each reversed trigger's mask, pattern and a clean image stamped with it, one column per class.

    The columns wrap into bands when the view is too narrow for all of them,
    and the bands scroll: every class has a cell whatever the window's width
    (ten classes and the untargeted trigger fit in one band at 1,280 x 720).
    """

    ROWS = ("mask", "pattern", "stamped")

    def __init__(self) -> None:
        super().__init__("Reversed triggers: mask, pattern, a clean image stamped (top to bottom)")
        tlayout = QVBoxLayout(self)
        tlayout.setContentsMargins(4, 4, 4, 4)
        self.scroll = scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        self.trigger_host = QWidget()
        self.trigger_grid = QGridLayout(self.trigger_host)
        self.trigger_grid.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.trigger_grid.setContentsMargins(2, 2, 2, 2)
        self.trigger_grid.setHorizontalSpacing(SPACING)
        self.trigger_grid.setVerticalSpacing(2)
        scroll.setWidget(self.trigger_host)
        tlayout.addWidget(scroll)
        self.columns: list[list[QLabel]] = []  # per trigger: its header, then one picture per row
        self.per_band = 0  # columns per band as last laid out
        scroll.viewport().installEventFilter(self)

    def fill(self, r: Any, example: Optional[np.ndarray], pixel_max: float) -> None:
        """One column per reversed trigger, flagged first; the label-specific (untargeted) one first when flagged, else last."""
        from core.detect.model_level.verdict import is_label_specific_backdoor

        self.clear()
        order = sorted(r.candidates, key=lambda c: (c not in r.flagged_classes, r.norms[c]))
        columns = [(f"<b>{c}</b>{' ⚑' if c in r.flagged_classes else ''}", r.triggers[c], c in r.flagged_classes) for c in order]
        if r.label_specific is not None:
            flagged = is_label_specific_backdoor(r.label_specific)
            column = (f"<b>any\u2192<br>other</b>{' ⚑' if flagged else ''}", r.label_specific.trigger, flagged)
            columns = [column] + columns if flagged else columns + [column]
        scale = 255.0 / pixel_max
        for title, trigger, flagged in columns:
            header = QLabel(f"{title}<br>{trigger.norm:.0f} px")
            header.setAlignment(Qt.AlignmentFlag.AlignCenter | Qt.AlignmentFlag.AlignBottom)
            header.setStyleSheet(f"font-size: 10px; color: {'#b3261e' if flagged else '#333'}")
            if trigger.target < 0:
                header.setToolTip("The untargeted trigger: sends images of any class to another class (label-specific check)")
            cells = [header]
            images = [trigger.mask[..., None] * 255.0, trigger.pattern * scale]
            if example is not None:
                images.append(trigger.stamp(example[None])[0] * scale)
            for row, image in enumerate(images):
                picture = QLabel()
                picture.setPixmap(to_pixmap(image, CELL))
                picture.setStyleSheet(f"border: 2px solid {'#d62728' if flagged else 'transparent'}")
                picture.setToolTip(f"{self.ROWS[row]} of the trigger in {header.text().split('<br>')[0]}")
                cells.append(picture)
            self.columns.append(cells)
        self.reflow(force=True)

    def _fitting(self) -> int:
        """How many columns fit in the viewport's width (at least one)."""
        if not self.columns:
            return 0
        column = max(w.sizeHint().width() for cells in self.columns for w in cells) + SPACING
        available = self.scroll.viewport().width() - 4 + SPACING
        return max(1, min(len(self.columns), available // column))

    def reflow(self, force: bool = False) -> None:
        """Lay the columns out in bands of as many as fit; nothing moves when the count per band is unchanged."""
        per_band = self._fitting()
        if not force and per_band == self.per_band:
            return
        self.per_band = per_band
        while self.trigger_grid.count():
            self.trigger_grid.takeAt(0)
        for i, cells in enumerate(self.columns):
            band, col = divmod(i, per_band)
            for row, widget in enumerate(cells):
                self.trigger_grid.addWidget(widget, band * len(cells) + row, col)

    def eventFilter(self, watched: Any, event: Any) -> bool:  # noqa: N802 (Qt API)
        if watched is self.scroll.viewport() and event.type() == QEvent.Type.Resize:
            self.reflow()
        return False

    def clear(self) -> None:
        while self.trigger_grid.count():
            self.trigger_grid.takeAt(0)
        for widget in [w for cells in self.columns for w in cells]:
            widget.deleteLater()
        self.columns, self.per_band = [], 0
