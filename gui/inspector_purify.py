"""The Inspector's purification strip: a flagged image, the region cut out of it, and the purified image, side by side, with the answer and why."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGridLayout, QGroupBox, QLabel

from gui.images import to_pixmap

SIDE = 112  # pixels of each picture
FIRST_LINE = ("Not purified: a flagged row sent from the STRIP panel (with Purify flagged on) shows here its original, the region "
              "cut out and the purified image.")
REGION_RGB = np.array([230.0, 40.0, 40.0], np.float32)  # the cut-out pixels, drawn over the original


def displayable(image: np.ndarray) -> np.ndarray:
    """Pixel values as stored -> 0..255 (images stored as 0..1 are stretched)."""
    shown = np.asarray(image, np.float32)
    return shown * 255.0 if shown.size and float(shown.max()) <= 1.0 else shown


def region_picture(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image in grey-tinted RGB with the ``mask`` pixels in red: where the trigger was cut out."""
    rgb = np.asarray(image, np.float32)
    rgb = np.repeat(rgb, 3, axis=2) if rgb.shape[2] == 1 else rgb[:, :, :3]
    out = 0.6 * rgb
    out[np.asarray(mask, bool)] = REGION_RGB
    return out


class PurificationBox(QGroupBox):
    """Shows a ``core.repair.purify.Purified``: the three pictures and the line under them."""

    def __init__(self) -> None:
        super().__init__("Purification: the flagged image, the region cut out, the purified image")
        grid = QGridLayout(self)
        self.pictures: dict[str, QLabel] = {}
        self.captions: dict[str, QLabel] = {}
        for col, key in enumerate(("original", "region", "purified")):
            picture = QLabel()
            picture.setFixedSize(SIDE, SIDE)
            picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
            picture.setStyleSheet("background: #f4f5f7; border: 1px solid #dfe3ea")
            caption = QLabel(key.capitalize())
            caption.setAlignment(Qt.AlignmentFlag.AlignCenter)
            grid.addWidget(picture, 0, col)
            grid.addWidget(caption, 1, col)
            self.pictures[key], self.captions[key] = picture, caption
        self.line = QLabel(FIRST_LINE)
        self.line.setWordWrap(True)
        self.line.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        grid.addWidget(self.line, 0, 3, 2, 1)
        grid.setColumnStretch(3, 1)
        self.purified: Any = None

    def show_purified(self, purified: Any, image: Optional[np.ndarray] = None, num_classes: Optional[int] = None) -> None:
        """``purified`` (None: clear); ``image`` is shown as the original when the purification kept none."""
        from core.repair import purify

        self.purified = purified
        if purified is None:
            self.clear()
            return
        before = purified.before if purified.before is not None else image
        before = None if before is None else displayable(before)
        self._set("original", before, f"Original: model class {purified.label}")
        if purified.mask is not None and before is not None:
            self._set("region", region_picture(before, purified.mask), f"Cut out: {int(purified.mask.sum())} px")
        else:
            self._set("region", None, "Nothing cut out")
        if purified.after is not None:
            self._set("purified", displayable(purified.after), f"Filled ({purify.FILL_NAMES.get(purified.fill, purified.fill)}): class {purified.purified_label}")
        else:
            self._set("purified", None, "No filled image")
        if purified.purified_label is None:
            head = f"<b style='color:#b3261e'>Cannot purify</b>: the guarded classifier answers {num_classes if num_classes is not None else 'N'}"
        else:
            head = (f"<b style='color:#1f5fa8'>Purified: class {purified.purified_label}</b> ({purified.confidence:.0%}), "
                    f"{purify.METHOD_LABELS.get(purified.method, purified.method)}; the model said {purified.label}")
        self.line.setText(f"{head}.<br>{purified.reason}")

    def clear(self, message: str = FIRST_LINE) -> None:
        for key in self.pictures:
            self._set(key, None, key.capitalize())
        self.line.setText(message)
        self.purified = None

    def _set(self, key: str, image: Optional[np.ndarray], caption: str) -> None:
        picture = self.pictures[key]
        if image is None:
            picture.clear()
        else:
            picture.setPixmap(to_pixmap(image, SIDE - 4))
        self.captions[key].setText(caption)
