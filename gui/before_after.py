"""The before/after table both repair panels show: clean accuracy and attack success per stage, and what they were measured on."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from PySide6.QtGui import QColor
from PySide6.QtWidgets import QLabel, QTableWidget, QTableWidgetItem

ROW_HEIGHT = 25
NOT_RUN = "not run"


class BeforeAfterTable(QTableWidget):
    def __init__(self, stages: Sequence[str]) -> None:
        super().__init__(len(stages), 2)
        self.setHorizontalHeaderLabels(["Clean accuracy", "Attack success"])
        self.setVerticalHeaderLabels(list(stages))
        self.horizontalHeader().setStretchLastSection(True)
        for row in range(len(stages)):
            self.setRowHeight(row, ROW_HEIGHT)
        self.setFixedHeight(self.horizontalHeader().sizeHint().height() + len(stages) * ROW_HEIGHT + 4)

    def set_row(self, row: int, metrics: Any) -> None:
        """Fill a stage's row from anything with clean_accuracy and attack_success_rate."""
        for col, value in enumerate((metrics.clean_accuracy, metrics.attack_success_rate)):
            self.setItem(row, col, QTableWidgetItem("—" if value is None else f"{value:.1%}"))

    def show_stages(self, rows: Mapping[int, Any]) -> None:
        """A finished run: each row's metrics, and "not run" in the rows of stages the method skipped (never a blank)."""
        for row in range(self.rowCount()):
            if row in rows:
                self.set_row(row, rows[row])
                continue
            for col in range(self.columnCount()):
                item = QTableWidgetItem(NOT_RUN)
                item.setForeground(QColor("#777777"))
                self.setItem(row, col, item)


def caption() -> QLabel:
    """The line above a before/after table naming the images its figures were measured on (one baseline: the same images in every row)."""
    label = QLabel("")
    label.setWordWrap(True)
    label.setStyleSheet("font-size: 11px; color: #333")
    return label
