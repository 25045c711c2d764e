"""STRIP and other input scanners: calibrate, drag the threshold, scan folders into a live table.

The engines are :mod:`core.detect.input_level.strip` (STRIP alone) and :mod:`core.detect.input_level.scanner`
(the feature-space detector, or combined: flagged if either flags); this
panel only drives their jobs and shows what they yield. The histogram and the
draggable line belong to the method's first detector (STRIP's entropy, or the
feature-space distance); in combined mode the other detector keeps its
calibrated threshold. Scan rows arrive in chunks on the worker thread's events,
wait in a pending list, and a 100 ms timer moves them into the table model
and redraws the histograms, so 5,000 rows never mean 5,000 repaints.

With *Purify flagged* on (the default), the scan job is core.repair.purify.scan_and_purify: the rows
stream in as before, then each flagged row's purified class fills the table's Purified column and the
result is published for the report (Kind.PURIFICATION).

The panel drives the jobs and owns the profile, the threshold and the stream;
its parts: gui/strip_settings.py (the method and its settings),
gui/strip_calibration.py (histograms, line, figures), gui/strip_scan_view.py
(buttons, table, image dialog), gui/strip_table.py (the rows: model, exports).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from PySide6.QtCore import QModelIndex, Qt, QTimer, Signal
from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QSplitter, QVBoxLayout, QWidget

from core.detect.input_level import scanner
from core.detect.input_level import strip
from core.intake.atomic import write_text_atomic
from core.jobs import Progress
from gui.jobs import CANCELLED, DONE
from gui.state import Kind
from gui.strip_calibration import CalibrationView
from gui.strip_scan_view import ScanView
from gui.strip_settings import MethodSettings
from gui.strip_table import display_name, export_text, full_image, result_rows, scan_result
from gui.strip_table import FlaggedFilter, StripTableModel, flagged_by_others, primary_score  # noqa: F401 (re-exported: their home was here)

FLUSH_MS = 100
FLUSH_ROWS = 500  # rows moved into the table per tick: each tick stays short however fast rows arrive
THRESHOLD_MS = 50
DATA_FILTER = "Data (*.h5 *.hdf5 *.npz);;All files (*)"
PROFILE_FILTER = "Scan profiles (*.npz);;All files (*)"


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
        self._pending_purified: list[tuple[tuple, tuple]] = []  # (row positions, purifications), applied once their rows are in
        self.purify_result: Any = None  # core.repair.purify.PurifyResult of the last scan with purification
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
        self.state.results.changed.connect(self._settings.results_changed)
        self._refresh_buttons()
        self._settings.results_changed("")

    # ------------------------------------------------------------- layout

    def _build(self) -> None:
        """Left: the method's settings over the calibration view; right: the scan view. The panel keeps their widgets' names."""
        self._settings = MethodSettings(self.state)
        self._calibration = CalibrationView()
        self._scan_view = ScanView()
        left = QWidget()
        column = QVBoxLayout(left)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self._settings)
        column.addWidget(self._calibration, 1)
        layout = QHBoxLayout(self)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        layout.addWidget(splitter)
        splitter.addWidget(left)
        splitter.addWidget(self._scan_view)
        splitter.setSizes([560, 700])

        s, c, v = self._settings, self._calibration, self._scan_view
        self.method_combo, self.triggers_note, self.overlays_spin, self.frr_spin, self.seed_spin = (
            s.method_combo, s.triggers_note, s.overlays_spin, s.frr_spin, s.seed_spin)
        self.input_weight, self.overlay_weight = s.input_weight, s.overlay_weight
        self.calibrate_button, self.load_profile_button, self.save_profile_button = s.calibrate_button, s.load_profile_button, s.save_profile_button
        self.plot, self.clean_curve, self.scan_curve, self.line, self.info, self.reset_button = (
            c.plot, c.clean_curve, c.scan_curve, c.line, c.info, c.reset_button)
        self.scan_loaded_button, self.scan_folder_button, self.scan_file_button = v.scan_loaded_button, v.scan_folder_button, v.scan_file_button
        self.only_flagged, self.counts, self.export_csv_button, self.export_json_button = v.only_flagged, v.counts, v.export_csv_button, v.export_json_button
        self.purify_check = v.purify_check
        self.model, self.proxy, self.table, self.skipped_label = v.model, v.proxy, v.table, v.skipped_label

        self.calibrate_button.clicked.connect(lambda: self.calibrate())
        self.load_profile_button.clicked.connect(self.choose_profile)
        self.save_profile_button.clicked.connect(self.choose_save_profile)
        self.line.sigPositionChanged.connect(lambda _line: self.threshold_timer.start())
        self.reset_button.clicked.connect(self.reset_threshold)
        self.scan_loaded_button.clicked.connect(lambda: self.scan())
        self.scan_folder_button.clicked.connect(self.choose_scan_folder)
        self.scan_file_button.clicked.connect(self.choose_scan_file)
        self.export_csv_button.clicked.connect(lambda: self._choose_export("csv"))
        self.export_json_button.clicked.connect(lambda: self._choose_export("json"))
        v.send_requested.connect(self.send_row)
        v.show_requested.connect(self.show_row)

    def session_triggers(self) -> Optional[Any]:
        """Neural Cleanse's reversed triggers of the current verdict's targets (Verdict panel), or None."""
        return self._settings.session_triggers()

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
        strip_settings = self._settings.strip_settings()
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
            settings = scanner.ScanSettings(method=method, frr=strip_settings.frr, seed=strip_settings.seed, strip=strip_settings, triggers=triggers)
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
        self._settings.show_profile(profile)
        self._scan_view.set_score_header(self.profile.method)
        self._calibration.show_detector(self.profile.method)
        self.set_threshold(self.profile.threshold)
        self._draw_histograms()
        self.plot.enableAutoRange()
        self._refresh_buttons()

    def set_threshold(self, threshold: float) -> None:
        """Move the threshold (and the line); verdicts, counts and expected FRR follow."""
        self._calibration.place_line(threshold)
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
        if self.profile is None:
            return
        n = len(self.model.rows)
        flagged = int(self.model.flagged_mask().sum()) if n else 0
        if n:
            purified = sum(1 for r, p in self.model.purified.items() if p.purified_label is not None and self.model.is_flagged(r))
            self.counts.setText(f"{n} scanned, {flagged} flagged" + (f", {purified} purified" if self.model.purified else "")
                                + (f", {len(self.skipped)} skipped" if self.skipped else ""))
        self._calibration.show_figures(self.profile, self.current_profile(), self.threshold, n, flagged)

    def _draw_histograms(self) -> None:
        if self.profile is None:
            return
        self._calibration.draw(self.profile, self.model.entropies(), self.threshold)
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
        purifying = self.purify_check.isChecked()
        triggers = self.session_triggers() if purifying and "masking" not in profile.detectors else None

        def job():
            from core.intake.data import open_data

            if preset is None:
                yield Progress(None, f"Opening {path}")
            source = preset if preset is not None else open_data(path)
            if purifying:
                from core.inspect.trigger import box_finder
                from core.repair import purify

                evidence = purify.evidence_from(loaded, profile, triggers, locate=box_finder(loaded, profile.scale))
                return (yield from purify.scan_and_purify(loaded, profile, source, evidence))
            if profile.method == "strip":
                return (yield from strip.scan(loaded, profile.first, source))
            return (yield from scanner.scan(loaded, profile, source))

        def event(item: Any) -> None:
            from core.repair.purify import PurifiedChunk

            if isinstance(item, (strip.ScanRows, scanner.ScannerRows)):
                self._pending.append((list(item.rows), list(item.thumbnails)))
                self.skipped.extend(item.skipped)
            elif isinstance(item, PurifiedChunk):
                self._pending_purified.append((item.positions, item.purified))
            elif isinstance(item, Progress) and item.message.startswith("warning"):
                self.skipped_label.setText(item.message)

        def finished(result: Any) -> None:
            self.purify_result = result if purifying else None

        def drained(outcome: str) -> None:
            # Rows already received stay (and are published) when the analyst presses Cancel.
            if outcome == DONE:
                self.window.status.setText(
                    f"{scan_title(profile.method, self.scan_name)}: {len(self.model.rows)} scanned, "
                    f"{int(self.model.flagged_mask().sum())} flagged, {len(self.skipped)} skipped"
                )
            if self.model.rows:
                self._publish_scan(profile, outcome, ["scan"] if preset is not None else [])
            if self.purify_result is not None and outcome == DONE:
                result = self.purify_result
                flagged = sum(p.flagged for p in result.purified)
                self.state.publish(Kind.PURIFICATION, result, ["scan"] if preset is not None else [],
                                   note=f"{flagged} flagged of {len(result.purified)} images of {Path(self.scan_name).name}")
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
        self._pending_purified.clear()
        self.purify_result = None
        self.scan_name = str(path or preset.path)
        what = scan_title(profile.method, self.scan_name) + (" and purification" if purifying else "")
        started = self.window.start_job(what, job, finished, event, on_end=ended)  # counted once drained
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
        part = {DONE: "", CANCELLED: " (cancelled part-way)"}.get(outcome, " (stopped by an error part-way)")
        result = scan_result(profile, self.current_profile(), self.model, part, self.skipped, self.scan_name)
        self.state.publish(Kind.SCAN, result, roles, note=f"{len(result.rows)} images of {Path(self.scan_name).name}{part}")

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
        if self._pending_purified and not self._pending:
            while self._pending_purified:
                positions, purified = self._pending_purified.pop(0)
                self.model.set_purified(positions, purified)
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
        if not self._streaming and not self._pending and not self._pending_purified:
            self.flush_timer.stop()
            after, self._after_drain = self._after_drain, None
            if after is not None:
                after()
        elif not self.flush_timer.isActive():
            self.flush_timer.start()

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
        saved = write_text_atomic(path, export_text(kind, rows, self.current_profile(), self.threshold, self.skipped, self.scan_name))
        self.window.status.setText(f"Exported {len(rows)} rows to {saved}")
        return saved

    def result_rows(self) -> list[dict[str, Any]]:
        return result_rows(self.model)

    # ----------------------------------------------------------- big view

    def open_row(self, proxy_index: QModelIndex) -> None:
        """Double-click: a flagged row goes to the Inspector (tab switches, inspection starts); others show large."""
        self._scan_view.open_row(proxy_index)

    def send_row(self, r: int) -> None:
        """Hand row ``r`` to the Inspector (connected by the main window to ``InspectorPanel.inspect_image``)."""
        row = self.model.rows[r]
        self.send_to_inspector.emit({
            "source": row.source, "index": row.index, "image": full_image(self.model, r, self.state.loaded), "predicted": row.predicted,
            "entropy": row.entropy if isinstance(row, strip.StripRow) else row.scores.get("strip"),
            "flagged": self.model.is_flagged(r), "name": display_name(row), "purified": self.model.purification(r),
        })

    def show_row(self, r: int) -> None:
        """The image large, with its entropy and verdict."""
        self.image_dialog = self._scan_view.show_image(r, full_image(self.model, r, self.state.loaded))

    # --------------------------------------------------------------- misc

    def _model_changed(self) -> None:
        """A profile belongs to one model: drop it (and the rows) when another is loaded."""
        loaded = self.state.loaded
        if self.profile is not None and loaded is not None and self.profile.model_sha256 != loaded.summary.sha256:
            self.profile = None
            self.scan_profile = None
            self.purify_result = None
            self._profile_entry = None
            self.threshold = None
            self.model.clear()
            self._calibration.clear("Model changed: calibrate again.")
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


def scan_title(method: str, path: str) -> str:
    """'Combined scan of the folder scan/' or 'STRIP scan of poisoned_test.h5': what ran, on what."""
    label = scanner.LABELS.get(method, method)
    target = Path(path)
    named = f"the folder {target.name}/" if target.is_dir() else target.name
    return f"{label[:1].upper()}{label[1:]} scan of {named}"
