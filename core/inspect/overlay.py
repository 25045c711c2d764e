"""Heat-map overlays as plain RGB arrays and PNG files, without Qt.

The CLI's ``inspect --out`` and the Inspector's Export write the same
picture, so a figure in a report can be regenerated from the command line.
Images are enlarged with nearest-neighbour sampling (a 28x28 trigger must
stay crisp) and the box is drawn on the enlarged grid, on pixel edges.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from core.intake.atomic import atomic_path
from core.intake.data import encode_png

BOX_RGB = (0, 255, 0)


def heat_to_rgb(heat: np.ndarray) -> np.ndarray:
    """Positive part of a map, scaled by its peak, through the inferno colour map."""
    import cv2

    h = np.maximum(np.nan_to_num(np.asarray(heat, np.float32)), 0.0)
    top = float(h.max()) if h.size else 0.0
    grey = np.zeros(h.shape, np.uint8) if top <= 0 else np.round(255 * h / top).astype(np.uint8)
    bgr = cv2.applyColorMap(grey, cv2.COLORMAP_INFERNO)
    return bgr[:, :, ::-1].astype(np.float32)


def as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, C) pixel values 0..255 as float RGB (grey images repeated)."""
    image = np.clip(np.asarray(image, np.float32), 0, 255)
    if image.ndim == 2:
        image = image[:, :, None]
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3]


def render(
    image: np.ndarray,
    heat: Optional[np.ndarray] = None,
    box: Optional[Sequence[int]] = None,
    alpha: float = 0.5,
    zoom: int = 8,
) -> np.ndarray:
    """The image, optionally blended with a heat-map and a box, enlarged ``zoom`` times (uint8 RGB)."""
    rgb = as_rgb(image)
    if heat is not None:
        rgb = (1.0 - alpha) * rgb + alpha * heat_to_rgb(heat)
    big = np.repeat(np.repeat(rgb, zoom, axis=0), zoom, axis=1)
    if box is not None:
        r0, c0, r1, c1 = (int(v) * zoom for v in box)
        t = max(1, zoom // 4)
        big[r0 : r0 + t, c0:c1] = BOX_RGB
        big[r1 - t : r1, c0:c1] = BOX_RGB
        big[r0:r1, c0 : c0 + t] = BOX_RGB
        big[r0:r1, c1 - t : c1] = BOX_RGB
    return np.clip(big, 0, 255).astype(np.uint8)


def side_by_side(tiles: Sequence[np.ndarray], titles: Sequence[str] = (), gap: int = 8) -> np.ndarray:
    """Tiles (uint8 RGB, equal heights) in a row on white, each with a title above."""
    import cv2

    band = 22 if titles else 0
    height = max(t.shape[0] for t in tiles) + band
    width = sum(t.shape[1] for t in tiles) + gap * (len(tiles) + 1)
    canvas = np.full((height + gap, width, 3), 255, np.uint8)
    x = gap
    for k, tile in enumerate(tiles):
        canvas[band : band + tile.shape[0], x : x + tile.shape[1]] = tile
        if k < len(titles):
            cv2.putText(canvas, titles[k][:40], (x, band - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (20, 20, 20), 1, cv2.LINE_AA)
        x += tile.shape[1] + gap
    return canvas


def write_png_atomic(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB array as a PNG that appears whole or not at all."""
    data = encode_png(rgb)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def inspection_figure(inspection: "object", alpha: float = 0.5, zoom: int = 8) -> np.ndarray:
    """Image plus one overlay per map of a :class:`core.inspect.trigger.Inspection`, boxes drawn."""
    primary_box = inspection.primary.box  # type: ignore[attr-defined]
    tiles = [render(inspection.image, None, primary_box, alpha, zoom)]  # type: ignore[attr-defined]
    titles = [f"predicted {inspection.predicted} ({inspection.confidence:.1%})"]  # type: ignore[attr-defined]
    for name, smap in inspection.maps.items():  # type: ignore[attr-defined]
        tiles.append(render(inspection.image, smap.heat, smap.box, alpha, zoom))  # type: ignore[attr-defined]
        titles.append({"gradcam": "Grad-CAM", "occlusion": "Occlusion"}.get(name, name))
    return side_by_side(tiles, titles)
