"""The Inspector's transplant-test box: the button, how many clean images, the flip rates against the baselines, the grid of pasted and baseline images."""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGridLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton, QScrollArea, QSpinBox, QVBoxLayout, QWidget

from gui.images import to_pixmap

GRID_COLUMNS = 12
CELL = 56  # thumbnail side in the transplant grid
FIRST_LINE = "A trigger flips most of them to the suspect's class; a random clean box of the same size (baseline) does not."


class TransplantBox(QGroupBox):
    """Shows a transplant result (``core.inspect.trigger.Transplant``); the panel connects ``transplant_button`` and runs the test."""

    def __init__(self) -> None:
        super().__init__("Transplant test: paste the salient box onto clean images of other classes")
        column = QVBoxLayout(self)
        row = QHBoxLayout()
        self.transplant_button = QPushButton("Transplant test")
        row.addWidget(self.transplant_button)
        row.addWidget(QLabel("Clean images"))
        self.m_spin = QSpinBox()
        self.m_spin.setRange(1, 10000)
        self.m_spin.setValue(100)
        row.addWidget(self.m_spin)
        self.transplant_label = QLabel(FIRST_LINE)
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

    def show_transplant(self, tr: Any) -> None:
        """The flip rate against both baselines, the boxes tried, and a row of pasted and a row of baseline images."""
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
        self.clear()
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

    def clear(self, message: str = "") -> None:
        """Empty the grid; a ``message`` replaces the line above it."""
        while self.grid.count():
            item = self.grid.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        if message:
            self.transplant_label.setText(message)
