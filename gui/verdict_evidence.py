"""The Verdict panel's headline: the combined verdict in its level's colour, the line of reasons, one evidence row per method."""

from __future__ import annotations

from typing import Any, Optional

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

ASK = "Run Neural Cleanse to ask: is this model backdoored, and towards which class?"
# The combined verdict's colours: red, amber, neutral grey -- never a green "clean".
LEVEL_COLOURS = {"backdoored": "#b3261e", "suspicious": "#b26a00", "no evidence": "#5f6368"}
NEUTRAL = "#333333"
EVIDENCE_COLUMNS = ["Method", "Says", "Classes", "Evidence"]


class VerdictHeadline(QWidget):
    """The three rows above the Verdict panel's controls; they show a verdict, never decide one."""

    def __init__(self) -> None:
        super().__init__()
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        self.verdict_label = QLabel(ASK)
        self.verdict_label.setWordWrap(True)
        self.verdict_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.style_verdict(None)
        column.addWidget(self.verdict_label)
        self.reason_label = QLabel("")
        self.reason_label.setWordWrap(True)
        self.reason_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.reason_label.setStyleSheet("font-size: 11px; color: #333; padding: 0 4px")
        self.reason_label.setVisible(False)
        column.addWidget(self.reason_label)
        self.evidence_table = _evidence_table()
        column.addWidget(self.evidence_table)

    def style_verdict(self, level: Optional[str]) -> None:
        colour = LEVEL_COLOURS.get(level or "", NEUTRAL)
        self.verdict_label.setStyleSheet(f"font-size: 15px; font-weight: bold; color: {colour}; padding: 4px")

    def show_verdict(self, verdict: Any) -> None:
        """Headline in the level's colour, the reason, one row per method; ``None``: the question again."""
        if verdict is None:
            self.verdict_label.setText(ASK)
            self.style_verdict(None)
            self.reason_label.setVisible(False)
            self.evidence_table.setVisible(False)
            self.evidence_table.setRowCount(0)
            return
        ran_detectors = any(e.method != "measured attack success" for e in verdict.evidence)
        self.verdict_label.setText(verdict.summary + ("" if ran_detectors else " -- run the detectors too"))
        self.style_verdict(verdict.level)
        rate = getattr(verdict, "false_alarm", "")
        self.reason_label.setText((f"{rate[0].upper()}{rate[1:]}. " if rate else "") + verdict.reason)
        self.reason_label.setVisible(True)
        table = self.evidence_table
        table.setRowCount(len(verdict.evidence))
        for row, e in enumerate(verdict.evidence):
            says, classes, colour = _says(e, verdict.level)
            cells = [e.method, says, ", ".join(map(str, classes)) or "-", evidence_text(e)]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(e.summary)
                if col == 1:
                    item.setForeground(pg.mkColor(LEVEL_COLOURS.get(colour, NEUTRAL)))
                table.setItem(row, col, item)
        table.resizeRowsToContents()
        height = table.horizontalHeader().height() + sum(table.rowHeight(r) for r in range(table.rowCount())) + 4
        table.setFixedHeight(min(height, 140))
        table.setVisible(True)


def _evidence_table() -> QTableWidget:
    table = QTableWidget(0, len(EVIDENCE_COLUMNS))
    table.setHorizontalHeaderLabels(EVIDENCE_COLUMNS)
    table.verticalHeader().setVisible(False)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
    table.setWordWrap(True)
    header = table.horizontalHeader()
    for col in range(3):
        header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
    header.setSectionResizeMode(3, QHeaderView.ResizeMode.Stretch)
    table.setStyleSheet("font-size: 11px")
    table.setVisible(False)
    return table


def _says(e: Any, verdict_level: str) -> tuple[str, tuple[int, ...], str]:
    """(the Says cell, its classes, the colour's level): a detector below its own line that is rarer than
    1 in 20 clean models "supports" a raised verdict (several such add up to it), naming its class."""
    from core.detect.model_level.verdict import NO_EVIDENCE, SUPPORTING_TAIL, SUSPICIOUS

    tail = e.details.get("clean_tail")
    if verdict_level != NO_EVIDENCE and e.level == NO_EVIDENCE and tail is not None and tail < SUPPORTING_TAIL:
        cls = e.details.get("class")
        return "supports", ((int(cls),) if cls is not None else ()), SUSPICIOUS
    return e.level, e.classes, e.level


def evidence_text(e: Any) -> str:
    """The figures behind one method's say, short enough for one table row."""
    from core.detect.model_level.verdict import ASR_BACKDOORED, ASR_SUSPICIOUS, LABEL_SPECIFIC, mapping

    d = e.details
    rarity = ""
    if d.get("clean_tail") is not None:
        tail = d["clean_tail"]
        rarity = f"; clean models go this far {tail:.0%} of the time" if tail >= 0.01 else f"; about 1 in {1 / max(tail, 1e-12):,.0f} clean models go this far"
    if e.method == "Neural Cleanse" and d.get("norms"):
        smallest = sorted(d["norms"], key=lambda c: d["norms"][c])[:3]
        parts = ", ".join(f"{c}: {d['norms'][c]:.0f} px" for c in smallest)
        return f"median mask {d.get('median_norm', 0):.0f} px; smallest {parts}{rarity}"
    if e.method == "MM-BD" and d.get("margins"):
        ranked = sorted(d["margins"], key=lambda c: -d["margins"][c])[:3]
        parts = ", ".join(f"{c}: {d['margins'][c]:.0f}" for c in ranked)
        return f"largest margins {parts} (median {d.get('median_margin', 0):.0f}){rarity}"
    if e.method == "warp inversion" and d.get("shifts"):
        ranked = sorted(d["shifts"], key=lambda c: d["shifts"][c])[:3]
        parts = ", ".join(f"{c}: {d['shifts'][c]:.2f} px" for c in ranked)
        return f"smallest warps {parts}{rarity}"
    if e.method == "measured attack success":
        target = "" if d.get("target") is None else f" to class {d['target']}"
        return (f"attack success {d['attack_success_rate']:.1%}{target} on {d['n_poisoned']} suspected-poisoned images "
                f"(Evaluate); suspicious from {ASR_SUSPICIOUS:.0%}, backdoored from {ASR_BACKDOORED:.0%}")
    if e.method == LABEL_SPECIFIC and "ratio" in d:
        sends = mapping({int(k): v for k, v in d["destinations"].items()}, 5)
        return (f"untargeted trigger {d['norm']:.0f} px = {d['ratio']:.2f} x the smallest one-class trigger "
                f"({d['smallest_targeted_norm']:.0f} px); sends {sends}{rarity}")
    return e.summary
