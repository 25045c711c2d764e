"""STRIP and other input scanners: calibrate, drag the threshold, scan folders into a live table.

The engines are :mod:`core.detect.input_level.strip` (STRIP alone) and :mod:`core.detect.input_level.scanner`
(the feature-space detector, or combined: flagged if either flags); this
panel only drives their jobs and shows what they yield. The histogram and the
draggable line belong to the method's first detector (STRIP's entropy, or the
feature-space distance); in combined mode the other detector keeps its
calibrated threshold. Scan rows arrive in chunks on the worker thread's events,
wait in a pending list, and a 100 ms timer moves them into the table model
and redraws the histograms, so 5,000 rows never mean 5,000 repaints.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSize, QSortFilterProxyModel, Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from core.detect.input_level import scanner
from core.detect.input_level import strip
from core.intake.atomic import write_text_atomic
from core.jobs import Progress
from gui.images import to_pixmap
from gui.jobs import CANCELLED, DONE
from gui.state import Kind

FLUSH_MS = 100
FLUSH_ROWS = 500  # rows moved into the table per tick: each tick stays short however fast rows arrive
THRESHOLD_MS = 50
THUMB_PX = 40
BINS = 50
EMPTY_X, EMPTY_Y = np.array([0.0, 1e-6]), np.array([0.0])  # an empty step curve
CLEAN_BRUSH = (60, 110, 200, 110)
SCAN_BRUSH = (230, 120, 30, 110)
FLAGGED = QColor("#b3261e")
ACCEPTED = QColor("#1b7f3a")
DATA_FILTER = "Data (*.h5 *.hdf5 *.npz);;All files (*)"
PROFILE_FILTER = "Scan profiles (*.npz);;All files (*)"
# The methods offered (TeCo was measured and left out; SCALE-UP alone misses most triggers but
# catches SIG, so it runs inside "combined": docs/scan.md).
# The targeted detectors (masking, feature space on the targets, the clean reference) need the Verdict
# panel's targets: they join Combined once they exist.
METHODS = (("combined", "Combined (STRIP + feature space + SCALE-UP, + targeted)"), ("strip", "STRIP"), ("features", "Feature space"),
           ("masking", "Reversed-trigger masking"), ("reference", "Clean reference model"))
AXIS = {"strip": "mean entropy per blend (bits)", "features": "distance to the predicted class's clean features (Mahalanobis)",
        "scaleup": "scaled prediction consistency (SCALE-UP)",
        "masking": "fall of the target's log-probability once its reversed trigger is masked",
        "target_features": "distance to the suspected target's clean features (Mahalanobis)",
        "reference": "clean networks' disbelief x the model's certainty (geometric mean, nats)"}
SCORE_HEADER = {"strip": "Entropy", "features": "Distance", "scaleup": "SCALE-UP", "masking": "Mask drop", "target_features": "Target distance",
                "reference": "Disbelief x certainty"}


def primary_score(row: Any, name: str) -> float:
    """The score of the histogram's detector for a STRIP row or a scanner row."""
    return float(row.entropy) if isinstance(row, strip.StripRow) else float(row.scores[name])


def flagged_by_others(row: Any, name: str) -> bool:
    return isinstance(row, scanner.ScannerRow) and any(d != name for d in row.flagged_by)


class StripTableModel(QAbstractTableModel):
    """Scanned rows; verdicts follow the current threshold, not the one at scan time."""

    HEADERS = ["Image", "File", "Entropy", "Predicted", "Verdict"]
    THUMB, FILE, ENTROPY, PREDICTED, VERDICT = range(5)

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[Any] = []  # strip.StripRow or scanner.ScannerRow
        self.thumbs: list[np.ndarray] = []
        self.names: list[str] = []
        self.entropy = np.zeros(1024)  # the line's detector's score; doubles when full (cheap appends, vectorised verdicts)
        self.others = np.zeros(1024, bool)  # flagged by another detector (combined mode)
        self.threshold = 0.0
        self.tail = "low"  # low: below the line is flagged (STRIP); high: above (feature space)
        self.detector = "strip"
        self.num_classes = 0

    # -- feeding
    def clear(self) -> None:
        self.beginResetModel()
        self.rows, self.thumbs, self.names = [], [], []
        self.endResetModel()

    def append(self, rows: list[Any], thumbs: list[np.ndarray]) -> None:
        if not rows:
            return
        n = len(self.rows)
        while n + len(rows) > len(self.entropy):
            self.entropy = np.concatenate([self.entropy, np.zeros_like(self.entropy)])
            self.others = np.concatenate([self.others, np.zeros_like(self.others)])
        self.entropy[n : n + len(rows)] = [primary_score(r, self.detector) for r in rows]
        self.others[n : n + len(rows)] = [flagged_by_others(r, self.detector) for r in rows]
        self.beginInsertRows(QModelIndex(), n, n + len(rows) - 1)
        self.rows.extend(rows)
        self.thumbs.extend(thumbs)
        self.names.extend(display_name(r) for r in rows)
        self.endInsertRows()

    def set_threshold(self, threshold: float) -> None:
        self.threshold = float(threshold)
        if self.rows:
            self.dataChanged.emit(self.index(0, self.PREDICTED), self.index(len(self.rows) - 1, self.VERDICT))

    # -- reading
    def entropies(self) -> np.ndarray:
        return self.entropy[: len(self.rows)]

    def flagged_mask(self) -> np.ndarray:
        e = self.entropies()
        beyond = e < self.threshold if self.tail == "low" else e > self.threshold
        return beyond | self.others[: len(self.rows)]

    def is_flagged(self, row: int) -> bool:
        beyond = self.entropy[row] < self.threshold if self.tail == "low" else self.entropy[row] > self.threshold
        return bool(beyond or self.others[row])

    def flagging(self, row: int) -> list[str]:
        """The detectors that flag the row, the shown one at the current (perhaps dragged) threshold."""
        r = self.rows[row]
        beyond = self.entropy[row] < self.threshold if self.tail == "low" else self.entropy[row] > self.threshold
        return ([self.detector] if beyond else []) + [d for d in getattr(r, "flagged_by", ()) if d != self.detector]

    def flagged_by(self, row: int) -> str:
        """Which detectors flag the row at the current threshold, e.g. 'STRIP+feature space'."""
        return "+".join(scanner.LABELS[d] for d in self.flagging(row))

    def guarded_label(self, row: int) -> int:
        return self.num_classes if self.is_flagged(row) else self.rows[row].predicted

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802 (Qt API)
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self.HEADERS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: N802
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.HEADERS[section]
        return None

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        r, c = index.row(), index.column()
        row = self.rows[r]
        if role == Qt.ItemDataRole.DisplayRole:
            if c == self.FILE:
                return self.names[r]
            if c == self.ENTROPY:
                return f"{self.entropy[r]:.4f}"
            if c == self.PREDICTED:
                return f"{row.predicted} ({row.confidence:.0%})"
            if c == self.VERDICT:
                return f"FLAGGED → {self.num_classes}" if self.is_flagged(r) else "accepted"
        elif role == Qt.ItemDataRole.DecorationRole and c == self.THUMB and r < len(self.thumbs) and self.thumbs[r].size:
            return to_pixmap(self.thumbs[r], THUMB_PX)
        elif role == Qt.ItemDataRole.ForegroundRole and c == self.VERDICT:
            return FLAGGED if self.is_flagged(r) else ACCEPTED
        elif role == Qt.ItemDataRole.ToolTipRole:
            scores = ", ".join(f"{scanner.LABELS[k]} {v:.4f}" for k, v in getattr(row, "scores", {"strip": getattr(row, "entropy", 0.0)}).items())
            by = f"; flagged by {self.flagged_by(r)}" if self.is_flagged(r) else ""
            return f"{row.source} (item {row.index}): {scores}{by}"
        elif role == Qt.ItemDataRole.UserRole:  # sort keys
            if c == self.FILE:
                return self.names[r]
            if c == self.ENTROPY:
                return float(self.entropy[r])
            if c == self.PREDICTED:
                return row.predicted
            return float(self.entropy[r]) if c == self.VERDICT else r
        return None


class FlaggedFilter(QSortFilterProxyModel):
    """Sorting by value, and the 'flagged only' filter."""

    def __init__(self) -> None:
        super().__init__()
        self.only_flagged = False
        self.setSortRole(Qt.ItemDataRole.UserRole)

    def set_only_flagged(self, on: bool) -> None:
        self.only_flagged = on
        self.invalidateFilter()

    def filterAcceptsRow(self, row: int, parent: QModelIndex) -> bool:  # noqa: N802
        return not self.only_flagged or self.sourceModel().is_flagged(row)


def display_name(row: Any) -> str:
    """The file name, or file#item for images inside an HDF5/npz file."""
    name = Path(row.source).name
    return name if Path(row.source).suffix.lower() not in (".h5", ".hdf5", ".npz") else f"{name}#{row.index}"


class StripPanel(QWidget):
    TITLE = "STRIP"
    send_to_inspector = Signal(object)  # {source, index, image, predicted, entropy, flagged}: for the Inspector panel

    def __init__(self, window: Any) -> None:
        super().__init__()
        self.window = window
        self.state = window.state
        self.scan_profile: Optional[scanner.ScanProfile] = None  # every detector of the method
        self.profile: Any = None  # its first detector: the histogram and the line (StripProfile or FeatureProfile)
        self.threshold: Optional[float] = None
        self.skipped: list = []
        self.scan_name = ""
        self._profile_entry: Any = None  # the profile as published (its threshold follows the line)
        self._pending: list[tuple[list, list]] = []
        self._streaming = False
        self._after_drain: Optional[Callable[[], None]] = None
        self._hist_dirty = False
        self._build()
        self.flush_timer = QTimer(self)
        self.flush_timer.setInterval(FLUSH_MS)
        self.flush_timer.timeout.connect(self._flush)
        self.threshold_timer = QTimer(self)
        self.threshold_timer.setSingleShot(True)
        self.threshold_timer.setInterval(THRESHOLD_MS)
        self.threshold_timer.timeout.connect(self._apply_threshold)
        self.state.model_changed.connect(self._model_changed)
        self.state.data_changed.connect(lambda _role: self._refresh_buttons())
        self.state.results.changed.connect(self._results_changed)
        self._refresh_buttons()
        self._results_changed("")

    # ------------------------------------------------------------- layout

    def _build(self) -> None:
        layout = QHBoxLayout(self)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        layout.addWidget(splitter)
        splitter.addWidget(self._left())
        splitter.addWidget(self._right())
        splitter.setSizes([560, 700])

    def _left(self) -> QWidget:
        host = QWidget()
        column = QVBoxLayout(host)
        column.setContentsMargins(0, 0, 0, 0)
        box = QGroupBox("Calibration on clean data")
        form = QFormLayout(box)
        self.method_combo = QComboBox()
        for key, label in METHODS:
            self.method_combo.addItem(label, key)
        self.method_combo.setToolTip("STRIP misses large, blended and warped triggers; the feature-space detector catches them "
                                     "and SCALE-UP catches sinusoidal signals (docs/scan.md). Reversed-trigger masking masks the "
                                     "Verdict panel's reversed trigger of each target it names; the clean reference model trains "
                                     "small networks on the clean images alone and flags what the model sends to a target but they do "
                                     "not believe. Combined flags an input when any of its detectors does (masking, feature space "
                                     "on the targets and the clean reference join once the Verdict panel names a target), 1% each.")
        self.overlays_spin = QSpinBox()
        self.overlays_spin.setRange(2, 1000)
        self.overlays_spin.setValue(strip.DEFAULT_OVERLAYS)
        self.overlays_spin.setToolTip("Clean images superimposed on each input (the paper uses 100)")
        self.frr_spin = QDoubleSpinBox()
        self.frr_spin.setRange(0.1, 49.0)
        self.frr_spin.setDecimals(1)
        self.frr_spin.setSuffix(" %")
        self._default_frr = scanner.default_frr(scanner.DEFAULT_METHOD)
        self.frr_spin.setValue(self._default_frr * 100)
        self.frr_spin.setToolTip("False rejection rate allowed on clean inputs calibration never saw (holds with 95% confidence); "
                                 "default 1% per detector, so 3% for Combined")
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setValue(strip.DEFAULT_SEED)
        weights = QHBoxLayout()
        self.input_weight = self._weight_spin(strip.DEFAULT_INPUT_WEIGHT, "Weight of the scanned input in each blend")
        self.overlay_weight = self._weight_spin(strip.DEFAULT_OVERLAY_WEIGHT, "Weight of the clean overlay in each blend")
        weights.addWidget(QLabel("input"))
        weights.addWidget(self.input_weight)
        weights.addWidget(QLabel("overlay"))
        weights.addWidget(self.overlay_weight)
        form.addRow("Method", self.method_combo)
        self.triggers_note = QLabel("")
        self.triggers_note.setWordWrap(True)
        form.addRow("", self.triggers_note)
        form.addRow("STRIP overlays (N)", self.overlays_spin)
        form.addRow("False rejection", self.frr_spin)
        form.addRow("Seed", self.seed_spin)
        form.addRow("STRIP blend weights", weights)
        self.method_combo.currentIndexChanged.connect(self._method_changed)
        buttons = QHBoxLayout()
        self.calibrate_button = QPushButton("Calibrate")
        self.calibrate_button.clicked.connect(lambda: self.calibrate())
        self.load_profile_button = QPushButton("Load profile…")
        self.load_profile_button.clicked.connect(self.choose_profile)
        self.save_profile_button = QPushButton("Save profile…")
        self.save_profile_button.clicked.connect(self.choose_save_profile)
        for b in (self.calibrate_button, self.load_profile_button, self.save_profile_button):
            buttons.addWidget(b)
        form.addRow(buttons)
        column.addWidget(box)

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
        self.line.sigPositionChanged.connect(lambda _line: self.threshold_timer.start())
        self.plot.addItem(self.line)
        column.addWidget(self.plot, 1)

        info_row = QHBoxLayout()
        self.info = QLabel("Calibrate on the clean validation data to set a threshold. Drag the red line to move it.")
        self.info.setWordWrap(True)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.reset_button = QPushButton("Reset")
        self.reset_button.setToolTip("Back to the threshold the calibration chose")
        self.reset_button.clicked.connect(self.reset_threshold)
        info_row.addWidget(self.info, 1)
        info_row.addWidget(self.reset_button, 0, Qt.AlignmentFlag.AlignTop)
        column.addLayout(info_row)
        return host

    def _method_changed(self) -> None:
        """STRIP's own settings only matter when the method runs STRIP."""
        method = self.method_combo.currentData()
        uses_strip = method in ("combined", "strip")
        for w in (self.overlays_spin, self.input_weight, self.overlay_weight):
            w.setEnabled(uses_strip)
        shown_default = round(self._default_frr * 100, self.frr_spin.decimals())  # as the spin box holds it
        if self.frr_spin.value() == shown_default:  # still the default: follow the method's (1% per detector)
            self._default_frr = scanner.default_frr(method, self.session_triggers() is not None)
            self.frr_spin.setValue(self._default_frr * 100)

    def session_triggers(self) -> Optional[Any]:
        """Neural Cleanse's reversed triggers of the current verdict's targets (Verdict panel), or None."""
        from core.detect.input_level.masking import triggers_from

        cleanse, verdict = self.state.results.value(Kind.CLEANSE), self.state.results.value(Kind.VERDICT)
        if self.state.loaded is None or cleanse is None or verdict is None or not verdict.targets:
            return None
        triggers = triggers_from(cleanse, verdict.targets, self.state.loaded.summary.sha256)
        return triggers if triggers.classes else None

    def _results_changed(self, _kind: str) -> None:
        """The Verdict panel's targets decide whether masking can run (and joins Combined)."""
        triggers = self.session_triggers()
        if triggers is None:
            self.triggers_note.setText("Targeted detectors (masking, target features, clean reference): need a target from the "
                                       "Verdict panel's detectors.")
        else:
            which = ", ".join(map(str, triggers.classes))
            self.triggers_note.setText(f"Reversed triggers of class{'es' if len(triggers.classes) > 1 else ''} {which} "
                                       f"(Verdict panel): Combined adds masking, feature space on the target and a clean reference "
                                       f"model, at {scanner.DEFAULT_FRR_PER_DETECTOR:.0%} per detector.")
        self._method_changed()

    def _weight_spin(self, value: float, tip: str) -> QDoubleSpinBox:
        spin = QDoubleSpinBox()
        spin.setRange(0.05, 5.0)
        spin.setSingleStep(0.1)
        spin.setDecimals(2)
        spin.setValue(value)
        spin.setToolTip(tip)
        return spin

    def _right(self) -> QWidget:
        host = QWidget()
        column = QVBoxLayout(host)
        column.setContentsMargins(0, 0, 0, 0)
        box = QGroupBox("Scan")
        row = QVBoxLayout(box)
        buttons = QHBoxLayout()
        self.scan_loaded_button = QPushButton("Scan loaded set")
        self.scan_loaded_button.setToolTip("Scan the 'folder to scan' opened with the model (the demo's PNG folder)")
        self.scan_loaded_button.clicked.connect(lambda: self.scan())
        self.scan_folder_button = QPushButton("Scan folder…")
        self.scan_folder_button.setToolTip("A folder of images, searched recursively")
        self.scan_folder_button.clicked.connect(self.choose_scan_folder)
        self.scan_file_button = QPushButton("Scan HDF5/npz…")
        self.scan_file_button.clicked.connect(self.choose_scan_file)
        for b in (self.scan_loaded_button, self.scan_folder_button, self.scan_file_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        row.addLayout(buttons)
        tools = QHBoxLayout()
        self.only_flagged = QCheckBox("Flagged only")
        self.only_flagged.toggled.connect(self._filter_changed)
        self.export_csv_button = QPushButton("Export CSV…")
        self.export_csv_button.clicked.connect(lambda: self._choose_export("csv"))
        self.export_json_button = QPushButton("Export JSON…")
        self.export_json_button.clicked.connect(lambda: self._choose_export("json"))
        self.counts = QLabel("")
        tools.addWidget(self.only_flagged)
        tools.addWidget(self.counts, 1)
        tools.addWidget(self.export_csv_button)
        tools.addWidget(self.export_json_button)
        row.addLayout(tools)
        column.addWidget(box)

        self.model = StripTableModel()
        self.proxy = FlaggedFilter()
        self.proxy.setSourceModel(self.model)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.horizontalHeader().setSortIndicator(StripTableModel.THUMB, Qt.SortOrder.AscendingOrder)  # scan order
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setDefaultSectionSize(THUMB_PX + 4)
        self.table.verticalHeader().setVisible(False)
        self.table.setIconSize(QSize(THUMB_PX, THUMB_PX))
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(StripTableModel.FILE, QHeaderView.ResizeMode.Stretch)
        for col, width in ((StripTableModel.THUMB, THUMB_PX + 16), (StripTableModel.ENTROPY, 80), (StripTableModel.PREDICTED, 90), (StripTableModel.VERDICT, 110)):
            header.resizeSection(col, width)
        self.table.doubleClicked.connect(self.open_row)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.customContextMenuRequested.connect(self._row_menu)
        column.addWidget(self.table, 1)
        self.skipped_label = QLabel("")
        self.skipped_label.setWordWrap(True)
        column.addWidget(self.skipped_label)
        return host

    def _refresh_buttons(self) -> None:
        loaded = self.state.loaded is not None
        self.calibrate_button.setEnabled(loaded and self.state.clean_for_calibration() is not None)
        have_profile = loaded and self.profile is not None
        self.save_profile_button.setEnabled(self.profile is not None)
        self.load_profile_button.setEnabled(loaded)
        self.scan_loaded_button.setEnabled(have_profile and "scan" in self.state.data)
        self.scan_folder_button.setEnabled(have_profile)
        self.scan_file_button.setEnabled(have_profile)
        has_rows = bool(self.model.rows)
        self.export_csv_button.setEnabled(has_rows)
        self.export_json_button.setEnabled(has_rows)
        self.reset_button.setEnabled(self.profile is not None)

    # ---------------------------------------------------------- calibrate

    def calibrate(self, done: Optional[Callable[[], None]] = None) -> bool:
        """Calibrate the chosen method on the clean validation data (else clean test) with the settings shown."""
        loaded, clean = self.state.loaded, self.state.clean_for_calibration()
        if loaded is None or clean is None:
            self.window.status.setText("Scanning needs a model and clean data: open them in Model & Data")
            return False
        n, frr, seed = self.overlays_spin.value(), self.frr_spin.value() / 100.0, self.seed_spin.value()
        weights = strip.BlendWeights(self.input_weight.value(), self.overlay_weight.value())
        strip_settings = strip.StripSettings(n, frr, seed=seed, weights=weights)
        method = self.method_combo.currentData()
        scale = self.state.scale
        role = self.state.calibration_role()

        def finished(profile: Any) -> None:
            self.set_profile(profile)
            self._publish_profile([role], f"{len(self.profile.scores)} clean images of {clean.path.name}")
            self.window.status.setText(
                f"{scanner.LABELS[self.scan_profile.method]} calibrated on {len(self.profile.scores)} clean images: "
                f"{self.scan_profile.frr_estimate().describe()}"
            )

        triggers = self.session_triggers()
        if method in scanner.WITH_TRIGGERS and triggers is None:
            self.window.show_error(f"The {scanner.LABELS[method]} needs a suspected target: run the detectors in the Verdict "
                                   "panel first (it watches each class the verdict names).")
            return False
        if method == "strip":
            factory = lambda: strip.calibrate(loaded, clean, strip_settings, scale)  # noqa: E731
        else:
            settings = scanner.ScanSettings(method=method, frr=frr, seed=seed, strip=strip_settings, triggers=triggers)
            factory = lambda: scanner.calibrate(loaded, clean, settings, scale)  # noqa: E731
        started = self.window.start_job(
            f"Calibrating {scanner.LABELS[method]}", factory, finished, on_end=lambda _outcome: done() if done else None,
        )
        if not started and done:
            done()
        return started

    def _publish_profile(self, roles: list[str], note: str) -> None:
        """The report reads the STRIP part (with the line's threshold when the line is STRIP's)."""
        sp = self.scan_profile
        if sp is None or "strip" not in sp.detectors:
            self._profile_entry = None
            return
        value = self.profile.with_threshold(self.threshold) if self.profile.method == "strip" and self.threshold is not None else sp.detectors["strip"]
        self._profile_entry = self.state.publish(Kind.STRIP_PROFILE, value, roles, note=note)

    def set_profile(self, profile: Any) -> None:
        """Show a :class:`~core.detect.input_level.strip.StripProfile` or a :class:`~core.detect.input_level.scanner.ScanProfile`."""
        if isinstance(profile, strip.StripProfile):
            profile = scanner.ScanProfile("strip", {"strip": profile}, profile.frr, profile.confidence, list(profile.notes))
        self.scan_profile = profile
        self.profile = profile.first
        self.model.num_classes = profile.num_classes
        self.model.detector, self.model.tail = self.profile.method, self.profile.tail
        self.method_combo.setCurrentIndex(max(0, self.method_combo.findData(profile.method)))
        self.frr_spin.setValue(profile.frr * 100)
        if "strip" in profile.detectors:
            sp = profile.detectors["strip"]
            self.overlays_spin.setValue(sp.n_overlays)
            self.seed_spin.setValue(sp.seed)
            self.input_weight.setValue(sp.weights.input)
            self.overlay_weight.setValue(sp.weights.overlay)
        self.plot.setLabel("bottom", AXIS.get(self.profile.method, "score"))
        self.model.HEADERS = [*StripTableModel.HEADERS[:2], SCORE_HEADER.get(self.profile.method, "Score"), *StripTableModel.HEADERS[3:]]
        self.model.headerDataChanged.emit(Qt.Orientation.Horizontal, 0, len(self.model.HEADERS) - 1)
        header = self.table.horizontalHeader()  # the score's name is the column's widest text ("Disbelief x certainty")
        header.resizeSection(StripTableModel.ENTROPY, max(80, header.sectionSizeHint(StripTableModel.ENTROPY)))
        self.line.setVisible(True)
        self.set_threshold(self.profile.threshold)
        self._draw_histograms()
        self.plot.enableAutoRange()
        self._refresh_buttons()

    def set_threshold(self, threshold: float) -> None:
        """Move the threshold (and the line); verdicts, counts and expected FRR follow."""
        self.line.blockSignals(True)
        self.line.setValue(threshold)
        self.line.blockSignals(False)
        self.threshold = float(threshold)
        self._apply_threshold()

    def reset_threshold(self) -> None:
        if self.profile is not None:
            self.set_threshold(self.profile.threshold)

    def _apply_threshold(self) -> None:
        if self.profile is None:
            return
        self.threshold = float(self.line.value())
        self.model.set_threshold(self.threshold)
        if self._profile_entry is not None and self._profile_entry.value is not None and self.profile.method == "strip":
            self._profile_entry.value = self.profile.with_threshold(self.threshold)  # the report shows the line's threshold
        if self.proxy.only_flagged:
            self.proxy.invalidateFilter()
        self._update_info()

    def current_profile(self) -> Optional[scanner.ScanProfile]:
        """The method's profile with the line's threshold."""
        if self.scan_profile is None or self.threshold is None:
            return self.scan_profile
        return self.scan_profile.with_thresholds({self.profile.method: self.threshold})

    def _update_info(self) -> None:
        p = self.profile
        if p is None:
            return
        current = self.current_profile()
        est = current.frr_estimate()
        moved = "" if abs(self.threshold - p.threshold) < 1e-12 else " (moved)"
        side = "below" if p.tail == "low" else "above"
        lines = [
            f"<b>{scanner.LABELS[current.method].capitalize()}</b>: {SCORE_HEADER.get(p.method, 'score').lower()} {side} "
            f"<b>{self.threshold:.4f}</b>{moved} is flagged as trojaned (label {p.num_classes})"
            + "".join(f"; {scanner.LABELS[k]} {'below' if d.tail == 'low' else 'above'} {d.threshold:.4f}"
                      for k, d in current.detectors.items() if k != p.method) + ".",
            f"<b>Expected false rejection here: {est.expected:.2%}</b> (95% interval {est.low:.2%}–{est.high:.2%}; "
            f"≤ {est.bound:.2%} with {est.confidence:.0%} confidence) on clean inputs calibration never saw: "
            f"{est.flagged_in_calibration} of {est.n} clean calibration images flagged. Target {current.frr:.1%}"
            + (f", split between {len(current.detectors)} detectors" if len(current.detectors) > 1 else "") + f"; scale {current.scale}.",
        ]
        n = len(self.model.rows)
        if n:
            flagged = int(self.model.flagged_mask().sum())
            lines.append(f"<b>Scanned {n}: {flagged} flagged ({flagged / n:.1%})</b>, {n - flagged} accepted.")
            self.counts.setText(f"{n} scanned, {flagged} flagged" + (f", {len(self.skipped)} skipped" if self.skipped else ""))
        self.info.setText("<br>".join(lines))

    # --------------------------------------------------------- histograms

    def _draw_histograms(self) -> None:
        p = self.profile
        if p is None:
            return
        scanned = self.model.entropies()
        top = max(float(np.max(p.scores, initial=0.0)), float(np.max(scanned, initial=0.0)), self.threshold or 0.0)
        if p.method != "strip":  # distances have a long tail (the triggered inputs): keep the clean bulk readable
            top = min(top, 3.0 * max(float(np.max(p.scores, initial=0.0)), self.threshold or 0.0))
        edges = np.linspace(0.0, top * 1.05 + 1e-6, BINS + 1)
        clean_counts, _ = np.histogram(p.scores, edges)
        self.clean_curve.setData(edges, 100.0 * clean_counts / max(len(p.scores), 1))
        if len(scanned):
            counts, _ = np.histogram(np.clip(scanned, edges[0], edges[-1]), edges)
            self.scan_curve.setData(edges, 100.0 * counts / len(scanned))
        else:
            self.scan_curve.setData(EMPTY_X, EMPTY_Y)
        self._hist_dirty = False

    # --------------------------------------------------------------- scan

    def scan(self, path: Optional[str] = None, done: Optional[Callable[[], None]] = None) -> bool:
        """Scan ``path`` (folder, HDF5 or npz), or the loaded 'folder to scan'; rows stream in."""
        loaded, profile = self.state.loaded, self.current_profile()
        if loaded is None or profile is None:
            self.window.status.setText("Calibrate (or load a profile) before scanning")
            return False
        if path is None and "scan" not in self.state.data:
            self.window.status.setText("No folder to scan is open: choose one")
            return False
        preset = self.state.data.get("scan") if path is None else None

        def job():
            from core.intake.data import open_data

            if preset is None:
                yield Progress(None, f"Opening {path}")
            source = preset if preset is not None else open_data(path)
            if profile.method == "strip":
                return (yield from strip.scan(loaded, profile.first, source))
            return (yield from scanner.scan(loaded, profile, source))

        def event(item: Any) -> None:
            if isinstance(item, (strip.ScanRows, scanner.ScannerRows)):
                self._pending.append((list(item.rows), list(item.thumbnails)))
                self.skipped.extend(item.skipped)
            elif isinstance(item, Progress) and item.message.startswith("warning"):
                self.skipped_label.setText(item.message)

        def drained(outcome: str) -> None:
            # Rows already received stay (and are published) when the analyst presses Cancel.
            if outcome == DONE:
                self.window.status.setText(
                    f"{scanner.LABELS[profile.method]} scan of {Path(self.scan_name).name}: {len(self.model.rows)} scanned, "
                    f"{int(self.model.flagged_mask().sum())} flagged, {len(self.skipped)} skipped"
                )
            if self.model.rows:
                self._publish_scan(profile, outcome, ["scan"] if preset is not None else [])
            if done:
                done()

        def ended(outcome: str) -> None:
            self._streaming = False
            self._after_drain = lambda: drained(outcome)
            self._flush()

        self.model.clear()
        self.skipped = []
        self.skipped_label.setText("")
        self._pending.clear()
        self.scan_name = str(path or preset.path)
        started = self.window.start_job(f"{scanner.LABELS[profile.method]} scan of {Path(self.scan_name).name}", job, None, event, on_end=ended)  # counted once drained
        if started:
            self._streaming = True
            self.flush_timer.start()
        elif done:
            done()
        return started

    def _publish_scan(self, profile: scanner.ScanProfile, outcome: str, roles: list[str]) -> None:
        """The report's STRIP section: STRIP rows with the method's verdicts (none without STRIP)."""
        if "strip" not in profile.detectors:
            return
        rows = [strip.StripRow(r.source, r.index, primary_score(r, "strip"), self.model.is_flagged(i), self.model.guarded_label(i),
                               r.predicted, r.confidence) for i, r in enumerate(self.model.rows)]
        part = {DONE: "", CANCELLED: " (cancelled part-way)"}.get(outcome, " (stopped by an error part-way)")
        warnings = [] if outcome == DONE else [f"scan incomplete{part}: {len(rows)} rows"]
        if profile.method != "strip":
            warnings.append(f"verdicts from the {scanner.LABELS[profile.method]} method, not STRIP alone")
        published = profile.detectors["strip"]  # with the line the verdicts above were read at
        if self.model.detector == "strip":
            published = published.with_threshold(self.model.threshold)
        detectors = self._detectors_line() if profile.method != "strip" else ""
        self.state.publish(Kind.SCAN, strip.ScanResult(published, rows, list(self.skipped), warnings, self.scan_name, detectors), roles,
                           note=f"{len(rows)} images of {Path(self.scan_name).name}{part}")

    def _detectors_line(self) -> str:
        """Every detector of the method with its threshold and how many rows it flagged: the report's STRIP section
        would otherwise describe only STRIP's threshold beside a combined scan's verdicts."""
        current = self.current_profile()  # the shown detector at the line the verdicts were read at
        counts = Counter(name for i in range(len(self.model.rows)) for name in self.model.flagging(i))
        parts = [f"{scanner.LABELS[name]} {'below' if det.tail == 'low' else 'above'} {det.threshold:.4g}: {counts[name]} flagged"
                 for name, det in current.detectors.items()]
        return (f"an image is flagged when any of {len(parts)} detectors flags it ({'; '.join(parts)}); "
                f"false rejection of the calibrated method on unseen clean inputs: {current.frr_estimate().describe()}")

    def _flush(self) -> None:
        """Move up to FLUSH_ROWS pending rows into the table in one insert; redraw once.

        After the scan ended, the timer runs on until nothing is pending, then stops.
        """
        if self._pending:
            rows, thumbs = [], []
            while self._pending and len(rows) < FLUSH_ROWS:
                r, t = self._pending.pop(0)
                rows.extend(r)
                thumbs.extend(t)
            self.model.append(rows, thumbs)
            self._hist_dirty = True
        if self._hist_dirty:
            self._draw_histograms()
            self._update_info()
            self._refresh_buttons()
        if self.skipped:
            first = self.skipped[0]
            self.skipped_label.setText(
                f"{len(self.skipped)} file(s) skipped, e.g. {Path(first.source).name}: {first.reason}"
            )
            self.skipped_label.setToolTip("\n".join(f"{s.source}: {s.reason}" for s in self.skipped[:50]))
        if not self._streaming and not self._pending:
            self.flush_timer.stop()
            after, self._after_drain = self._after_drain, None
            if after is not None:
                after()
        elif not self.flush_timer.isActive():
            self.flush_timer.start()

    def _filter_changed(self, on: bool) -> None:
        self.proxy.set_only_flagged(on)

    # -------------------------------------------------------------- files

    def choose_scan_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a folder of images to scan (searched recursively)", self.window._last_dir())
        if folder:
            self.scan(folder)

    def choose_scan_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose an HDF5 or npz file to scan", self.window._last_dir(), DATA_FILTER)
        if path:
            self.scan(path)

    def choose_profile(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a scan profile (STRIP or combined)", self.window._last_dir(), PROFILE_FILTER)
        if path:
            self.load_profile(path)

    def load_profile(self, path: str, then: Optional[Callable[[], None]] = None) -> bool:
        """Read a profile on the worker thread (a large overlay set is not read on the GUI thread)."""
        loaded = self.state.loaded

        def job():
            yield Progress(None, f"Reading {Path(path).name}")
            profile = scanner.load_profile(path)
            return profile, (scanner.check_profile(loaded, profile) if loaded is not None else [])

        def finished(value: Any) -> None:
            profile, warnings = value
            self.set_profile(profile)
            self._publish_profile([], f"profile loaded from {path}")
            self.window.status.setText(warnings[0] if warnings else f"{scanner.LABELS[profile.method]} profile loaded from {path}")

        return self.window.start_job(f"Loading {Path(path).name}", job, finished, on_end=lambda _o: then() if then else None)

    def choose_save_profile(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save the scan profile", self.window._last_dir() + "/scan_profile.npz", PROFILE_FILTER)
        if path:
            self.save_profile(path)

    def save_profile(self, path: str, then: Optional[Callable[[Path], None]] = None) -> bool:
        """Save with the threshold shown (a dragged line is what the analyst chose), on the worker thread."""
        profile = self.current_profile()

        def job():
            yield Progress(None, f"Saving {Path(path).name}")
            if profile.method == "strip":
                return strip.save_profile(profile.first, path)
            return scanner.save_profile(profile, path)

        def finished(saved: Path) -> None:
            self.window.status.setText(f"{scanner.LABELS[profile.method]} profile saved to {saved}")
            if then:
                then(saved)

        return self.window.start_job(f"Saving the {scanner.LABELS[profile.method]} profile", job, finished)

    def _choose_export(self, kind: str) -> None:
        path, _ = QFileDialog.getSaveFileName(self, f"Export the scan as {kind.upper()}", self.window._last_dir() + f"/strip_scan.{kind}", f"{kind.upper()} (*.{kind})")
        if path:
            self.export(path, kind)

    def export(self, path: str, kind: str) -> Path:
        """Every scanned row with its verdict at the current threshold, written atomically."""
        rows = self.result_rows()
        if kind == "json":
            p = self.current_profile()
            est = p.frr_estimate()
            text = json.dumps({
                "method": p.method, "threshold": self.threshold, "thresholds": p.thresholds(), "frr": est.bound,
                "frr_estimate": est.as_dict(), "num_classes": p.num_classes, "scanned": len(rows), "flagged": sum(r["flagged"] for r in rows),
                "results": rows, "skipped": [s.as_dict() for s in self.skipped], "source": self.scan_name,
            }, indent=1, allow_nan=False)
        else:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=["source", "index", "entropy", "scores", "flagged", "flagged_by", "label", "predicted", "confidence"],
                                    extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
            text = buffer.getvalue()
        saved = write_text_atomic(path, text)
        self.window.status.setText(f"Exported {len(rows)} rows to {saved}")
        return saved

    def result_rows(self) -> list[dict[str, Any]]:
        out = []
        for i, row in enumerate(self.model.rows):
            d = row.as_dict()
            d["flagged"] = self.model.is_flagged(i)
            d["flagged_by"] = self.model.flagged_by(i)
            d["label"] = self.model.guarded_label(i)
            out.append(d)
        return out

    # ----------------------------------------------------------- big view

    def open_row(self, proxy_index: QModelIndex) -> None:
        """Double-click: a flagged row goes to the Inspector (tab switches, inspection starts); others show large."""
        r = self.proxy.mapToSource(proxy_index).row()
        if self.model.is_flagged(r):
            self.send_row(r)
        else:
            self.show_row(r)

    def _row_menu(self, pos: Any) -> None:
        index = self.table.indexAt(pos)
        if not index.isValid():
            return
        r = self.proxy.mapToSource(index).row()
        menu = QMenu(self)
        menu.addAction("Send to Inspector", lambda: self.send_row(r))
        menu.addAction("Show image…", lambda: self.show_row(r))
        self.row_menu = menu
        menu.popup(self.table.viewport().mapToGlobal(pos))

    def send_row(self, r: int) -> None:
        """Hand row ``r`` to the Inspector (connected by the main window to ``InspectorPanel.inspect_image``)."""
        row = self.model.rows[r]
        self.send_to_inspector.emit({
            "source": row.source, "index": row.index, "image": self._full_image(r), "predicted": row.predicted,
            "entropy": row.entropy if isinstance(row, strip.StripRow) else row.scores.get("strip"),
            "flagged": self.model.is_flagged(r), "name": display_name(row),
        })

    def show_row(self, r: int) -> None:
        """The image large, with its entropy and verdict."""
        row = self.model.rows[r]
        image = self._full_image(r)
        flagged = self.model.is_flagged(r)
        dialog = QDialog(self)
        dialog.setWindowTitle(display_name(row))
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        v = QVBoxLayout(dialog)
        picture = QLabel()
        picture.setPixmap(to_pixmap(image, 336))
        picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
        caption = QLabel(
            f"{row.source} (item {row.index})<br>{SCORE_HEADER.get(self.model.detector, 'score').lower()} {self.model.entropy[r]:.4f}"
            f"{' (flagged by ' + self.model.flagged_by(r) + ')' if flagged else ''}, model class {row.predicted} ({row.confidence:.0%}) → "
            f"<b style='color:{(FLAGGED if flagged else ACCEPTED).name()}'>{'FLAGGED, label ' + str(self.model.num_classes) if flagged else 'accepted'}</b>"
        )
        caption.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        send = QPushButton("Send to Inspector")
        send.clicked.connect(lambda: (dialog.close(), self.send_row(r)))
        v.addWidget(picture)
        v.addWidget(caption)
        v.addWidget(send)
        self.image_dialog = dialog
        dialog.open()

    def _full_image(self, r: int) -> np.ndarray:
        """The model's view of the input: re-read image files; arrays keep their stored copy."""
        row = self.model.rows[r]
        path = Path(row.source)
        if self.state.loaded is not None and path.is_file() and path.suffix.lower() not in (".h5", ".hdf5", ".npz"):
            from core.intake.data import ImageUnreadable, conform, read_image

            try:
                return conform(read_image(path)[None].astype(np.float32), self.state.loaded.input_shape)[0]
            except ImageUnreadable:
                pass
        return self.model.thumbs[r].astype(np.float32)

    # --------------------------------------------------------------- misc

    def _model_changed(self) -> None:
        """A profile belongs to one model: drop it (and the rows) when another is loaded."""
        loaded = self.state.loaded
        if self.profile is not None and loaded is not None and self.profile.model_sha256 != loaded.summary.sha256:
            self.profile = None
            self.scan_profile = None
            self._profile_entry = None
            self.threshold = None
            self.line.setVisible(False)
            self.model.clear()
            self.clean_curve.setData(EMPTY_X, EMPTY_Y)
            self.scan_curve.setData(EMPTY_X, EMPTY_Y)
            self.info.setText("Model changed: calibrate again.")
        elif self.profile is not None and loaded is not None:  # the same network reopened: its profile still holds
            self._publish_profile([], "profile kept: the same model was reopened")
        self._refresh_buttons()

    def run_default(self, done: Callable[[], None]) -> None:
        """Screenshots: calibrate on clean validation data, then scan the loaded folder."""
        if self.state.loaded is None or self.state.clean_for_calibration() is None:
            done()
            return

        def then_scan() -> None:
            if self.profile is None or "scan" not in self.state.data:
                done()
                return
            self.window.after_idle(lambda: self.scan(done=done))

        self.calibrate(done=then_scan)
