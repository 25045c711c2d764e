"""The Inspector's heat-map view: the image beside its Grad-CAM and occlusion overlays with the salient box on each, opacity, colour map, Export, the line that reads them."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QPen
from PySide6.QtWidgets import QComboBox, QGraphicsRectItem, QHBoxLayout, QLabel, QPushButton, QSlider, QVBoxLayout, QWidget

COLOUR_MAPS = ["inferno", "viridis", "turbo", "CET-L3"]
TITLES = {"image": "Image", "gradcam": "Grad-CAM", "occlusion": "Occlusion"}
FIRST_LINE = "Choose an image on the left, open one, or send one here from another panel."


class HeatMapView(QWidget):
    """Three views side by side; ``views[key]`` holds each one's title, view box, base image, heat image and box."""

    def __init__(self) -> None:
        super().__init__()
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground("w")
        self.views: dict[str, dict[str, Any]] = {}
        for col, key in enumerate(("image", "gradcam", "occlusion")):
            title = self.graphics.addLabel(TITLES[key], row=0, col=col, color="#222", size="11pt")
            view = self.graphics.addViewBox(row=1, col=col, lockAspect=True, invertY=True, enableMouse=True)
            base = pg.ImageItem(axisOrder="row-major")
            heat = pg.ImageItem(axisOrder="row-major")
            heat.setZValue(1)
            box = QGraphicsRectItem()
            pen = QPen(QColor("#00e676"))
            pen.setWidthF(2.5)
            pen.setCosmetic(True)
            box.setPen(pen)
            box.setZValue(2)
            box.hide()
            view.addItem(base)
            view.addItem(heat)
            view.addItem(box)
            self.views[key] = {"title": title, "view": view, "base": base, "heat": heat, "box": box}
        column.addWidget(self.graphics, 1)

        bar = QHBoxLayout()
        bar.addWidget(QLabel("Overlay opacity"))
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(55)
        self.opacity_slider.setMaximumWidth(220)
        self.opacity_slider.valueChanged.connect(self._apply_opacity)
        bar.addWidget(self.opacity_slider)
        bar.addWidget(QLabel("Colour map"))
        self.cmap_combo = QComboBox()
        self.cmap_combo.addItems(COLOUR_MAPS)
        self.cmap_combo.currentTextChanged.connect(self._apply_colour_map)
        bar.addWidget(self.cmap_combo)
        self.export_button = QPushButton("Export overlays as PNG…")
        bar.addWidget(self.export_button)
        bar.addStretch(1)
        column.addLayout(bar)
        self.result_label = QLabel(FIRST_LINE)
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        column.addWidget(self.result_label)
        self._apply_colour_map(self.cmap_combo.currentText())
        self._apply_opacity(self.opacity_slider.value())

    def show_inspection(self, result: Any) -> None:
        """An inspection (``core.inspect.trigger.Inspection``): the image, each map's heat and box, the line under them."""
        image = np.clip(result.image, 0, 255).astype(np.uint8)
        if image.shape[2] == 1:
            image = image[:, :, 0]
        h, w = result.image.shape[:2]
        for key, parts in self.views.items():
            parts["base"].setImage(image, levels=(0, 255))
            smap = result.maps.get(key)
            if key == "image":
                smap_box = result.primary.box
                parts["heat"].clear()
                title = f"Image — predicted {result.predicted} ({result.confidence:.1%})"
                if result.label is not None:
                    title += f", label {result.label}"
            elif smap is None:
                smap_box = None
                parts["heat"].clear()
                title = f"{TITLES[key]} — unavailable"
            else:
                smap_box = smap.box
                heat = np.maximum(np.asarray(smap.heat, np.float32), 0.0)
                parts["heat"].setImage(heat, levels=(0.0, max(float(heat.max()), 1e-6)))
                title = f"{TITLES[key]} — {smap.detail}"
            parts["title"].setText(title, color="#222", size="11pt")
            draw_box(parts["box"], smap_box)
            parts["view"].setRange(QRectF(0, 0, w, h), padding=0.02)
        self._apply_colour_map(self.cmap_combo.currentText())
        self._apply_opacity(self.opacity_slider.value())
        self.result_label.setText(describe(result))

    def clear(self, message: str) -> None:
        """Nothing of a previous model's maps or boxes stays; ``message`` says why."""
        for key, parts in self.views.items():
            parts["base"].clear()
            parts["heat"].clear()
            parts["box"].hide()
            parts["title"].setText(TITLES[key], color="#222", size="11pt")
        self.result_label.setText(message)

    def _apply_opacity(self, value: int) -> None:
        for parts in self.views.values():
            parts["heat"].setOpacity(value / 100.0)

    def _apply_colour_map(self, name: str) -> None:
        try:
            cmap = pg.colormap.get(name)
        except Exception:  # noqa: BLE001 -- a map missing from this pyqtgraph build
            cmap = pg.colormap.get("viridis")
        for parts in self.views.values():
            parts["heat"].setColorMap(cmap)


def draw_box(item: QGraphicsRectItem, box: Optional[tuple]) -> None:
    """Show ``box`` (rows r0..r1, cols c0..c1, end exclusive) on ``item``; ``None`` hides it."""
    if box is None:
        item.hide()
        return
    r0, c0, r1, c1 = box
    item.setRect(QRectF(c0, r0, c1 - c0, r1 - r0))
    item.show()


def describe(result: Any) -> str:
    """The inspection in words: prediction, each map's peak and box, what covering the box did, the notes."""
    lines = [f"<b>{result.source}</b>: predicted class <b>{result.predicted}</b> ({result.confidence:.2%})"
             + (f", explaining class {result.explained_class}" if result.explained_class != result.predicted else "")]
    for key, smap in result.maps.items():
        marker = " (box used below)" if key == result.method else ""
        box = "none (empty map)" if smap.box is None else f"rows {smap.box[0]}–{smap.box[2] - 1}, cols {smap.box[1]}–{smap.box[3] - 1}"
        lines.append(f"{TITLES[key]}{marker}: peak {smap.peak}, salient box {box}")
    if result.repair is not None:
        r = result.repair
        verdict = "<b>left</b>" if r.left_class else "stayed in"
        lines.append(f"Covering the box: class {r.predicted} ({r.confidence:.1%}); {verdict} class {r.suspect_class} "
                     f"(its probability now {r.suspect_probability:.1%})")
    lines.extend(result.notes)
    return "<br>".join(lines)
