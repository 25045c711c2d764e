"""Triage: rank a folder of models by suspicion, then open the one to look at.

Analysts receive models in batches (issue 11). This panel is the GUI twin of
``python main.py triage --models DIR --clean D``: it runs the same job,
:func:`core.detect.model_level.triage.triage` (core.detect.model_level.judge's checks on every model file, one
combined verdict each), through the window's job controller, so the status
bar shows progress and Cancel stops it. The session's clean data (validation,
else test) is the clean data of every model.

Rows appear as each model is judged, then the table is ranked as the CLI
ranks it ("backdoored", then "suspicious", then "no evidence found", each by
score). Files that could not be judged safely -- not a model, truncated,
hostile -- are listed below with the reason, never silently dropped.
Double-clicking a row (or "Open in the session") opens that model through
the window's own ``open_model``, the path File > Open model takes, so every
other panel gets it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from PySide6.QtCore import Qt
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

from gui.jobs import DONE

COLUMNS = ["#", "Model file", "Verdict", "Score", "Suspected targets", "Seconds"]
# The combined verdict's words and colours, as on the Verdict panel: never a green "clean".
LEVEL_WORDS = {"backdoored": "Backdoored", "suspicious": "Suspicious", "no evidence": "No evidence found"}
LEVEL_COLOURS = {"backdoored": "#b3261e", "suspicious": "#b26a00", "no evidence": "#5f6368"}
FILE_ROLE = Qt.ItemDataRole.UserRole


class TriagePanel(QWidget):
    TITLE = "Triage"

    def __init__(self, window: Any) -> None:
        super().__init__()
        self.window = window
        self.state = window.state
        self.result: Any = None  # core.detect.model_level.triage.TriageResult of the last finished run
        self.live_rows: list[Any] = []  # core.detect.model_level.triage.TriageRow, as judged (before the final ranking)
        self.folder: Optional[Path] = None

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
        self.use_cleanse = QCheckBox("Neural Cleanse (small triggers)")
        self.use_cleanse.setChecked(True)
        self.use_mmbd = QCheckBox("MM-BD (large triggers)")
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
        self.run_button = QPushButton("Run triage")
        self.run_button.clicked.connect(lambda: self.run_triage())
        form.addRow(self.run_button)
        column.addWidget(group)
        self.open_button = QPushButton("Open in the session")
        self.open_button.setToolTip("Open the selected model as if by File > Open model: every panel gets it")
        self.open_button.clicked.connect(self.open_selected)
        column.addWidget(self.open_button)
        self.note = QLabel("Double-click a row to open that model in the other panels.")
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
        return tuple(m for m, check in (("cleanse", self.use_cleanse), ("mmbd", self.use_mmbd)) if check.isChecked())

    def _refresh(self) -> None:
        clean = self.state.clean_for_calibration()
        self.clean_label.setText(clean.describe() if clean is not None else "none: open clean validation data (File menu)")
        folder = self.folder_edit.text().strip()
        self.run_button.setEnabled(bool(folder) and Path(folder).is_dir() and clean is not None and bool(self.methods()))
        self.open_button.setEnabled(self.selected_file() is not None)

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a folder of models to triage", self.window._last_dir())
        if folder:
            self.folder_edit.setText(folder)

    def selected_file(self) -> Optional[str]:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        if not rows:
            return None
        item = self.table.item(rows[0].row(), 1)
        return None if item is None else item.data(FILE_ROLE)

    # ------------------------------------------------------------------ run

    def run_triage(self) -> bool:
        """Judge every model file of the folder on the session's clean data (core.detect.model_level.triage), ranked."""
        from dataclasses import replace

        from core.detect.model_level.cleanse import CleanseSettings
        from core.detect.model_level.mmbd import MMBDSettings
        from core.detect.model_level.triage import triage

        clean = self.state.clean_for_calibration()
        folder = Path(self.folder_edit.text().strip())
        methods = self.methods()
        if clean is None or not folder.is_dir() or not methods:
            return False
        cleanse_settings = replace(CleanseSettings(), max_rounds=self.rounds.value())
        mmbd_settings = replace(MMBDSettings(), steps=self.mmbd_steps.value())
        scale = self.state.scale

        def finished(result: Any) -> None:
            self.result = result
            self._show(result.rows, ranked=True)
            self._show_skipped(result.skipped)
            flagged = sum(r.level != "no evidence" for r in result.rows)
            self.headline.setText(f"{len(result.rows)} model(s) judged in {result.seconds:.0f} s: {flagged} backdoored or suspicious, "
                                  f"{len(result.skipped)} skipped. Most suspicious first.")
            self.window.status.setText(f"Triage finished: {self.headline.text()}")

        def ended(outcome: str) -> None:
            if outcome != DONE:
                self.headline.setText(f"Triage {'cancelled' if outcome == 'cancelled' else 'stopped by an error'} "
                                      f"after {len(self.live_rows)} model(s); the rows below are not ranked.")
            self._refresh()

        self.result = None
        self.folder = folder
        self.live_rows = []
        self.table.setRowCount(0)
        self.skipped_list.clear()
        self.headline.setText(f"Triage of {folder}: judging each model with {' and '.join(methods)}…")
        return self.window.start_job(
            f"Triage of {folder.name}",
            lambda: triage(folder, clean, scale, methods=methods, cleanse_settings=cleanse_settings, mmbd_settings=mmbd_settings),
            finished, self._on_event, on_end=ended,
        )

    def _on_event(self, event: Any) -> None:
        from core.detect.model_level.triage import TriageRow

        if isinstance(event, TriageRow):
            self.live_rows.append(event)
            self._show(self.live_rows, ranked=False)

    def _show(self, rows: list[Any], ranked: bool) -> None:
        from core.detect.model_level.verdict import inconclusive_mark, targets_label

        table = self.table
        table.setRowCount(len(rows))
        base = self.folder
        for i, r in enumerate(rows):
            path = Path(r.source)
            name = str(path.relative_to(base)) if base is not None and path.is_relative_to(base) else path.name
            level = LEVEL_WORDS.get(r.level, r.level) + inconclusive_mark(r.summary)
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

    def _show_skipped(self, skipped: list[Any]) -> None:
        self.skipped_list.clear()
        for s in skipped:
            self.skipped_list.addItem(f"{Path(s.source).name}: {s.reason}")
        self.skipped_label.setText(f"Skipped files ({len(skipped)})" if skipped else "Skipped files: none")

    # ----------------------------------------------------------------- open

    def open_row(self, row: int) -> None:
        item = self.table.item(row, 1)
        if item is not None and item.data(FILE_ROLE):
            self.window.open_model(item.data(FILE_ROLE))

    def open_selected(self) -> None:
        path = self.selected_file()
        if path:
            self.window.open_model(path)
