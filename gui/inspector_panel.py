"""Inspector: where in one image the prediction comes from, and whether that region is a trigger.

Pick an image (a file or folder, the loaded data, or "send to Inspector" from
another panel through :meth:`InspectorPanel.inspect_image`); the panel shows
it beside its Grad-CAM and occlusion overlays with the salient box on each,
and runs the transplant test on request. Engine: core/inspect/gradcam.py,
core/inspect/occlusion.py, core/inspect/trigger.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, QSize, Qt, Slot
from PySide6.QtGui import QColor, QIcon, QPen
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QGraphicsRectItem,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from gui.images import to_pixmap
from gui.state import ROLES, Kind

THUMBNAILS = 200  # images listed from a source
CLEAN_LIMIT = 5000  # clean images read for the transplant test and the mean fill
GRID_COLUMNS = 12
CELL = 56  # thumbnail side in the transplant grid
COLOUR_MAPS = ["inferno", "viridis", "turbo", "CET-L3"]
TITLES = {"image": "Image", "gradcam": "Grad-CAM", "occlusion": "Occlusion"}
FOLDER = "__folder__"


def item_name(source: str, index: Optional[int]) -> str:
    """A file's path, or ``file.h5#12`` for an image inside an HDF5/npz file (the report keeps the index)."""
    if index is not None and Path(source).suffix.lower() in (".h5", ".hdf5", ".npz"):
        return f"{source}#{int(index)}"
    return source


class InspectorPanel(QWidget):
    TITLE = "Inspector"

    def __init__(self, window: Any) -> None:
        super().__init__()
        self.window = window
        self.state = window.state
        self.inspection: Any = None  # core.inspect.trigger.Inspection on screen
        self.transplant_result: Any = None
        self._inspection_entry: Any = None  # the inspection as published, the parent of its transplant
        self._images: Optional[np.ndarray] = None  # images listed on the left
        self._labels: Optional[np.ndarray] = None
        self._names: list[str] = []
        self._folder_source: Any = None
        self._clean_cache: tuple[Any, Any] = (None, None)  # (source, Arrays)
        self._scale_cache: tuple[Any, Any, str] = (None, None, "")  # (model, source, scale)

        layout = QVBoxLayout(self)
        layout.addLayout(self._controls())
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self._picker())
        splitter.addWidget(self._viewer())
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 4)
        splitter.setSizes([220, 1000])
        layout.addWidget(splitter, 3)
        layout.addWidget(self._transplant_box(), 2)
        self.state.model_changed.connect(self._on_model)
        self.state.data_changed.connect(self._refresh_sources)
        self._refresh_sources()
        self._refresh_buttons()

    # --------------------------------------------------------------- layout

    def _controls(self) -> QVBoxLayout:
        """Two rows (what to inspect; how), so the panel fits a 1,280 px screen."""
        from core.inspect.occlusion import FILLS
        from core.inspect.trigger import DEFAULT_METHOD, METHODS

        rows = QVBoxLayout()
        row = QHBoxLayout()
        rows.addLayout(row)
        row.addWidget(QLabel("Images from"))
        self.source_combo = QComboBox()
        self.source_combo.setMinimumWidth(200)
        self.source_combo.activated.connect(self._source_chosen)
        row.addWidget(self.source_combo)
        self.open_button = QPushButton("Open image or folder…")
        self.open_button.clicked.connect(self.choose_files)
        row.addWidget(self.open_button)
        self.inspect_button = QPushButton("Inspect")
        self.inspect_button.clicked.connect(self.inspect_selected)
        row.addWidget(self.inspect_button)
        row.addStretch(1)
        row = QHBoxLayout()
        rows.addLayout(row)
        row.addWidget(QLabel("Box from"))
        self.method_combo = QComboBox()
        for m in METHODS:
            self.method_combo.addItem(TITLES[m], m)
        self.method_combo.setCurrentIndex(METHODS.index(DEFAULT_METHOD))
        self.method_combo.setToolTip("Which map's box is transplanted and covered. Occlusion (default) resolves small triggers to the stride; Grad-CAM to the last conv layer's cells.")
        row.addWidget(self.method_combo)
        row.addWidget(QLabel("Class"))
        self.class_spin = QSpinBox()
        self.class_spin.setRange(-1, 100000)
        self.class_spin.setSpecialValueText("predicted")
        self.class_spin.setValue(-1)
        row.addWidget(self.class_spin)
        row.addWidget(QLabel("Layer"))
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("Conv layer for Grad-CAM (default: the last)")
        row.addWidget(self.layer_combo)
        row.addWidget(QLabel("Patch"))
        self.patch_spin = QSpinBox()
        self.patch_spin.setRange(0, 512)
        self.patch_spin.setSpecialValueText("auto")
        self.patch_spin.setToolTip("Occlusion patch side; auto tries about 1/7, 1/4 and 1/2.5 of the image side "
                                   "and keeps the smallest whose box, covered, changes the prediction")
        row.addWidget(self.patch_spin)
        row.addWidget(QLabel("Stride"))
        self.stride_spin = QSpinBox()
        self.stride_spin.setRange(0, 512)
        self.stride_spin.setSpecialValueText("auto")
        row.addWidget(self.stride_spin)
        row.addWidget(QLabel("Fill"))
        self.fill_combo = QComboBox()
        self.fill_combo.addItems(list(FILLS))
        row.addWidget(self.fill_combo)
        row.addWidget(QLabel("Threshold"))
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.05, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setValue(0.5)
        self.threshold_spin.setToolTip("Salient region: pixels above this fraction of the map's peak")
        row.addWidget(self.threshold_spin)
        row.addStretch(1)
        return rows

    def _picker(self) -> QWidget:
        self.image_list = QListWidget()
        self.image_list.setViewMode(QListWidget.ViewMode.IconMode)
        self.image_list.setIconSize(QSize(56, 56))
        self.image_list.setGridSize(QSize(70, 84))
        self.image_list.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.image_list.setMovement(QListWidget.Movement.Static)
        self.image_list.itemActivated.connect(lambda _item: self.inspect_selected())
        self.image_list.itemClicked.connect(lambda _item: self.inspect_selected())
        return self.image_list

    def _viewer(self) -> QWidget:
        host = QWidget()
        column = QVBoxLayout(host)
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
        self.export_button.clicked.connect(self.choose_export)
        bar.addWidget(self.export_button)
        bar.addStretch(1)
        column.addLayout(bar)
        self.result_label = QLabel("Choose an image on the left, open one, or send one here from another panel.")
        self.result_label.setWordWrap(True)
        self.result_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        column.addWidget(self.result_label)
        self._apply_colour_map(self.cmap_combo.currentText())
        self._apply_opacity(self.opacity_slider.value())
        return host

    def _transplant_box(self) -> QGroupBox:
        box = QGroupBox("Transplant test: paste the salient box onto clean images of other classes")
        column = QVBoxLayout(box)
        row = QHBoxLayout()
        self.transplant_button = QPushButton("Transplant test")
        self.transplant_button.clicked.connect(lambda: self.run_transplant())
        row.addWidget(self.transplant_button)
        row.addWidget(QLabel("Clean images"))
        self.m_spin = QSpinBox()
        self.m_spin.setRange(1, 10000)
        self.m_spin.setValue(100)
        row.addWidget(self.m_spin)
        self.transplant_label = QLabel("A trigger flips most of them to the suspect's class; a random clean box of the same size (baseline) does not.")
        self.transplant_label.setWordWrap(True)
        row.addWidget(self.transplant_label, 1)
        column.addLayout(row)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        self.grid_host = QWidget()
        self.grid = QGridLayout(self.grid_host)
        self.grid.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        scroll.setWidget(self.grid_host)
        column.addWidget(scroll, 1)
        return box

    # ------------------------------------------------------------- sources

    def _refresh_sources(self, _role: str = "") -> None:
        current = self.source_combo.currentData()
        self.source_combo.blockSignals(True)
        self.source_combo.clear()
        for role, label in ROLES.items():
            if role in self.state.data:
                self.source_combo.addItem(f"{label}: {self.state.data[role].path.name}", role)
        if self._folder_source is not None:
            self.source_combo.addItem(f"Opened: {self._folder_source.path.name}", FOLDER)
        self.source_combo.addItem("Open an image or folder…", "__choose__")
        index = self.source_combo.findData(current)
        self.source_combo.setCurrentIndex(max(index, 0))
        self.source_combo.blockSignals(False)
        self._refresh_buttons()

    def _source_chosen(self, _index: int) -> None:
        key = self.source_combo.currentData()
        if key == "__choose__":
            self.choose_files()
            return
        self.load_source(key)

    def _source(self, key: Optional[str]) -> Any:
        if key == FOLDER:
            return self._folder_source
        return self.state.data.get(key) if key else None

    def choose_files(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open an image (cancel to choose a folder)", self.window._last_dir(),
                                              "Images (*.png *.jpg *.jpeg *.bmp *.tif *.tiff *.webp);;All files (*)")
        if not path:
            path = QFileDialog.getExistingDirectory(self, "Or choose a folder of images", self.window._last_dir())
        if path:
            self.open_path(path)

    def open_path(self, path: str) -> None:
        """List the images of a file or folder on the left (first :data:`THUMBNAILS`)."""
        from core.intake.data import open_data
        from core.errors import TrojanScopeError

        try:
            self._folder_source = open_data(path)
        except TrojanScopeError as exc:
            self.window.show_error(str(exc))
            return
        self._refresh_sources()
        self.source_combo.setCurrentIndex(self.source_combo.findData(FOLDER))
        self.load_source(FOLDER)

    def load_source(self, key: Optional[str], then: Optional[Callable[[], None]] = None) -> bool:
        """Read the first images of a source into the list; ``then`` runs once they are shown."""
        from core.intake.data import load_arrays
        from core.jobs import Progress

        source, loaded = self._source(key), self.state.loaded
        if source is None or loaded is None:
            return False

        def job():
            yield Progress(None, f"Reading {source.path.name}")
            return load_arrays(source, loaded.input_shape, THUMBNAILS)

        def shown(arrays: Any) -> None:
            self._show_list(arrays)
            if then:
                then()

        return self.window.start_job(f"Reading {source.path.name}", job, shown)

    def _show_list(self, arrays: Any) -> None:
        self._images, self._labels, self._names = arrays.x, arrays.y, list(arrays.sources)
        self.image_list.clear()
        for i, image in enumerate(arrays.x):
            label = "" if arrays.y is None else f" · {int(arrays.y[i])}"
            item = QListWidgetItem(QIcon(to_pixmap(image, 56)), f"#{i}{label}")
            item.setToolTip(f"{arrays.sources[i]} #{i}" + ("" if arrays.y is None else f", label {int(arrays.y[i])}"))
            item.setData(Qt.ItemDataRole.UserRole, i)
            self.image_list.addItem(item)
        if arrays.skipped:
            self.window.status.setText(f"{len(arrays.skipped)} file(s) skipped, e.g. {arrays.skipped[0].source}: {arrays.skipped[0].reason}")
        else:
            self.window.status.setText(f"{len(arrays.x)} image(s) listed: click one to inspect it")
        if len(arrays.x) and self.image_list.currentRow() < 0:
            self.image_list.setCurrentRow(0)
        self._refresh_buttons()

    # -------------------------------------------------------------- inspect

    def inspect_selected(self) -> None:
        item = self.image_list.currentItem()
        if item is None or self._images is None:
            return
        i = int(item.data(Qt.ItemDataRole.UserRole))
        label = None if self._labels is None else int(self._labels[i])
        name = self._names[i] if i < len(self._names) else f"#{i}"
        self.inspect_image(self._images[i], label, source=f"{name} #{i}" if "#" not in name else name)

    @Slot(object)
    def inspect_image(self, image_array_or_path: Any, label: Optional[int] = None, source: str = "",
                      then: Optional[Callable[[], None]] = None, failed: Optional[Callable[[], None]] = None) -> bool:
        """Inspect one image: an (H, W, C) array with pixel values as stored, or a path.

        The slot other panels call ("send to Inspector"); a ``(image, label)``
        tuple or a ``{"image"/"source", "label"}`` dict is accepted too, so a
        signal carrying one object can connect straight to it.
        """
        from core.intake.data import ImageUnreadable, conform, read_image

        loaded = self.state.loaded
        if loaded is None:
            self.window.show_error("Open a model before inspecting an image")
            if failed:
                failed()
            return False
        item = image_array_or_path
        if isinstance(item, dict):
            label = item.get("label", label)
            source = source or item_name(str(item.get("source", "")), item.get("index"))
            item = item.get("image", item.get("source"))
        elif isinstance(item, tuple) and len(item) == 2:
            item, label = item
        if isinstance(item, (str, Path)):
            source = source or str(item)
            try:
                image = read_image(Path(item))
            except ImageUnreadable as exc:
                self.window.show_error(f"cannot inspect {item}: {exc}")
                if failed:
                    failed()
                return False
        else:
            image = np.asarray(item, np.float32)
            if image.ndim == 2:
                image = image[:, :, None]
        image = conform(image[None].astype(np.float32), loaded.input_shape)[0]
        self.window.tabs.setCurrentWidget(self)
        factory = self._inspect_factory(image, None if label is None else int(label), source or "image")

        def show(result: Any) -> None:
            self._show_inspection(result)
            if then:
                then()

        def error(_message: str) -> None:
            if failed:
                failed()

        if self.window.runner.busy:
            self.window.after_idle(lambda: self.window.start_job("Inspecting", factory, show, on_error=error))
            return True
        started = self.window.start_job("Inspecting", factory, show, on_error=error)
        if not started and failed:
            failed()
        return started

    def _inspect_factory(self, image: np.ndarray, label: Optional[int], source: str) -> Callable[[], Any]:
        from core.inspect.occlusion import OcclusionSettings, clean_mean
        from core.inspect.trigger import METHODS, inspect

        loaded = self.state.loaded
        method = self.method_combo.currentData()
        cls = self.class_spin.value()
        layer = self.layer_combo.currentData()
        fill, patch, stride = self.fill_combo.currentText(), self.patch_spin.value(), self.stride_spin.value()
        threshold = self.threshold_spin.value()

        def job():
            scale = yield from self._scale_job()
            value = None
            if fill == "mean":
                clean = yield from self._clean_job()
                value = clean_mean(clean.x)
            settings = OcclusionSettings(patch or None, stride or None, fill, value)
            result = yield from inspect(loaded, image, scale, method, METHODS, layer, None if cls < 0 else cls, settings, threshold)
            result.label, result.source = label, source
            return result

        return job

    def _scale_job(self):
        """The pixel scale: the analyst's choice, or measured once on clean data for ``auto``."""
        from core.evaluate import choose_scale
        from core.jobs import Progress

        loaded, clean = self.state.loaded, self.state.clean_for_calibration()
        if self.state.scale != "auto":
            return self.state.scale
        model, source, scale = self._scale_cache
        if model is loaded and source is clean and scale:
            return scale
        yield Progress(None, "Choosing the input scale")
        scale, _note = choose_scale(loaded, clean, "auto")
        self._scale_cache = (loaded, clean, scale)
        return scale

    def _clean_job(self):
        """Clean images (up to :data:`CLEAN_LIMIT`), read once per source."""
        from core.intake.data import load_arrays
        from core.errors import DataError
        from core.jobs import Progress

        clean = self.state.data.get("clean_test") or self.state.clean_for_calibration()
        if clean is None:
            raise DataError("the transplant test and the mean fill need clean data: open clean test or validation data first")
        source, arrays = self._clean_cache
        if source is clean:
            return arrays
        yield Progress(None, f"Reading clean images from {clean.path.name}")
        arrays = load_arrays(clean, self.state.loaded.input_shape, CLEAN_LIMIT)
        if len(arrays) == 0:
            raise DataError(f"{clean.path}: no readable clean images")
        self._clean_cache = (clean, arrays)
        return arrays

    def _show_inspection(self, result: Any) -> None:
        self.inspection = result
        self.transplant_result = None
        self._inspection_entry = self.state.publish(Kind.INSPECTION, result, note=f"one image: {result.source}")
        self._clear_grid()
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
            self._draw_box(parts["box"], smap_box)
            parts["view"].setRange(QRectF(0, 0, w, h), padding=0.02)
        self._apply_colour_map(self.cmap_combo.currentText())
        self._apply_opacity(self.opacity_slider.value())
        self.result_label.setText(self._describe(result))
        self.transplant_label.setText("Press Transplant test to paste the box onto clean images of other classes.")
        self._refresh_buttons()
        self.window.status.setText(f"Inspected {result.source}: class {result.predicted} ({result.confidence:.1%})")

    @staticmethod
    def _draw_box(item: QGraphicsRectItem, box: Optional[tuple]) -> None:
        if box is None:
            item.hide()
            return
        r0, c0, r1, c1 = box
        item.setRect(QRectF(c0, r0, c1 - c0, r1 - r0))
        item.show()

    @staticmethod
    def _describe(result: Any) -> str:
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

    # ------------------------------------------------------------ transplant

    def run_transplant(self, done: Optional[Callable[[], None]] = None) -> bool:
        """Paste the box of the image on screen onto clean images; show the grid and the flip rate."""
        from core.errors import DataError
        from core.inspect.trigger import transplant_search

        result = self.inspection
        if result is None or result.primary.box is None:
            self.window.show_error("Inspect an image with a non-empty salient box first")
            if done:
                done()
            return False
        loaded, m = self.state.loaded, self.m_spin.value()

        clean_role = "clean_test" if "clean_test" in self.state.data else self.state.calibration_role()
        parent = self._inspection_entry

        def job():
            clean = yield from self._clean_job()
            if clean.x.shape[1:] != result.image.shape:
                raise DataError("the clean data does not match the model's input: reopen it")
            return (yield from transplant_search(loaded, result, clean.x, clean.y, m))

        def finished(tr: Any) -> None:
            self._show_transplant(tr)
            source = self.state.data.get(clean_role)
            self.state.publish(Kind.TRANSPLANT, tr, [clean_role], parent=parent,
                               note=f"{tr.n} clean images of {source.path.name if source else 'the clean data'} "
                                    f"not of class {tr.suspect_class}")

        started = self.window.start_job("Transplant test", job, finished, on_end=lambda _o: done() if done else None)
        if not started and done:
            done()
        return started

    def _show_transplant(self, tr: Any) -> None:
        self.transplant_result = tr
        verdict = "looks like a trigger" if tr.looks_like_trigger else "does not behave like a trigger"
        r0, c0, r1, c1 = tr.box
        others = [t for t in tr.tried if t["box_from"] != tr.box_from]
        tried = ("" if not others else "<br>Also tried: " + "; ".join(
            f"{t['box_from'].split(',')[1].strip() if ',' in t['box_from'] else t['box_from']}: {t['flip_rate']:.0%} "
            f"(baseline {t['baseline']:.0%})" for t in others))
        self.transplant_label.setText(
            f"<b>{tr.flip_rate:.0%}</b> of {tr.n} clean images flipped to class {tr.suspect_class} "
            f"(baseline: random clean box {tr.baseline:.0%}, same region of clean images {tr.baseline_same_place:.0%}) — the box {verdict}."
            f"<br>Box pasted: rows {r0}–{r1 - 1}, cols {c0}–{c1 - 1}, from the {tr.box_from} map.{tried}"
        )
        self._draw_box(self.views["image"]["box"], tr.box)
        self._clear_grid()
        self.grid.addWidget(QLabel("Suspect box\npasted:"), 0, 0)
        for k in range(min(len(tr.examples), GRID_COLUMNS)):
            self._add_cell(0, k + 1, tr.examples[k], int(tr.before[k]), int(tr.predicted[k]), tr.suspect_class)
        self.grid.addWidget(QLabel("Baseline\n(random\nclean box):"), 1, 0)
        for k in range(min(len(tr.baseline_examples), GRID_COLUMNS)):
            self._add_cell(1, k + 1, tr.baseline_examples[k], int(tr.before[k]), int(tr.baseline_predicted[k]), tr.suspect_class)

    def _add_cell(self, row: int, col: int, image: np.ndarray, before: int, after: int, suspect: int) -> None:
        cell = QWidget()
        v = QVBoxLayout(cell)
        v.setContentsMargins(2, 2, 2, 2)
        v.setSpacing(1)
        picture = QLabel()
        picture.setPixmap(to_pixmap(image, CELL))
        picture.setFixedSize(CELL, CELL)
        flipped = after == suspect
        caption = QLabel(f"{before} → {after}")
        caption.setStyleSheet(f"color: {'#b3261e' if flipped else '#1b7f3a'}; font-size: 10px; font-weight: {'bold' if flipped else 'normal'}")
        caption.setAlignment(Qt.AlignmentFlag.AlignCenter)
        v.addWidget(picture)
        v.addWidget(caption)
        self.grid.addWidget(cell, row, col)

    def _clear_grid(self) -> None:
        while self.grid.count():
            item = self.grid.takeAt(0)
            if item.widget():
                item.widget().deleteLater()

    # --------------------------------------------------------------- export

    def choose_export(self) -> None:
        if self.inspection is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export overlays", str(Path(self.window._last_dir()) / "inspection.png"), "PNG (*.png)")
        if path:
            self.export_overlays(path if path.lower().endswith(".png") else path + ".png")

    def export_overlays(self, path: str | Path) -> Optional[Path]:
        """Write the image and its overlays side by side (same picture as ``inspect --out``)."""
        from core.errors import TrojanScopeError
        from core.inspect.overlay import inspection_figure, write_png_atomic

        if self.inspection is None:
            return None
        try:
            saved = write_png_atomic(path, inspection_figure(self.inspection, alpha=self.opacity_slider.value() / 100.0))
        except (TrojanScopeError, OSError) as exc:
            self.window.show_error(f"could not export to {path}: {exc}")
            return None
        self.window.status.setText(f"Overlays exported to {saved}")
        return saved

    # ---------------------------------------------------------------- state

    def _on_model(self) -> None:
        """Another model: nothing of the old one's heat-maps, boxes or transplant may stay on screen."""
        loaded = self.state.loaded
        self.layer_combo.clear()
        self.layer_combo.addItem("last conv", None)
        for conv in loaded.summary.conv_layers:
            self.layer_combo.addItem(conv.name, conv.name)
        self.class_spin.setMaximum(loaded.num_classes - 1)
        self.inspection = self.transplant_result = self._inspection_entry = None
        self._images = None
        self.image_list.clear()
        self._clean_cache = (None, None)
        self._scale_cache = (None, None, "")
        for key, parts in self.views.items():
            parts["base"].clear()
            parts["heat"].clear()
            parts["box"].hide()
            parts["title"].setText(TITLES[key], color="#222", size="11pt")
        self._clear_grid()
        self.result_label.setText("Model changed: choose an image on the left, open one, or send one here from another panel.")
        self.transplant_label.setText("A trigger flips most of them to the suspect's class; a random clean box of the same size (baseline) does not.")
        self._refresh_buttons()

    def _refresh_buttons(self) -> None:
        have_model = self.state.loaded is not None
        self.inspect_button.setEnabled(have_model and self._images is not None)
        self.transplant_button.setEnabled(have_model and self.inspection is not None)
        self.export_button.setEnabled(self.inspection is not None)

    # -------------------------------------------------------------- default

    def run_default(self, done: Callable[[], None]) -> None:
        """Inspect the first image of the poisoned data the backdoor fires on, then transplant it."""
        from core.intake.data import load_arrays
        from core.intake.inference import predict_labels
        from core.jobs import Progress

        loaded, source = self.state.loaded, self.state.data.get("poisoned")
        if loaded is None or source is None:
            done()
            return
        self.source_combo.setCurrentIndex(max(self.source_combo.findData("poisoned"), 0))
        target = self.state.target

        def job():
            scale = yield from self._scale_job()
            yield Progress(None, f"Reading {source.path.name}")
            arrays = load_arrays(source, loaded.input_shape, THUMBNAILS)
            return arrays, predict_labels(loaded, arrays.x, scale)

        def listed(found: Any) -> None:
            arrays, predicted = found
            self._show_list(arrays)
            if not len(arrays):
                done()
                return
            # "Triggered": the backdoor fires (prediction = the target, given or the poisoned labels).
            if target is not None:
                fired = predicted == target
            elif arrays.y is not None:
                fired = predicted == arrays.y
            else:
                fired = np.ones(len(predicted), bool)
            i = int(np.flatnonzero(fired)[0]) if fired.any() else 0
            self.image_list.setCurrentRow(i)
            label = None if arrays.y is None else int(arrays.y[i])
            self.window.after_idle(lambda: self.inspect_image(
                arrays.x[i], label, f"{source.path.name} #{i}",
                then=lambda: self.window.after_idle(lambda: self.run_transplant(done)), failed=done))

        if not self.window.start_job("Inspector: choosing a triggered image", job, listed, on_error=lambda _m: done()):
            done()
