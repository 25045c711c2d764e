"""The before/after table both repair panels show: clean accuracy and attack success per stage."""

from __future__ import annotations

from typing import Any, Sequence

from PySide6.QtWidgets import QTableWidget, QTableWidgetItem

ROW_HEIGHT = 28


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
