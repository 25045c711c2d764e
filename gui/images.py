"""NumPy images to Qt pixmaps (model-layout float 0..255 in, crisp enlarged pixmaps out)."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage, QPixmap


def to_pixmap(image: np.ndarray, size: int = 96) -> QPixmap:
    """An (H, W, C) image with values 0..255 as a pixmap ``size`` pixels high."""
    array = np.clip(np.asarray(image, dtype=np.float32), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    array = np.ascontiguousarray(array)
    h, w = array.shape[:2]
    if array.ndim == 2:
        qimage = QImage(array.data, w, h, w, QImage.Format.Format_Grayscale8)
    else:
        qimage = QImage(array.data, w, h, 3 * w, QImage.Format.Format_RGB888)
    pixmap = QPixmap.fromImage(qimage.copy())
    return pixmap.scaledToHeight(size, Qt.TransformationMode.FastTransformation)
