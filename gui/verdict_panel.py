"""Verdict: is the model backdoored, and towards which class? Then repair it by unlearning.

The checks are :func:`core.detect.model_level.judge.judge`'s, the same as the ``cleanse``
command's: Neural Cleanse (:mod:`core.detect.model_level.cleanse`, blind to large triggers) and
MM-BD (:mod:`core.detect.model_level.mmbd`, which does not assume a small trigger) on the clean
validation data, with live progress: the mask norm of the class being
reverse-engineered is drawn per round, and each finished class adds its bar
to the norm chart (anomaly threshold drawn, flagged classes red); a grid shows
each reversed trigger (mask, pattern, an example stamped with it).

The headline is :func:`core.detect.model_level.verdict.combine` over every piece of evidence the
session holds -- the detectors above and, when Evaluate measured attack
success on the suspected-poisoned set, that figure, read from the results
registry (never from another panel). Three levels: "Backdoored (target T)" in
red, "Suspicious" in amber, "No evidence found by <methods>" in grey -- never a
green "clean", since a wrong clean is the worst answer (issue 11). A line of
reasons and one row per method say why. The combined verdict is published to
the registry (Kind.VERDICT), where the report reads it, so the headline, the
Evaluate figures and the report agree.

Repair (:mod:`core.repair.repair`) unlearns the reversed triggers of the classes the
analyst chooses -- the verdict's targets by default, any class when nothing
was flagged (the CLI's ``repair --target-class``) -- or fine-prunes, with live
loss and per-epoch curves and a before/after table; Save writes the repaired
model atomically beside the input, never over it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QAbstractItemView,
    QCheckBox,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from core.jobs import Progress
from gui.before_after import BeforeAfterTable
from gui.saving import ask_save_path, save_in_background
from gui.images import to_pixmap
from gui.jobs import DONE
from gui.live_curve import LiveCurves, clean_accuracy_of
from gui.state import Kind, measured_on

NORMAL_BRUSH = pg.mkBrush("#7f9fbf")
FLAGGED_BRUSH = pg.mkBrush("#d62728")
CLEAN_PEN = pg.mkPen("#1f77b4", width=2)
ASR_PEN = pg.mkPen("#d62728", width=2)
CELL = 40  # trigger thumbnails, pixels high: ten classes fit side by side
ASK = "Run Neural Cleanse to ask: is this model backdoored, and towards which class?"
# The combined verdict's colours: red, amber, neutral grey -- never a green "clean".
LEVEL_COLOURS = {"backdoored": "#b3261e", "suspicious": "#b26a00", "no evidence": "#5f6368"}
NEUTRAL = "#333333"
EVIDENCE_COLUMNS = ["Method", "Says", "Classes", "Evidence"]
STAGE_ROWS = {"before": 0, "after_prune": 1, "after": 2}  # "after_fine_prune" is in the note and the report
REPAIR_LABELS = {  # the button says what it will do
    "unlearn": "Repair by unlearning",
    "both": "Repair: fine-prune, then unlearn",
    "fine-prune": "Repair by fine-pruning",
}


def _plot(title: str, xlabel: str, ylabel: str, legend: bool = True) -> pg.PlotWidget:
    plot = pg.PlotWidget(background="w")
    plot.setTitle(title, color="k")
    plot.setLabel("bottom", xlabel)
    plot.setLabel("left", ylabel)
    plot.showGrid(x=True, y=True, alpha=0.25)
    if legend:
        plot.addLegend(offset=(-10, 10), labelTextColor="k", brush=pg.mkBrush(255, 255, 255, 200))
    return plot


class VerdictPanel(QWidget):
    TITLE = "Verdict && Unlearning"

    def __init__(self, window: Any) -> None:
        super().__init__()
        self.window = window
        self.state = window.state
        self.result: Any = None  # core.detect.model_level.cleanse.CleanseResult
        self.judgement: Any = None  # core.detect.model_level.judge.Judgement of the last run (detectors only)
        self.verdict: Any = None  # core.detect.model_level.verdict.Verdict shown: the detectors and the registry's evaluation
        self._judged_sha = ""  # the model the judgement describes
        self._class_options: list[Optional[tuple[int, ...]]] = [None]  # what each entry of the class combo repairs
        self.repair_result: Any = None
        self._example: Optional[np.ndarray] = None  # one clean image, for the stamped thumbnails
        self._pixel_max = 255.0
        self._bars: dict[int, float] = {}
        self._current_target: Optional[int] = None
        self._repairing = False  # the repair's extra trigger searches must not redraw the verdict's chart

        outer = QVBoxLayout(self)
        self.verdict_label = QLabel(ASK)
        self.verdict_label.setWordWrap(True)
        self.verdict_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._style_verdict(None)
        outer.addWidget(self.verdict_label)
        self.reason_label = QLabel("")
        self.reason_label.setWordWrap(True)
        self.reason_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.reason_label.setStyleSheet("font-size: 11px; color: #333; padding: 0 4px")
        self.reason_label.setVisible(False)
        outer.addWidget(self.reason_label)
        self.evidence_table = self._evidence_table()
        outer.addWidget(self.evidence_table)
        body = QHBoxLayout()
        controls = QScrollArea()  # the verdict's rows above take height: the controls scroll on 720-px screens
        controls.setWidget(self._controls())
        controls.setWidgetResizable(True)
        controls.setFrameShape(QScrollArea.Shape.NoFrame)
        controls.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        controls.setFixedWidth(350)
        body.addWidget(controls, 0)
        body.addWidget(self._views(), 1)
        outer.addLayout(body, 1)

        self.curves = LiveCurves(self)
        for key, curve in (("norm", self.norm_curve), ("loss", self.loss_curve),
                           ("ep_clean", self.ep_clean_curve), ("ep_asr", self.ep_asr_curve)):
            self.curves.add(key, curve)
        self._buffers = self.curves  # buffers by key (tests read their fill)
        self.state.model_changed.connect(self._model_changed)
        self.state.data_changed.connect(lambda _role: self._refresh_buttons())
        self.state.results.changed.connect(self._results_changed)
        self._refresh_buttons()

    # --------------------------------------------------------------- layout

    def _controls(self) -> QWidget:
        from core.detect.model_level.cleanse import CleanseSettings
        from core.repair import repair

        defaults = CleanseSettings()
        box = QWidget()
        box.setMaximumWidth(330)
        column = QVBoxLayout(box)
        column.setContentsMargins(0, 0, 0, 0)

        nc = QGroupBox("Detectors: Neural Cleanse, MM-BD")
        form = QFormLayout(nc)
        self.candidates = QSpinBox()
        self.candidates.setRange(1, 100000)
        self.candidates.setValue(defaults.candidates)
        self.candidates.setToolTip("With more classes than this, all are screened cheaply and only the K most suspicious are optimised")
        form.addRow("Candidate classes K", self.candidates)
        self.rounds = QSpinBox()
        self.rounds.setRange(1, 10000)
        self.rounds.setValue(defaults.max_rounds)
        self.rounds.setToolTip(f"At most this many rounds of {defaults.steps_per_round} optimisation steps per class")
        form.addRow("Rounds per class", self.rounds)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        form.addRow("Seed", self.seed)
        self.use_mmbd = QCheckBox("Also MM-BD (large triggers)")
        self.use_mmbd.setChecked(True)
        self.use_mmbd.setToolTip("MM-BD (Wang et al., IEEE S&P 2024) does not assume a small trigger: "
                                 "it catches frames and sunglasses that Neural Cleanse misses")
        form.addRow(self.use_mmbd)
        self.run_button = QPushButton("Run the detectors")
        self.run_button.clicked.connect(lambda: self.run_cleanse())
        form.addRow(self.run_button)
        column.addWidget(nc)

        rep = QGroupBox("Repair")
        rform = QFormLayout(rep)
        self.method = QComboBox()
        self.method.addItem("Unlearn the reversed trigger", "unlearn")
        self.method.addItem("Fine-prune, then unlearn", "both")
        self.method.addItem("Fine-prune only", "fine-prune")
        rform.addRow("Method", self.method)
        self.repair_class = QComboBox()
        self.repair_class.setToolTip("The class whose reversed trigger is unlearned (the CLI's repair --target-class); "
                                     "choose one even when nothing was flagged")
        self.repair_class.currentIndexChanged.connect(lambda _i: self._refresh_buttons())
        rform.addRow("Class", self.repair_class)
        self.fraction = QDoubleSpinBox()
        self.fraction.setRange(0.01, 0.99)
        self.fraction.setSingleStep(0.05)
        self.fraction.setValue(repair.DEFAULT_FRACTION)
        self.fraction.setToolTip("Share of each batch stamped with the reversed trigger, keeping the true label")
        rform.addRow("Stamped share", self.fraction)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 500)
        self.epochs.setValue(repair.DEFAULT_EPOCHS)
        rform.addRow("Epochs", self.epochs)
        self.learning_rate = QDoubleSpinBox()
        self.learning_rate.setDecimals(5)
        self.learning_rate.setRange(1e-5, 1.0)
        self.learning_rate.setSingleStep(1e-4)
        self.learning_rate.setValue(repair.DEFAULT_LEARNING_RATE)
        self.learning_rate.setToolTip("Adam's initial rate, cosine-decayed to zero")
        rform.addRow("Learning rate", self.learning_rate)
        self.repair_button = QPushButton(REPAIR_LABELS["unlearn"])
        self.repair_button.clicked.connect(lambda: self.run_repair())
        self.method.currentIndexChanged.connect(lambda _i: self._method_changed())
        rform.addRow(self.repair_button)
        column.addWidget(rep)

        self.table = BeforeAfterTable(["Before", "After pruning", "After repair"])
        self.table.setToolTip("After pruning: the channels zeroed, before any fine-tuning (as in Fine-Pruning)")
        column.addWidget(self.table)
        self.save_button = QPushButton("Save repaired model…")
        self.save_button.clicked.connect(self._ask_save)
        column.addWidget(self.save_button)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.note.setStyleSheet("font-size: 11px")
        column.addWidget(self.note)
        column.addStretch(1)
        return box

    def _views(self) -> QWidget:
        host = QWidget()
        grid = QGridLayout(host)
        grid.setContentsMargins(0, 0, 0, 0)
        self.norm_plot = _plot("Mask L1 norm per class (smaller = easier)", "class", "mask norm (pixels)")
        self.norm_plot.getAxis("bottom").setTickSpacing(1, 1)
        self.bar_item: Optional[pg.BarGraphItem] = None
        self.threshold_line = pg.InfiniteLine(
            angle=0, pen=pg.mkPen("#d62728", width=2, style=Qt.PenStyle.DashLine),
        )
        self.median_line = pg.InfiniteLine(
            angle=0, pen=pg.mkPen("#555555", width=1, style=Qt.PenStyle.DotLine),
        )
        # legend entries for the two lines (labels on the lines would sit behind the bars)
        self.norm_plot.plot([], [], pen=self.threshold_line.pen, name="anomaly threshold (index 2)")
        self.norm_plot.plot([], [], pen=self.median_line.pen, name="median")
        for line in (self.threshold_line, self.median_line):
            line.setVisible(False)
            self.norm_plot.addItem(line)

        trig_box = QGroupBox("Reversed triggers: mask, pattern, a clean image stamped with it")
        tlayout = QVBoxLayout(trig_box)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        self.trigger_host = QWidget()
        self.trigger_grid = QGridLayout(self.trigger_host)
        self.trigger_grid.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.trigger_grid.setHorizontalSpacing(6)
        self.trigger_grid.setVerticalSpacing(2)
        scroll.setWidget(self.trigger_host)
        tlayout.addWidget(scroll)

        self.live_plot = _plot("Optimisation: mask norm per round", "round", "mask norm (pixels)")
        self.norm_curve = self.live_plot.plot([], [], pen=pg.mkPen("#2ca02c", width=2), name="current class")
        self.loss_curve = self.live_plot.plot([], [], pen=pg.mkPen("#555555", width=1), name="unlearning loss per batch")
        self.epoch_plot = _plot("Unlearning (held-out data)", "epoch", "rate")
        self.epoch_plot.setYRange(0, 1.02)
        self.ep_clean_curve = self.epoch_plot.plot([], [], pen=CLEAN_PEN, symbol="o", symbolSize=6, symbolBrush="#1f77b4", name="clean accuracy")
        self.ep_asr_curve = self.epoch_plot.plot([], [], pen=ASR_PEN, symbol="o", symbolSize=6, symbolBrush="#d62728", name="attack success")

        grid.addWidget(self.norm_plot, 0, 0)
        grid.addWidget(trig_box, 0, 1)
        grid.addWidget(self.live_plot, 1, 0)
        grid.addWidget(self.epoch_plot, 1, 1)
        grid.setColumnStretch(0, 1)
        grid.setColumnStretch(1, 1)
        return host

    # ---------------------------------------------------------------- state

    def _evidence_table(self) -> QTableWidget:
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

    def _style_verdict(self, level: Optional[str]) -> None:
        colour = LEVEL_COLOURS.get(level or "", NEUTRAL)
        self.verdict_label.setStyleSheet(f"font-size: 15px; font-weight: bold; color: {colour}; padding: 4px")

    def verdict_colour(self) -> str:
        """The headline's colour (tests read it)."""
        return LEVEL_COLOURS.get(self.verdict.level, NEUTRAL) if self.verdict is not None else NEUTRAL

    def _model_changed(self) -> None:
        self.result = self.repair_result = self.judgement = self.verdict = None
        self._judged_sha = ""
        self._clear_views()
        self._show_verdict(None)
        self._fill_classes()
        self._refresh_buttons()

    def _method_changed(self) -> None:
        self.repair_button.setText(REPAIR_LABELS[self.method.currentData()])
        self._refresh_buttons()

    def chosen_classes(self) -> Optional[tuple[int, ...]]:
        """The classes to repair, as the combo says (None: none chosen yet)."""
        i = self.repair_class.currentIndex()
        return self._class_options[i] if 0 <= i < len(self._class_options) else None

    def _refresh_buttons(self) -> None:
        ready = self.state.loaded is not None and self.state.clean_for_calibration() is not None
        self.run_button.setEnabled(ready)
        if self.method.currentData() == "fine-prune":  # needs no trigger: any class, or the verdict alone
            can_repair = self.result is not None or self.chosen_classes() is not None
        else:  # unlearning needs a class whose trigger to reverse and unlearn
            can_repair = self.chosen_classes() is not None
        self.repair_button.setEnabled(ready and can_repair)
        self.save_button.setEnabled(self.repair_result is not None)

    # -------------------------------------------------------------- verdict

    def _results_changed(self, kind: str) -> None:
        """A new Evaluate result (or a stale one) changes the evidence: combine again."""
        if kind in ("evaluation", ""):
            self.refresh_verdict()

    def _session_evidence(self) -> list:
        """The measured attack success of the session's current Evaluate result, as evidence."""
        from core.detect.model_level.judge import attack_evidence

        evaluation = self.state.results.value(Kind.EVALUATION)
        if self.state.loaded is None or evaluation is None or evaluation.attack_success_rate is None:
            return []
        return [attack_evidence(evaluation, self.state.loaded.num_classes)]

    def refresh_verdict(self) -> None:
        """Combine the detectors' evidence with the registry's measured attack success; show and publish it."""
        from core.detect.model_level.verdict import combine

        sha = self.state.loaded.summary.sha256 if self.state.loaded is not None else ""
        detectors = list(self.judgement.verdict.evidence) if self.judgement is not None and self._judged_sha == sha else []
        detectors = [e for e in detectors if e.method != "measured attack success"]
        evidence = detectors + self._session_evidence()
        if not evidence:
            self._show_verdict(None)
            self._fill_classes()
            self._refresh_buttons()
            return
        verdict = combine(evidence)
        self._show_verdict(verdict)
        self._fill_classes()
        self._refresh_buttons()
        roles = [r for r in (self.state.calibration_role(),) if r] + (["poisoned"] if len(evidence) > len(detectors) else [])
        self.state.publish(Kind.VERDICT, verdict, roles, note=f"combined from {', '.join(verdict.methods)}")

    def _show_verdict(self, verdict: Any) -> None:
        """Headline in the level's colour, the reason, one row per method."""
        self.verdict = verdict
        if verdict is None:
            self.verdict_label.setText(ASK)
            self._style_verdict(None)
            self.reason_label.setVisible(False)
            self.evidence_table.setVisible(False)
            self.evidence_table.setRowCount(0)
            return
        ran_detectors = any(e.method != "measured attack success" for e in verdict.evidence)
        self.verdict_label.setText(verdict.summary + ("" if ran_detectors else " -- run the detectors too"))
        self._style_verdict(verdict.level)
        self.reason_label.setText(verdict.reason)
        self.reason_label.setVisible(True)
        table = self.evidence_table
        table.setRowCount(len(verdict.evidence))
        for row, e in enumerate(verdict.evidence):
            cells = [e.method, e.level, ", ".join(map(str, e.classes)) or "-", _evidence_text(e)]
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(e.summary)
                if col == 1:
                    item.setForeground(pg.mkColor(LEVEL_COLOURS.get(e.level, NEUTRAL)))
                table.setItem(row, col, item)
        table.resizeRowsToContents()
        height = table.horizontalHeader().height() + sum(table.rowHeight(r) for r in range(table.rowCount())) + 4
        table.setFixedHeight(min(height, 140))
        table.setVisible(True)

    def _fill_classes(self) -> None:
        """The repair's class choice: the verdict's targets first; any class; or "choose" when none is suspected."""
        combo = self.repair_class
        previous = self.chosen_classes()
        targets = tuple(self.verdict.targets) if self.verdict is not None and self.verdict.level != "no evidence" else ()
        n = self.state.loaded.num_classes if self.state.loaded is not None else 0
        from core.detect.model_level.verdict import LABEL_SPECIFIC

        all_to_all = not targets and self.verdict is not None and any(
            e.method == LABEL_SPECIFIC and e.level == "backdoored" for e in self.verdict.evidence)
        # () = no class: core.repair.repair unlearns the label-specific (all-to-all) trigger Neural Cleanse found
        self._class_options = [targets or (() if all_to_all else None)] + [(c,) for c in range(n)]
        combo.blockSignals(True)
        combo.clear()
        if targets:
            combo.addItem(f"Suspected target{'s' if len(targets) > 1 else ''}: {', '.join(map(str, targets))}")
        elif all_to_all:
            combo.addItem("The all-to-all trigger (label-specific check)")
        else:
            combo.addItem("Choose a class…")
        for c in range(n):
            combo.addItem(f"Class {c}")
        keep = not targets and previous is not None and previous in self._class_options
        combo.setCurrentIndex(self._class_options.index(previous) if keep else 0)
        combo.blockSignals(False)

    def _clear_views(self) -> None:
        self.curves.clear()
        self._bars = {}
        self._draw_bars()
        self.threshold_line.setVisible(False)
        self.median_line.setVisible(False)
        while self.trigger_grid.count():
            item = self.trigger_grid.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self.table.clearContents()
        self.note.setText("")

    # ------------------------------------------------------------- cleanse

    def run_cleanse(self, then: Optional[Callable[[bool], None]] = None) -> bool:
        """Run the detectors (core.detect.model_level.judge: Neural Cleanse, MM-BD) on the loaded model and clean validation data."""
        from core.detect.model_level.cleanse import CleanseSettings
        from core.intake.data import load_arrays
        from core.evaluate import choose_scale
        from core.detect.model_level.judge import judge
        from core.detect.model_level.mmbd import MMBDSettings

        loaded = self.state.loaded
        clean = self.state.clean_for_calibration()
        if loaded is None or clean is None:
            return False
        settings = CleanseSettings(candidates=self.candidates.value(), max_rounds=self.rounds.value(), seed=self.seed.value())
        mmbd_settings = MMBDSettings(seed=self.seed.value())
        methods = ("cleanse", "mmbd") if self.use_mmbd.isChecked() else ("cleanse",)
        requested = self.state.scale

        def job():
            yield Progress(None, f"Reading {clean.path.name}")
            scale, _note = choose_scale(loaded, clean, requested)
            arrays = load_arrays(clean, loaded.input_shape, limit=settings.max_images)
            judgement = yield from judge(loaded, arrays, scale, methods=methods,
                                         cleanse_settings=settings, mmbd_settings=mmbd_settings)
            return judgement, arrays

        roles = [self.state.calibration_role()]

        def finished(value: Any) -> None:
            self.judgement, arrays = value
            self._judged_sha = loaded.summary.sha256
            self.result = self.judgement.cleanse
            self._example = arrays.x[0] if len(arrays.x) else None
            self._pixel_max = 255.0 if len(arrays.x) and float(np.max(arrays.x)) > 1.5 else 1.0
            self._show_result()
            self.state.publish(Kind.CLEANSE, self.result, roles,
                               note=f"{self.result.n_images} clean images of {clean.path.name}")
            self.refresh_verdict()
            if self.verdict is not None:  # the job's last line is the detectors' verdict; the session's may weigh Evaluate too
                self.window.status.setText(f"{self.verdict.summary} ({self.judgement.seconds:.0f} s)")

        def stopped(outcome: str) -> None:
            if outcome != DONE:  # cancelled or failed: the headline must not say it is still running
                self.verdict_label.setText(f"The detectors were {'cancelled' if outcome == 'cancelled' else 'stopped by an error'}: "
                                           "no verdict. " + ASK.replace("Run", "Run it again", 1))
                self._style_verdict(None)
                self._refresh_buttons()
            if then:
                then(outcome == DONE)

        self.result = self.repair_result = self.judgement = None
        self._repairing = False
        self._current_target = None
        self.live_plot.setLabel("bottom", "round")
        self.live_plot.setLabel("left", "mask norm (pixels)")
        self._clear_views()
        self._show_verdict(None)
        self.verdict_label.setText("The detectors are running: Neural Cleanse reverse-engineers a trigger per candidate class"
                                   + (", then MM-BD measures each class's maximum margin…" if self.use_mmbd.isChecked() else "…"))
        self._refresh_buttons()
        return self.window.start_job("Neural Cleanse + MM-BD" if self.use_mmbd.isChecked() else "Neural Cleanse", job, finished, self._on_event, live=self.curves, on_end=stopped)

    def _on_event(self, event: Any) -> None:
        from core.detect.model_level.cleanse import ClassDone, CleanseStep
        from core.repair.finetune import BatchLoss, EpochMetrics
        from core.repair.repair import RepairStage

        if isinstance(event, (CleanseStep, ClassDone)) and self._repairing:
            if isinstance(event, CleanseStep):
                self.window.status.setText(f"Extra reversed trigger for class {event.target} (unlearned too), round {event.round}")
            return
        if isinstance(event, CleanseStep):
            if event.round == 1:  # a new class, or another random start of the same class
                self.curves["norm"].clear()
            if event.target != self._current_target:
                self._current_target = event.target
                self.curves["norm"].clear()
                title = (f"Optimisation: mask norm per round, class {event.target}" if event.target >= 0
                         else "Untargeted trigger: mask norm per round")
                self.live_plot.setTitle(f"{title} ({event.position + 1}/{event.candidates})", color="k")
            self.curves.append("norm", event.round, event.norm)
        elif isinstance(event, ClassDone):
            self._bars[event.target] = event.norm
            self._draw_bars()
        elif isinstance(event, BatchLoss):
            self.curves.append("loss", event.step, event.loss)
        elif isinstance(event, EpochMetrics):
            clean = clean_accuracy_of(event.metrics)
            if clean is not None:
                self.curves.append("ep_clean", event.epoch, clean)
            if event.metrics.get("attack_success_rate") is not None:
                self.curves.append("ep_asr", event.epoch, event.metrics["attack_success_rate"])
        elif isinstance(event, RepairStage):
            row = STAGE_ROWS.get(event.stage)
            if row is not None:
                self.table.set_row(row, event.metrics)

    def _draw_bars(self) -> None:
        if self.bar_item is not None:
            self.norm_plot.removeItem(self.bar_item)
            self.bar_item = None
        if not self._bars:
            return
        classes = sorted(self._bars)
        flagged = set(self.result.flagged_classes) if self.result is not None else set()
        many = len(classes) > 12 or max(classes) >= 100  # big class ids: plot by rank, label in the title
        xs = np.arange(len(classes)) if many else np.array(classes)
        brushes = [FLAGGED_BRUSH if c in flagged else NORMAL_BRUSH for c in classes]
        self.bar_item = pg.BarGraphItem(x=xs, height=[self._bars[c] for c in classes], width=0.7,
                                        brushes=brushes, pens=[pg.mkPen(None)] * len(classes))
        self.norm_plot.addItem(self.bar_item)
        self.norm_plot.setXRange(float(xs.min()) - 0.6, float(xs.max()) + 0.6, padding=0)
        axis = self.norm_plot.getAxis("bottom")
        axis.setTicks([[(float(x), str(c)) for x, c in zip(xs, classes)]])

    def _show_result(self) -> None:
        r = self.result
        self._bars = dict(r.norms)
        self._draw_bars()
        self.norm_plot.setTitle(
            "Mask L1 norm per class: flagged in red" if r.flagged_classes
            else "Mask L1 norm per class: none below the threshold", color="k")
        if np.isfinite(r.threshold_norm) and r.mad > 0:
            self.threshold_line.setValue(max(r.threshold_norm, 0.0))
            self.threshold_line.setVisible(True)
        self.median_line.setValue(r.median)
        self.median_line.setVisible(True)
        self.norm_plot.setYRange(0, max(r.norms.values()) * 1.4)  # head-room for the legend
        self._fill_triggers()
        screened = (f" {len(r.screened_out)} classes screened out ({r.screening['method']})." if r.screened_out else "")
        self.note.setText(
            f"{len(r.candidates)} classes optimised on {r.n_images} clean images in {r.seconds:.0f} s; "
            f"median norm {r.median:.1f}, MAD×1.4826 {r.mad:.1f}; threshold {r.threshold_norm:.1f} px.{screened}"
            + ("" if r.label_specific is None else
               f" Untargeted (any class \u2192 another) trigger: {r.label_specific.trigger.norm:.0f} px, "
               f"{r.label_specific.ratio:.2f} x the smallest one-class trigger.")
        )

    def _fill_triggers(self) -> None:
        """One column per reversed trigger, flagged first; the label-specific (untargeted) one first when flagged, else last."""
        from core.detect.model_level.verdict import is_label_specific_backdoor

        r = self.result
        order = sorted(r.candidates, key=lambda c: (c not in r.flagged_classes, r.norms[c]))
        columns = [(f"<b>{c}</b>{' ⚑' if c in r.flagged_classes else ''}", r.triggers[c], c in r.flagged_classes) for c in order]
        if r.label_specific is not None:
            flagged = is_label_specific_backdoor(r.label_specific)
            column = (f"<b>any\u2192other</b>{' ⚑' if flagged else ''}", r.label_specific.trigger, flagged)
            columns = [column] + columns if flagged else columns + [column]
        scale = 255.0 / self._pixel_max
        rows = ("mask", "pattern", "stamped")
        for row, name in enumerate(rows):
            label = QLabel(name)
            label.setStyleSheet("font-size: 10px; color: #555")
            self.trigger_grid.addWidget(label, row * 2 + 1, 0)
        for col, (title, trigger, flagged) in enumerate(columns, start=1):
            header = QLabel(f"{title}<br>{trigger.norm:.0f} px")
            header.setAlignment(Qt.AlignmentFlag.AlignCenter)
            header.setStyleSheet(f"font-size: 10px; color: {'#b3261e' if flagged else '#333'}")
            self.trigger_grid.addWidget(header, 0, col)
            images = [trigger.mask[..., None] * 255.0, trigger.pattern * scale]
            if self._example is not None:
                images.append(trigger.stamp(self._example[None])[0] * scale)
            for row, image in enumerate(images):
                picture = QLabel()
                picture.setPixmap(to_pixmap(image, CELL))
                if flagged:
                    picture.setStyleSheet("border: 2px solid #d62728")
                self.trigger_grid.addWidget(picture, row * 2 + 1, col)

    # -------------------------------------------------------------- repair

    def run_repair(self, then: Optional[Callable[[bool], None]] = None) -> bool:
        """Repair with the chosen method, reusing this verdict's triggers."""
        from core.intake.data import load_arrays
        from core.repair.repair import RepairSettings, repair

        verdict = self.state.results.value(Kind.CLEANSE)  # the session's current triggers, not stale ones
        classes = self.chosen_classes()
        if self.state.loaded is None or self.state.clean_for_calibration() is None or (verdict is None and classes is None):
            return False
        loaded = self.state.loaded
        clean = self.state.clean_for_calibration()
        poisoned = self.state.data.get("poisoned")
        target = self.state.target
        method = self.method.currentData()
        fraction, epochs, lr, seed = self.fraction.value(), self.epochs.value(), self.learning_rate.value(), self.seed.value()
        if method != "fine-prune" and classes is None:
            self.window.show_error("No class was flagged, so there is no trigger to unlearn: choose the class to repair, "
                                   "or 'Fine-prune only'.")
            return False
        if classes is not None and verdict is not None and method == "unlearn" and tuple(verdict.flagged_classes) == classes:
            classes = None  # exactly Neural Cleanse's flagged classes: reuse its triggers as they are
        self.table.clearContents()
        self.repair_result = None
        self._refresh_buttons()
        self._repairing = True
        self.curves.clear("loss", "ep_clean", "ep_asr", "norm")
        doing = {"unlearn": "Unlearning", "both": "Fine-pruning, then unlearning", "fine-prune": "Fine-pruning"}[method]
        self.live_plot.setTitle(f"{doing}: training loss per batch", color="k")
        self.epoch_plot.setTitle(f"{doing} (held-out clean data)", color="k")
        self.live_plot.setLabel("bottom", "batch")
        self.live_plot.setLabel("left", "loss")
        self.live_plot.enableAutoRange()

        requested = self.state.scale

        def job():
            from core.evaluate import choose_scale

            yield Progress(None, f"Reading {clean.path.name}")
            scale = verdict.scale if verdict is not None else choose_scale(loaded, clean, requested)[0]
            cx = load_arrays(clean, loaded.input_shape)
            px = load_arrays(poisoned, loaded.input_shape) if poisoned is not None else None
            return (yield from repair(
                loaded, cx.x, cx.y, scale, RepairSettings(method=method, classes=classes, fraction=fraction, epochs=epochs,
                                                          learning_rate=lr, seed=seed),
                verdict=verdict, x_poisoned=None if px is None else px.x, y_poisoned=None if px is None else px.y, target=target,
            ))

        roles = [self.state.calibration_role(), "poisoned"]

        def finished(result: Any) -> None:
            self.repair_result = result
            for stage in result.stages:
                row = STAGE_ROWS.get(stage.stage)
                if row is not None:
                    self.table.set_row(row, stage.metrics)
            measured = measured_on(result.n_holdout, self.state)
            self.note.setText(
                f"{self.note.text()}\n\nRepair ({result.method}): every row's clean accuracy on {measured}; "
                f"attack success on {result.asr_source}."
            )
            self.state.publish(Kind.REPAIR, result, roles, note=f"clean accuracy on {measured}")
            self._refresh_buttons()

        return self.window.start_job(REPAIR_LABELS[method].replace("Repair by", "Repairing by"), job, finished,
                                     self._on_event, live=self.curves,
                                     on_end=lambda outcome: then(outcome == DONE) if then else None)

    # ----------------------------------------------------------------- save

    def _ask_save(self) -> None:
        from core.repair.repair import default_output_path

        if self.repair_result is None:
            return
        path = ask_save_path(self, default_output_path(self.state.loaded.summary.path, self.repair_result.method))
        if path:
            self.save_to(path)

    def save_to(self, path: str, then: Optional[Callable[[bool], None]] = None) -> bool:
        """Save the repaired model (and its JSON record) on the worker thread."""
        from core.repair.repair import save_result

        return save_in_background(self.window, save_result, self.repair_result, path, then)

    # ----------------------------------------------------------- screenshot

    def run_default(self, done: Callable[[], None]) -> None:
        """The detectors on the loaded model and clean validation data, then unlearning when a class is suspected."""

        def after_cleanse(ok: bool) -> None:
            if ok and self.chosen_classes() is not None:
                self.window.after_idle(lambda: self.run_repair(lambda _ok: done()) or done())
            else:
                done()

        if not self.run_cleanse(after_cleanse):
            done()


def _evidence_text(e: Any) -> str:
    """The figures behind one method's say, short enough for one table row."""
    from core.detect.model_level.verdict import (
        ASR_BACKDOORED,
        ASR_SUSPICIOUS,
        BLIND_SPOT,
        LABEL_SPECIFIC,
        LABEL_SPECIFIC_RATIO,
        MMBD_BACKDOORED_P,
        MMBD_SUSPICIOUS_P,
        mapping,
    )

    d = e.details
    if e.method == "Neural Cleanse" and d.get("norms"):
        idx = {c: v for c, v in d.get("anomaly_index", {}).items() if v is not None}
        smallest = sorted(d["norms"], key=lambda c: d["norms"][c])[:3]
        parts = ", ".join(f"{c}: {d['norms'][c]:.0f} px (index {idx.get(c, float('nan')):.2f})" for c in smallest)
        return f"median mask {d.get('median_norm', 0):.0f} px; smallest {parts}; flagged at index > 2"
    if e.method == "MM-BD" and d.get("p_values"):
        ranked = sorted(d["p_values"], key=lambda c: d["p_values"][c])[:3]
        parts = ", ".join(f"{c}: margin {d['margins'][c]:.0f}, p = {d['p_values'][c]:.2g}" for c in ranked)
        return f"{parts}; suspicious at p < {MMBD_SUSPICIOUS_P:g}, backdoored at p < {MMBD_BACKDOORED_P:g}"
    if e.method == "measured attack success":
        target = "" if d.get("target") is None else f" to class {d['target']}"
        return (f"attack success {d['attack_success_rate']:.1%}{target} on {d['n_poisoned']} suspected-poisoned images "
                f"(Evaluate); suspicious from {ASR_SUSPICIOUS:.0%}, backdoored from {ASR_BACKDOORED:.0%}")
    if e.method == LABEL_SPECIFIC and "ratio" in d:
        sends = mapping({int(k): v for k, v in d["destinations"].items()}, 5)
        return (f"untargeted trigger {d['norm']:.0f} px = {d['ratio']:.2f} x the smallest one-class trigger "
                f"({d['smallest_targeted_norm']:.0f} px; label-specific below {LABEL_SPECIFIC_RATIO:g} x); sends {sends}")
    if e.method == BLIND_SPOT and "median_margin_over_clean_margin" in d:
        return (f"median class pushed to {d['median_margin_over_clean_margin']:.1f} x the clean margin (the detectors "
                f"discriminate below {d['threshold']:g} x): silence proves nothing; easiest to reach: "
                f"{', '.join(map(str, d['easiest_classes']))}")
    return e.summary
