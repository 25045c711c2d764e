"""Model & Data: open the suspicious model and data, read its summary, evaluate it."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from core.intake.data import Conversion
from gui.images import to_pixmap
from gui.state import ROLES, Kind

GRID_COLUMNS = 5  # fits beside the controls on a 1,280 px screen
SAMPLES_PER_KIND = 15  # three whole rows of clean and three of triggered images: all six fit in 1,280 x 720, captions included
THUMBNAIL = 64  # pixels high


class ModelPanel(QWidget):
    TITLE = "Model && Data"

    def __init__(self, window: Any) -> None:
        super().__init__()
        self.window = window
        self.state = window.state
        layout = QHBoxLayout(self)
        layout.addLayout(self._left_column(), 2)
        layout.addWidget(self._samples_box(), 3)
        self.state.model_changed.connect(self._show_model)
        self.state.data_changed.connect(self._show_data)
        self.state.data_refused.connect(self._show_refusal)
        self.refusals: dict[str, str] = {}  # role -> why the last file chosen for it was refused
        self._refresh_buttons()

    # --------------------------------------------------------------- layout

    def _left_column(self) -> QVBoxLayout:
        column = QVBoxLayout()
        model_box = QGroupBox("Model")
        model_layout = QVBoxLayout(model_box)
        buttons = QHBoxLayout()
        self.open_model_button = QPushButton("Open model…")
        self.open_model_button.clicked.connect(self.window.choose_model)
        self.demo_button = demo_button = QPushButton("Load demo")
        demo_button.clicked.connect(lambda: self.window.load_demo())
        buttons.addWidget(self.open_model_button)
        buttons.addWidget(demo_button)
        model_layout.addLayout(buttons)
        self.summary = QLabel("No model loaded. Drop a .keras or .h5 file on the window.")
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        model_layout.addWidget(self.summary)
        self.conv_table = QTableWidget(0, 2)
        self.conv_table.setHorizontalHeaderLabels(["Conv layer", "Channels"])
        self.conv_table.horizontalHeader().setStretchLastSection(True)
        self.conv_table.setMaximumHeight(150)
        model_layout.addWidget(self.conv_table)
        column.addWidget(model_box)

        data_box = QGroupBox("Data")
        form = QFormLayout(data_box)
        self.data_labels: dict[str, QLabel] = {}
        for role, label in ROLES.items():
            if role == "scan":
                continue
            row = QHBoxLayout()
            text = QLabel("—")
            button = QPushButton("Open…")
            button.clicked.connect(lambda _=False, r=role: self.window.choose_data(r))
            row.addWidget(text, 1)
            row.addWidget(button)
            self.data_labels[role] = text
            form.addRow(label, row)
        self.convert_box = QCheckBox("Convert data to the model's size and channels")
        self.convert_box.setToolTip(
            "HDF5 and .npz images whose height, width or channel count differ from the model's input are refused "
            "(they are probably not this model's data); tick to resize them and convert grey <-> colour instead. "
            "What was converted is named beside each data set and in the report.")
        self.convert_box.toggled.connect(lambda on: self.state.set_conversion(Conversion(resize=on, channels=on)))
        form.addRow("", self.convert_box)
        self.scale_combo = QComboBox()
        self.scale_combo.addItems(["auto", "255", "1"])
        self.scale_combo.setToolTip("Divide pixels by 255 (255), keep them (1), or measure which the model expects (auto)")
        self.scale_combo.currentTextChanged.connect(lambda s: setattr(self.state, "scale", s))
        form.addRow("Pixel scale", self.scale_combo)
        self.target_spin = QSpinBox()
        self.target_spin.setRange(-1, 100000)
        self.target_spin.setSpecialValueText("from poisoned labels")
        self.target_spin.setValue(-1)
        self.target_spin.valueChanged.connect(lambda v: setattr(self.state, "target", None if v < 0 else v))
        form.addRow("Attack target", self.target_spin)
        column.addWidget(data_box)

        eval_box = QGroupBox("Evaluation")
        eval_layout = QVBoxLayout(eval_box)
        self.evaluate_button = QPushButton("Evaluate")
        self.evaluate_button.clicked.connect(self.evaluate)
        eval_layout.addWidget(self.evaluate_button)
        self.results = QLabel("Clean accuracy and attack success rate appear here.")
        self.results.setWordWrap(True)
        self.results.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        eval_layout.addWidget(self.results)
        column.addWidget(eval_box)
        column.addStretch(1)
        return column

    def _samples_box(self) -> QGroupBox:
        box = QGroupBox("Samples (label → prediction)")
        outer = QVBoxLayout(box)
        self.samples_scroll = scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        self.grid_host = QWidget()
        self.grid = QGridLayout(self.grid_host)
        self.grid.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        scroll.setWidget(self.grid_host)
        outer.addWidget(scroll)
        return box

    # ---------------------------------------------------------------- state

    def _show_model(self) -> None:
        loaded = self.state.loaded
        s = loaded.summary
        h, w, c = s.input_shape
        self.summary.setText(
            f"<b>{s.path}</b><br>format: {s.format}{' (architecture from ' + s.arch_path + ')' if s.arch_path else ''}"
            f"<br>input: {h}×{w}×{c} &nbsp; classes: {s.num_classes} &nbsp; parameters: {s.params:,}"
            f"<br>saved by Keras {s.keras_version or 'unknown'} &nbsp; sha256: {s.sha256[:16]}…"
        )
        self.conv_table.setRowCount(len(s.conv_layers))
        for row, conv in enumerate(s.conv_layers):
            self.conv_table.setItem(row, 0, QTableWidgetItem(conv.name))
            self.conv_table.setItem(row, 1, QTableWidgetItem(str(conv.channels)))
        self.results.setText("Model loaded: press Evaluate.")
        self._mark_carried_over()
        if self.state.scale in ("auto", "255", "1"):
            self.scale_combo.setCurrentText(self.state.scale)
        self._clear_grid()
        self._refresh_buttons()

    def _show_data(self, role: str) -> None:
        self.refusals.pop(role, None)
        if role in self.data_labels:
            source = self.state.data.get(role)
            self.data_labels[role].setToolTip(str(source.path) if source else "")
        self._mark_carried_over()
        self._refresh_buttons()

    def _show_refusal(self, role: str, why: str) -> None:
        self.refusals[role] = why
        self._mark_carried_over()

    def _mark_carried_over(self) -> None:
        """Each slot: the data's name, and in red whatever makes it unusable with this model (never silently)."""
        carried = set(self.state.carried_over())
        unfit = self.state.unfit()
        for role, label in self.data_labels.items():
            source = self.state.data.get(role)
            text = html.escape(source.describe()) if source else "—"
            if role in unfit:
                text = f"{text}<br><span style='color:#b3261e'>does not fit the model: {html.escape(unfit[role])}</span>"
            elif source is not None:
                converted = source.conversions(self.state.loaded.input_shape) if self.state.loaded is not None else []
                if converted:
                    text += f" <span style='color:#8a5a00'>(converted: {html.escape('; '.join(converted))})</span>"
            if role in carried:
                text = f"{text} <span style='color:#b3261e'>(opened with the previous model)</span>"
            if role in self.refusals:
                text = f"{text}<br><span style='color:#b3261e'>refused: {html.escape(self.refusals[role])}</span>"
            label.setText(text)
            label.setWordWrap(True)

    def _refresh_buttons(self) -> None:
        unfit = self.state.unfit()
        have_data = any(r in self.state.data and r not in unfit for r in ("clean_test", "clean_valid", "poisoned"))
        self.evaluate_button.setEnabled(self.state.loaded is not None and have_data)

    # ------------------------------------------------------------- evaluate

    def evaluate(self, done: Optional[Callable[[], None]] = None) -> None:
        from core.evaluate import evaluate

        loaded = self.state.loaded
        clean_role = "clean_test" if "clean_test" in self.state.data else "clean_valid"
        clean = self.state.data.get(clean_role)
        poisoned = self.state.data.get("poisoned")
        scale, target = self.state.scale, self.state.target

        def finished(result: Any) -> None:
            note = (f"clean accuracy on all {result.n_clean} images of {clean.path.name}" if clean is not None else "")
            self.state.publish(Kind.EVALUATION, result, [clean_role, "poisoned"], note=note)
            self._show_result(result)

        started = self.window.start_job(
            "Evaluating", lambda: evaluate(loaded, clean, poisoned, target, scale), finished,
            on_end=lambda _outcome: done() if done else None,
        )
        if not started and done:
            done()

    def run_default(self, done: Callable[[], None]) -> None:
        if self.state.loaded is None:
            done()
            return
        self.evaluate(done)

    def _show_result(self, result: Any) -> None:
        entry = self.state.results.latest(Kind.EVALUATION)
        lines = []
        if result.clean_accuracy is not None:
            source = entry.data.get("clean_test") or entry.data.get("clean_valid") if entry else None
            named = f" of {Path(source).name}" if source else ""
            lines.append(f"<b>Clean accuracy: {result.clean_accuracy:.2%}</b> on all {result.n_clean} images{named}")
        if result.attack_success_rate is not None:
            poisoned = entry.data.get("poisoned") if entry else None
            named = f" of {Path(poisoned).name}" if poisoned else ""
            lines.append(
                f"<b>Attack success rate: {result.attack_success_rate:.2%}</b> on all {result.n_poisoned} "
                f"images{named} (target {result.target if result.target is not None else 'per label'})"
            )
        lines.append(result.scale_note)
        if result.skipped:
            lines.append(f"{len(result.skipped)} file(s) skipped, e.g. {result.skipped[0].source}: {result.skipped[0].reason}")
        self.results.setText("<br>".join(lines))
        self.window.status.setText("Evaluation finished")
        self._fill_grid(result)

    def _clear_grid(self) -> None:
        while self.grid.count():
            item = self.grid.takeAt(0)
            if item.widget():
                item.widget().deleteLater()

    def _fill_grid(self, result: Any) -> None:
        """Clean samples in whole rows, then the triggered ones starting on a row of their own."""
        self._clear_grid()
        row = 0
        for kind, preds in (("clean", result.clean_samples), ("poisoned", result.poisoned_samples)):
            if preds is None or preds.samples is None:
                continue
            n = min(len(preds.samples), SAMPLES_PER_KIND)
            for i in range(n):
                label = None if preds.y is None else int(preds.y[i])
                cell = self._sample_cell(kind, preds.samples[i], label, int(preds.predicted[i]), float(preds.confidence[i]))
                self.grid.addWidget(cell, row + i // GRID_COLUMNS, i % GRID_COLUMNS)
            row += -(-n // GRID_COLUMNS)

    @staticmethod
    def _sample_cell(kind: str, image: np.ndarray, label: Optional[int], pred: int, conf: float) -> QWidget:
        cell = QWidget()
        v = QVBoxLayout(cell)
        v.setContentsMargins(2, 2, 2, 2)
        v.setSpacing(2)
        picture = QLabel()
        picture.setPixmap(to_pixmap(np.asarray(image), THUMBNAIL))
        if kind == "poisoned":  # its label is the attacker's target: a match is a successful attack
            ok = label is None or label != pred
            caption = QLabel(f"triggered → {pred} ({conf:.0%})")
        else:
            ok = label is None or label == pred
            caption = QLabel(f"{label if label is not None else '?'} → {pred} ({conf:.0%})")
        caption.setStyleSheet(f"color: {'#1b7f3a' if ok else '#b3261e'}; font-size: 10px")
        caption.setObjectName("sample_caption")
        v.addWidget(picture)
        v.addWidget(caption)
        return cell
