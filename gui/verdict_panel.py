"""Verdict: is the model backdoored, and towards which class? Then repair it by unlearning.

Neural Cleanse (:mod:`core.cleanse`) runs on the clean validation data with
live progress: the mask norm of the class being reverse-engineered is drawn
per round, and each finished class adds its bar to the norm chart. The chart
draws the anomaly threshold (norms below it have anomaly index > 2) and
paints flagged classes red; a grid shows each reversed trigger (mask,
pattern, an example stamped with it); one plain-language line at the top
gives the verdict. "Repair by unlearning" (:mod:`core.repair`) fine-tunes on
clean data stamped with the flagged triggers, with live loss and per-epoch
curves and a before/after table; Save writes the repaired model atomically
beside the input, never over it.
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
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSpinBox,
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
        self.result: Any = None  # core.cleanse.CleanseResult
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
        body = QHBoxLayout()
        body.addWidget(self._controls(), 0)
        body.addWidget(self._views(), 1)
        outer.addLayout(body, 1)

        self.curves = LiveCurves(self)
        for key, curve in (("norm", self.norm_curve), ("loss", self.loss_curve),
                           ("ep_clean", self.ep_clean_curve), ("ep_asr", self.ep_asr_curve)):
            self.curves.add(key, curve)
        self._buffers = self.curves  # buffers by key (tests read their fill)
        self.state.model_changed.connect(self._model_changed)
        self.state.data_changed.connect(lambda _role: self._refresh_buttons())
        self._refresh_buttons()

    # --------------------------------------------------------------- layout

    def _controls(self) -> QWidget:
        from core.cleanse import CleanseSettings
        from core import repair

        defaults = CleanseSettings()
        box = QWidget()
        box.setMaximumWidth(330)
        column = QVBoxLayout(box)
        column.setContentsMargins(0, 0, 0, 0)

        nc = QGroupBox("Neural Cleanse")
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
        self.run_button = QPushButton("Run Neural Cleanse")
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
        self.method.currentIndexChanged.connect(lambda _i: self.repair_button.setText(REPAIR_LABELS[self.method.currentData()]))
        rform.addRow(self.repair_button)
        column.addWidget(rep)

        self.table = BeforeAfterTable(["Before", "After pruning", "After"])
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

    def _style_verdict(self, verdict: Optional[str]) -> None:
        colour = {"backdoored": "#b3261e", "clean": "#1b7f3a"}.get(verdict or "", "#333333")
        self.verdict_label.setStyleSheet(f"font-size: 15px; font-weight: bold; color: {colour}; padding: 4px")

    def _model_changed(self) -> None:
        self.result = self.repair_result = None
        self._clear_views()
        self.verdict_label.setText(ASK)
        self._style_verdict(None)
        self._refresh_buttons()

    def _refresh_buttons(self) -> None:
        ready = self.state.loaded is not None and self.state.clean_for_calibration() is not None
        self.run_button.setEnabled(ready)
        self.repair_button.setEnabled(ready and self.result is not None)
        self.save_button.setEnabled(self.repair_result is not None)

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
        """Start Neural Cleanse on the loaded model and clean validation data."""
        from core.cleanse import CleanseSettings, cleanse
        from core.data import load_arrays
        from core.evaluate import choose_scale

        loaded = self.state.loaded
        clean = self.state.clean_for_calibration()
        if loaded is None or clean is None:
            return False
        settings = CleanseSettings(candidates=self.candidates.value(), max_rounds=self.rounds.value(), seed=self.seed.value())
        requested = self.state.scale

        def job():
            yield Progress(None, f"Reading {clean.path.name}")
            scale, _note = choose_scale(loaded, clean, requested)
            arrays = load_arrays(clean, loaded.input_shape, limit=settings.max_images)
            result = yield from cleanse(loaded, arrays, scale, settings)
            return result, arrays

        roles = [self.state.calibration_role()]

        def finished(value: Any) -> None:
            self.result, arrays = value
            self._example = arrays.x[0] if len(arrays.x) else None
            self._pixel_max = 255.0 if len(arrays.x) and float(np.max(arrays.x)) > 1.5 else 1.0
            self._show_result()
            self.state.publish(Kind.CLEANSE, self.result, roles,
                               note=f"{self.result.n_images} clean images of {clean.path.name}")
            self._refresh_buttons()

        def stopped(outcome: str) -> None:
            if outcome != DONE:  # cancelled or failed: the headline must not say it is still running
                self.verdict_label.setText(f"Neural Cleanse was {'cancelled' if outcome == 'cancelled' else 'stopped by an error'}: "
                                           "no verdict. " + ASK.replace("Run", "Run it again", 1))
                self._style_verdict(None)
                self._refresh_buttons()
            if then:
                then(outcome == DONE)

        self.result = self.repair_result = None
        self._repairing = False
        self._current_target = None
        self.live_plot.setLabel("bottom", "round")
        self.live_plot.setLabel("left", "mask norm (pixels)")
        self._clear_views()
        self.verdict_label.setText("Neural Cleanse is running: reverse-engineering a trigger per candidate class…")
        self._style_verdict(None)
        self._refresh_buttons()
        return self.window.start_job("Neural Cleanse", job, finished, self._on_event, live=self.curves, on_end=stopped)

    def _on_event(self, event: Any) -> None:
        from core.cleanse import ClassDone, CleanseStep
        from core.finetune import BatchLoss, EpochMetrics
        from core.repair import RepairStage

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
                self.live_plot.setTitle(f"Optimisation: mask norm per round, class {event.target} "
                                        f"({event.position + 1}/{event.candidates})", color="k")
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
            row = {"before": 0, "after_prune": 1, "after": 2}.get(event.stage)
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
        self.verdict_label.setText(r.describe())
        self._style_verdict(r.verdict)
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
        )

    def _fill_triggers(self) -> None:
        r = self.result
        order = sorted(r.candidates, key=lambda c: (c not in r.flagged_classes, r.norms[c]))
        scale = 255.0 / self._pixel_max
        rows = ("mask", "pattern", "stamped")
        for row, name in enumerate(rows):
            label = QLabel(name)
            label.setStyleSheet("font-size: 10px; color: #555")
            self.trigger_grid.addWidget(label, row * 2 + 1, 0)
        for col, cls in enumerate(order, start=1):
            trigger = r.triggers[cls]
            flagged = cls in r.flagged_classes
            header = QLabel(f"<b>{cls}</b>{' ⚑' if flagged else ''}<br>{trigger.norm:.0f} px")
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
        from core.data import load_arrays
        from core.repair import RepairSettings, repair

        verdict = self.state.results.value(Kind.CLEANSE)  # the session's current verdict, not a stale one
        if verdict is None or self.state.loaded is None:
            return False
        loaded = self.state.loaded
        clean = self.state.clean_for_calibration()
        poisoned = self.state.data.get("poisoned")
        target = self.state.target
        method = self.method.currentData()
        fraction, epochs, lr, seed = self.fraction.value(), self.epochs.value(), self.learning_rate.value(), self.seed.value()
        if method != "fine-prune" and not verdict.flagged_classes:
            self.window.show_error("Neural Cleanse flagged no class, so there is no trigger to unlearn; choose 'Fine-prune only'.")
            return False
        self.table.clearContents()
        self.repair_result = None
        self._refresh_buttons()
        self._repairing = True
        self.curves.clear("loss", "ep_clean", "ep_asr", "norm")
        self.live_plot.setTitle("Unlearning: training loss per batch", color="k")
        self.live_plot.setLabel("bottom", "batch")
        self.live_plot.setLabel("left", "loss")
        self.live_plot.enableAutoRange()

        def job():
            yield Progress(None, f"Reading {clean.path.name}")
            cx = load_arrays(clean, loaded.input_shape)
            px = load_arrays(poisoned, loaded.input_shape) if poisoned is not None else None
            return (yield from repair(
                loaded, cx.x, cx.y, verdict.scale, RepairSettings(method=method, fraction=fraction, epochs=epochs, learning_rate=lr, seed=seed),
                verdict=verdict, x_poisoned=None if px is None else px.x, y_poisoned=None if px is None else px.y, target=target,
            ))

        roles = [self.state.calibration_role(), "poisoned"]

        def finished(result: Any) -> None:
            self.repair_result = result
            for stage in result.stages:
                self.table.set_row({"before": 0, "after_prune": 1, "after": 2}[stage.stage], stage.metrics)
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
        from core.repair import default_output_path

        if self.repair_result is None:
            return
        path = ask_save_path(self, default_output_path(self.state.loaded.summary.path, self.repair_result.method))
        if path:
            self.save_to(path)

    def save_to(self, path: str, then: Optional[Callable[[bool], None]] = None) -> bool:
        """Save the repaired model (and its JSON record) on the worker thread."""
        from core.repair import save_result

        return save_in_background(self.window, save_result, self.repair_result, path, then)

    # ----------------------------------------------------------- screenshot

    def run_default(self, done: Callable[[], None]) -> None:
        """Neural Cleanse on the loaded model and clean validation data, then unlearning when flagged."""

        def after_cleanse(ok: bool) -> None:
            if ok and self.result is not None and self.result.flagged_classes:
                self.window.after_idle(lambda: self.run_repair(lambda _ok: done()) or done())
            else:
                done()

        if not self.run_cleanse(after_cleanse):
            done()
