"""Triage: rank a folder of models by suspicion, then open the one to look at.

Analysts receive models in batches (issue 11), sometimes hundreds (issue 24). This panel is the GUI twin
of ``python main.py triage --models DIR --clean D``: it runs the same job,
:func:`core.detect.model_level.triage.triage` (core.detect.model_level.judge's checks on every model file,
one combined verdict each), through the window's job controller, so the status bar shows progress and
Cancel stops it. The session's clean data (validation, else test) is the clean data of every model.

Every finished model goes into the same results store as the command's (one per models folder in the
user data folder, core.detect.model_level.triage_store), so nothing finished is lost to a Cancel, a
crash or a restart: choosing a folder shows what earlier runs (here or on the command line, with the
same settings) finished, and *Run triage* judges only the rest (*Judge every model again* ignores them).
*Worker processes* above 0 runs the models on a local Dask cluster of that many processes.

Rows appear as each model is judged, then the table is ranked as the CLI ranks it ("backdoored", then
"suspicious", then "no evidence found", each by score). Files that could not be judged safely -- not a
model, truncated, hostile -- and models whose work failed are listed below with the reason, never
silently dropped. Double-clicking a row (or "Open in the session") opens that model through the
window's own ``open_model``, the path File > Open model takes, so every other panel gets it.
*Export table…* writes the ranked table as CSV, JSON or the report's triage section (HTML).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from gui.jobs import CANCELLED, DONE

COLUMNS = ["#", "Model file", "Verdict", "Score", "Suspected targets", "Seconds"]
# The combined verdict's words and colours, as on the Verdict panel: never a green "clean".
LEVEL_WORDS = {"backdoored": "Backdoored", "suspicious": "Suspicious", "no evidence": "No evidence found"}
LEVEL_COLOURS = {"backdoored": "#b3261e", "suspicious": "#b26a00", "no evidence": "#5f6368"}
FILE_ROLE = Qt.ItemDataRole.UserRole
EXPORT_FILTERS = "CSV table (*.csv);;JSON (*.json);;HTML report (*.html)"
REDRAW_MS = 100  # rows arriving in a burst (a store's earlier results) are drawn once


class TriagePanel(QWidget):
    TITLE = "Triage"

    def __init__(self, window: Any) -> None:
        super().__init__()
        self.window = window
        self.state = window.state
        self.result: Any = None  # core.detect.model_level.triage.TriageResult: the last table (a run's, or read from the store)
        self.live_rows: list[Any] = []  # core.detect.model_level.triage.TriageRow, as judged (before the final ranking)
        self.folder: Optional[Path] = None
        self.progress_line = ""
        self._redraw = QTimer(self)
        self._redraw.setSingleShot(True)
        self._redraw.setInterval(REDRAW_MS)
        self._redraw.timeout.connect(lambda: self._show(self.live_rows, ranked=False))

        outer = QHBoxLayout(self)
        outer.addWidget(self._controls(), 0)
        right = QVBoxLayout()
        self.headline = QLabel("Choose a folder of models; the session's clean data serves every model.")
        self.headline.setWordWrap(True)
        self.headline.setStyleSheet("font-size: 14px; font-weight: bold; padding: 4px")
        right.addWidget(self.headline)
        self.table = self._table()
        right.addWidget(self.table, 3)
        self.skipped_label = QLabel("Skipped files")
        self.skipped_label.setStyleSheet("font-weight: bold")
        right.addWidget(self.skipped_label)
        self.skipped_list = QListWidget()
        self.skipped_list.setWordWrap(True)
        self.skipped_list.setStyleSheet("font-size: 11px")
        right.addWidget(self.skipped_list, 1)
        outer.addLayout(right, 1)

        self.state.data_changed.connect(lambda _role: self._refresh())
        last = str(window.settings.value("triage/folder", "") or "")
        if last and Path(last).is_dir():  # the folder of the last run: Show stored results gives its progress after a restart
            self.folder_edit.setText(last)
        self._refresh()

    # --------------------------------------------------------------- layout

    def _controls(self) -> QWidget:
        from core.detect.model_level.cleanse import CleanseSettings
        from core.detect.model_level.mmbd import MMBDSettings

        box = QWidget()
        box.setMaximumWidth(330)
        column = QVBoxLayout(box)
        column.setContentsMargins(0, 0, 0, 0)
        group = QGroupBox("Models to triage")
        form = QFormLayout(group)
        self.folder_edit = QLineEdit()
        self.folder_edit.setPlaceholderText("a folder of .keras / .h5 files")
        self.folder_edit.textChanged.connect(lambda _t: self._refresh())
        form.addRow("Folder", self.folder_edit)
        choose = QPushButton("Choose folder…")
        choose.clicked.connect(self._choose_folder)
        form.addRow(choose)
        self.clean_label = QLabel("")
        self.clean_label.setWordWrap(True)
        form.addRow("Clean data", self.clean_label)
        self.use_cleanse = QCheckBox("Neural Cleanse and a clean twin")
        self.use_cleanse.setChecked(True)
        self.use_mmbd = QCheckBox("MM-BD, warp too (large, warping triggers)")
        self.use_mmbd.setToolTip("MM-BD finds large triggers, warp inversion gentle warps (WaNet), as on the Verdict panel")
        self.use_mmbd.setChecked(True)
        for check in (self.use_cleanse, self.use_mmbd):
            check.toggled.connect(lambda _on: self._refresh())
            form.addRow(check)
        defaults = CleanseSettings()
        self.rounds = QSpinBox()
        self.rounds.setRange(1, 10000)
        self.rounds.setValue(defaults.max_rounds)
        self.rounds.setToolTip(f"Neural Cleanse: at most this many rounds of {defaults.steps_per_round} steps per class")
        form.addRow("NC rounds per class", self.rounds)
        self.mmbd_steps = QSpinBox()
        self.mmbd_steps.setRange(1, 100000)
        self.mmbd_steps.setValue(MMBDSettings().steps)
        form.addRow("MM-BD steps", self.mmbd_steps)
        self.workers = QSpinBox()
        self.workers.setRange(0, max(1, os.cpu_count() or 1))
        self.workers.setSpecialValueText("0 (this process)")
        self.workers.setToolTip("Judge the models on a local Dask cluster of this many worker processes, "
                                "each with its share of the CPU (0: one after another, here)")
        form.addRow("Worker processes", self.workers)
        self.fresh = QCheckBox("Judge every model again")
        self.fresh.setToolTip("Ignore the results earlier runs kept for these files and settings")
        form.addRow(self.fresh)
        self.run_button = QPushButton("Run triage")
        self.run_button.clicked.connect(lambda: self.run_triage())
        form.addRow(self.run_button)
        self.stored_button = QPushButton("Show stored results")
        self.stored_button.setToolTip("The ranked table of what earlier runs finished for this folder and these settings, judging nothing")
        self.stored_button.clicked.connect(lambda: self.show_stored())
        form.addRow(self.stored_button)
        self.store_label = QLabel("")
        self.store_label.setWordWrap(True)
        self.store_label.setStyleSheet("font-size: 11px; color: #555")
        self.store_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        form.addRow(self.store_label)
        column.addWidget(group)
        self.open_button = QPushButton("Open in the session")
        self.open_button.setToolTip("Open the selected model as if by File > Open model: every panel gets it")
        self.open_button.clicked.connect(self.open_selected)
        column.addWidget(self.open_button)
        self.export_button = QPushButton("Export table…")
        self.export_button.setToolTip("The ranked table as CSV, JSON, or the report's triage section (HTML)")
        self.export_button.clicked.connect(self._choose_export)
        column.addWidget(self.export_button)
        self.note = QLabel("Double-click a row to open that model in the other panels. Every finished model is kept: "
                           "a cancelled or interrupted run continues where it stopped.")
        self.note.setWordWrap(True)
        self.note.setStyleSheet("font-size: 11px")
        column.addWidget(self.note)
        column.addStretch(1)
        return box

    def _table(self) -> QTableWidget:
        table = QTableWidget(0, len(COLUMNS))
        table.setHorizontalHeaderLabels(COLUMNS)
        table.verticalHeader().setVisible(False)
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        header = table.horizontalHeader()
        for col in range(len(COLUMNS)):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        table.cellDoubleClicked.connect(lambda row, _col: self.open_row(row))
        table.itemSelectionChanged.connect(self._refresh)
        return table

    # ---------------------------------------------------------------- state

    def methods(self) -> tuple[str, ...]:
        return (("cleanse", "twin") if self.use_cleanse.isChecked() else ()) + (("mmbd", "warp") if self.use_mmbd.isChecked() else ())

    def store_path(self, folder: Path) -> Path:
        """The results store the command line uses for this folder too (core.detect.model_level.triage_store.default_store)."""
        from core.demo import user_data_dir
        from core.detect.model_level.triage_store import default_store

        return default_store(folder, user_data_dir())

    def _ready(self) -> bool:
        folder = self.folder_edit.text().strip()
        return bool(folder) and Path(folder).is_dir() and self.state.clean_for_calibration() is not None and bool(self.methods())

    def _refresh(self) -> None:
        clean = self.state.clean_for_calibration()
        self.clean_label.setText(clean.describe() if clean is not None else "none: open clean validation data (File menu)")
        folder = self.folder_edit.text().strip()
        self.run_button.setEnabled(self._ready())
        self.stored_button.setEnabled(self._ready())
        self.store_label.setText(f"Results kept in {self.store_path(Path(folder))}" if folder and Path(folder).is_dir() else "")
        self.open_button.setEnabled(self.selected_file() is not None)
        self.export_button.setEnabled(self.result is not None)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a folder of models to triage", self.window._last_dir())
        if folder:
            self.folder_edit.setText(folder)
            if self._ready():
                self.show_stored()  # what earlier runs finished, at once

    def selected_file(self) -> Optional[str]:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        if not rows:
            return None
        item = self.table.item(rows[0].row(), 1)
        return None if item is None else item.data(FILE_ROLE)

    def _settings(self) -> dict[str, Any]:
        """The job's settings from the controls; the same for a run and for reading the store (one settings id)."""
        from dataclasses import replace

        from core.detect.model_level.cleanse import CleanseSettings
        from core.detect.model_level.mmbd import MMBDSettings

        return dict(scale=self.state.scale, methods=self.methods(), cleanse_settings=replace(CleanseSettings(), max_rounds=self.rounds.value()),
                    mmbd_settings=replace(MMBDSettings(), steps=self.mmbd_steps.value()))

    # ------------------------------------------------------------------ run

    def run_triage(self, files: Optional[Sequence[Path]] = None, then: Optional[Callable[[bool], None]] = None) -> bool:
        """Judge every model file of the folder (or ``files``) on the session's clean data, ranked; earlier runs' results are kept."""
        from core.detect.model_level.triage import triage

        clean = self.state.clean_for_calibration()
        folder = Path(self.folder_edit.text().strip())
        if clean is None or not self.methods() or (files is None and not folder.is_dir()):
            return False
        settings = self._settings()
        store = self.store_path(folder)
        fresh, workers = self.fresh.isChecked(), self.workers.value()
        models: Any = list(files) if files is not None else folder

        def finished(result: Any) -> None:
            self._show_result(result)
            self.window.status.setText(f"Triage finished: {self.headline.text()}")

        def ended(outcome: str) -> None:
            if outcome != DONE:
                kept = "every finished model is kept in the store: Run triage continues from there"
                self.headline.setText(f"Triage {'cancelled' if outcome == CANCELLED else 'stopped by an error'} after "
                                      f"{len(self.live_rows)} model(s) were judged; {kept}.")
            self._refresh()
            if then is not None:
                then(outcome == DONE)

        self._start(folder)
        self.headline.setText(f"Triage of {folder}: judging each model with {', '.join(settings['methods'])}"
                              + (f" on {workers} worker processes…" if workers else "…"))
        self.window.settings.setValue("triage/folder", str(folder))
        return self.window.start_job(
            f"Triage of {folder.name}",
            lambda: triage(models, clean, store=store, fresh=fresh, workers=workers, **settings),
            finished, self._on_event, on_end=ended,
        )

    def show_stored(self) -> bool:
        """The ranked table of what the store holds for this folder and these settings (partial runs included); judges nothing."""
        from core.detect.model_level.triage import stored_table

        clean = self.state.clean_for_calibration()
        folder = Path(self.folder_edit.text().strip())
        if clean is None or not folder.is_dir() or not self.methods():
            return False
        settings = self._settings()
        store = self.store_path(folder)
        self._start(folder)
        self.headline.setText(f"Reading the results earlier runs kept for {folder}…")
        return self.window.start_job(f"Stored triage of {folder.name}", lambda: stored_table(folder, clean, store=store, **settings),
                                     self._show_result, self._on_event, on_end=lambda _o: self._refresh())

    def _start(self, folder: Path) -> None:
        self.result = None
        self.folder = folder
        self.live_rows = []
        self.progress_line = ""
        self.table.setRowCount(0)
        self.skipped_list.clear()

    def _on_event(self, event: Any) -> None:
        from core.detect.model_level.triage import TriageRow, TriageStatus

        if isinstance(event, TriageRow):
            self.live_rows.append(event)
            if not self._redraw.isActive():
                self._redraw.start()
        elif isinstance(event, TriageStatus):
            self.progress_line = event.line()
            self.headline.setText(f"Triage of {self.folder}: {self.progress_line}")

    def _show_result(self, result: Any) -> None:
        self._redraw.stop()
        self.result = result
        self._show(result.rows, ranked=True)
        self._show_skipped(result.skipped, result.failed, result.pending)
        flagged = sum(r.level != "no evidence" for r in result.rows)
        earlier = f" ({result.reused} from earlier runs)" if result.reused else ""
        pending = (f" {len(result.pending)} not judged yet: Run triage continues with them." if result.pending else "")
        failed = f", {len(result.failed)} failed" if result.failed else ""
        self.headline.setText(f"{len(result.rows)} model(s) judged{earlier}: {flagged} backdoored or suspicious, "
                              f"{len(result.skipped)} skipped{failed}. Most suspicious first.{pending}")
        self.window.status.setText(f"Triage of {result.folder}: {len(result.rows)} judged, {len(result.pending)} not judged yet "
                                   f"(results kept in {result.store or 'memory'})")
        self._refresh()

    def _show(self, rows: list[Any], ranked: bool) -> None:
        from core.detect.model_level.verdict import rate_words, targets_label

        table = self.table
        table.setRowCount(len(rows))
        base = self.folder
        for i, r in enumerate(rows):
            path = Path(r.source)
            name = str(path.relative_to(base)) if base is not None and path.is_relative_to(base) else path.name
            level = LEVEL_WORDS.get(r.level, r.level) + (f" ({rate_words(r.false_alarm)})" if r.false_alarm else "")
            cells = [str(i + 1) if ranked else "", name, level, f"{r.score:.3f}",
                     targets_label(r.targets, r.summary).replace(",", ", "), f"{r.seconds:.1f}"]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(r.summary)
                if col == 1:
                    item.setData(FILE_ROLE, r.source)
                if col == 2:
                    item.setForeground(QColor(LEVEL_COLOURS.get(r.level, "#333333")))
                if col in (0, 3, 5):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                table.setItem(i, col, item)

    def _show_skipped(self, skipped: list[Any], failed: Sequence[Any] = (), pending: Sequence[str] = ()) -> None:
        self.skipped_list.clear()
        for s in skipped:
            self.skipped_list.addItem(f"{Path(s.source).name}: {s.reason}")
        for s in failed:
            self.skipped_list.addItem(f"{Path(s.source).name}: failed, tried again by the next run: {s.reason}")
        for source in pending:
            self.skipped_list.addItem(f"{Path(source).name}: not judged yet")
        counted = len(skipped) + len(failed)
        label = f"Skipped files ({counted})" if counted else "Skipped files: none"
        self.skipped_label.setText(label + (f"; not judged yet: {len(pending)}" if pending else ""))

    # ---------------------------------------------------------------- export

    def _choose_export(self) -> None:
        if self.result is None:
            return
        path, _filter = QFileDialog.getSaveFileName(self, "Export the triage table", self.window._last_dir(), EXPORT_FILTERS)
        if path:
            self.export(path)

    def export(self, path: str | Path) -> list[Path]:
        """Write the current table to ``path`` (.csv, .json, .html); errors go to the window's dialog."""
        from core.errors import TrojanScopeError
        from core.report import write_triage

        try:
            written = write_triage(self.result, path)
        except TrojanScopeError as exc:
            self.window.show_error(exc)
            return []
        except OSError as exc:
            self.window.show_error(f"cannot write {path}: {exc.strerror or exc}")
            return []
        self.window.status.setText("Wrote " + " and ".join(str(p) for p in written))
        return written

    # ----------------------------------------------------------------- open

    def open_row(self, row: int) -> None:
        item = self.table.item(row, 1)
        if item is not None and item.data(FILE_ROLE):
            self.window.open_model(item.data(FILE_ROLE))

    def open_selected(self) -> None:
        path = self.selected_file()
        if path:
            self.window.open_model(path)

    # ----------------------------------------------------------- screenshots

    def run_default(self, done: Callable[[], None]) -> None:
        """On the demo: triage its two models (the BadNet and its clean control); else the open model's folder."""
        loaded = self.state.loaded
        if loaded is None:
            done()
            return
        root = Path(loaded.summary.path).parent
        files = [root / "badnet.keras", root / "clean_model.keras"]
        self.folder_edit.setText(str(root))
        if not self.run_triage(files if all(f.is_file() for f in files) else None, then=lambda _ok: done()):
            done()
