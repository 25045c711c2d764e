"""Inspector: where in one image the prediction comes from, and whether that region is a trigger.

Pick an image (a file or folder, the loaded data, or "send to Inspector" from
another panel through :meth:`InspectorPanel.inspect_image`); the panel shows
it beside its Grad-CAM and occlusion overlays with the salient box on each,
and runs the transplant test on request. Engine: core/inspect/gradcam.py,
core/inspect/occlusion.py, core/inspect/trigger.py.

The panel lists images and runs the jobs; its parts: gui/inspector_settings.py
(how to inspect), gui/inspector_views.py (the heat maps), gui/inspector_transplant.py
(the transplant box), gui/inspector_purify.py (a flagged row's purification, sent from the STRIP
panel: original, region cut out, purified image), gui/inspector_reads.py (scale and clean images, read once).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from PySide6.QtCore import QSize, Qt, Slot
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from gui.images import to_pixmap
from gui.inspector_purify import PurificationBox
from gui.inspector_reads import CachedReads
from gui.inspector_transplant import TransplantBox
from gui.inspector_transplant import FIRST_LINE as TRANSPLANT_LINE
from gui.inspector_settings import InspectSettings
from gui.inspector_views import HeatMapView, draw_box
from gui.state import ROLES, Kind

THUMBNAILS = 200  # images listed from a source
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
        self._reads = CachedReads(self.state)  # the pixel scale and the clean images, read once

        layout = QVBoxLayout(self)
        layout.addLayout(self._controls())
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self._picker())
        splitter.addWidget(self._viewer())
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 4)
        splitter.setSizes([220, 1000])
        layout.addWidget(splitter, 3)
        self.purification_box = PurificationBox()
        layout.addWidget(self.purification_box)
        self._transplant = TransplantBox()
        self.transplant_button, self.m_spin, self.transplant_label = (
            self._transplant.transplant_button, self._transplant.m_spin, self._transplant.transplant_label)
        self.grid_host, self.grid = self._transplant.grid_host, self._transplant.grid
        self.transplant_button.clicked.connect(lambda: self.run_transplant())
        layout.addWidget(self._transplant, 2)
        self.state.model_changed.connect(self._on_model)
        self.state.data_changed.connect(self._refresh_sources)
        self._refresh_sources()
        self._refresh_buttons()

    # --------------------------------------------------------------- layout

    def _controls(self) -> QVBoxLayout:
        """Two rows (what to inspect; how), so the panel fits a 1,280 px screen."""
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
        self._settings = InspectSettings()
        rows.addWidget(self._settings)
        st = self._settings
        self.method_combo, self.class_spin, self.layer_combo = st.method_combo, st.class_spin, st.layer_combo
        self.patch_spin, self.stride_spin, self.fill_combo, self.threshold_spin = st.patch_spin, st.stride_spin, st.fill_combo, st.threshold_spin
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
        self._heat = HeatMapView()
        self.graphics, self.views, self.opacity_slider, self.cmap_combo = (
            self._heat.graphics, self._heat.views, self._heat.opacity_slider, self._heat.cmap_combo)
        self.export_button, self.result_label = self._heat.export_button, self._heat.result_label
        self.export_button.clicked.connect(self.choose_export)
        return self._heat

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
        purified = item.get("purified") if isinstance(item, dict) else None
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
        self.purification_box.show_purified(purified, image, loaded.num_classes)
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
            scale = yield from self._reads.scale_job()
            value = None
            if fill == "mean":
                clean = yield from self._reads.clean_job()
                value = clean_mean(clean.x)
            settings = OcclusionSettings(patch or None, stride or None, fill, value)
            result = yield from inspect(loaded, image, scale, method, METHODS, layer, None if cls < 0 else cls, settings, threshold)
            result.label, result.source = label, source
            return result

        return job

    def _show_inspection(self, result: Any) -> None:
        self.inspection = result
        self.transplant_result = None
        self._inspection_entry = self.state.publish(Kind.INSPECTION, result, note=f"one image: {result.source}")
        self._transplant.clear()
        self._heat.show_inspection(result)
        self.transplant_label.setText("Press Transplant test to paste the box onto clean images of other classes.")
        self._refresh_buttons()
        self.window.status.setText(f"Inspected {result.source}: class {result.predicted} ({result.confidence:.1%})")

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
            clean = yield from self._reads.clean_job()
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
        self._transplant.show_transplant(tr)
        draw_box(self.views["image"]["box"], tr.box)

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
        self._settings.set_model(loaded)
        self.inspection = self.transplant_result = self._inspection_entry = None
        self._images = None
        self.image_list.clear()
        self._reads.forget()
        self._heat.clear("Model changed: choose an image on the left, open one, or send one here from another panel.")
        self.purification_box.clear()
        self._transplant.clear(TRANSPLANT_LINE)
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
            scale = yield from self._reads.scale_job()
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
