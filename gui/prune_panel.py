"""Fine-Pruning: sweep a conv layer's channels, pick the prune point, fine-tune, save.

Two jobs, so the analyst can look before committing: the sweep draws the
clean-accuracy and attack-success curves live and proposes a stop point (the
largest prune within the accuracy budget); a draggable line picks another
point; "Prune && fine-tune" then prunes exactly that many channels, fine-tunes
with live loss and per-epoch curves, and fills the before/after table. Save
writes the repaired model atomically beside the input (never over it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from core.jobs import Progress
from gui.before_after import BeforeAfterTable, caption
from gui.jobs import DONE
from gui.live_curve import LiveCurves, clean_accuracy_of
from gui.plots import titled_plot as _plot
from gui.state import Kind, measured_on
from gui.saving import ask_save_path, save_in_background

CLEAN_PEN = pg.mkPen("#1f77b4", width=2)
ASR_PEN = pg.mkPen("#d62728", width=2)
KEPT_BRUSH = pg.mkBrush("#7f9fbf")
PRUNED_BRUSH = pg.mkBrush("#d62728")


class PrunePanel(QWidget):
    TITLE = "Fine-Pruning"

    def __init__(self, window: Any) -> None:
        super().__init__()
        self.window = window
        self.state = window.state
        self.sweep_result: Any = None
        self.repair_result: Any = None
        self._arrays: Any = None  # (clean Arrays, poisoned Arrays or None, scale)
        self._channels = 0
        layout = QHBoxLayout(self)
        layout.addWidget(self._controls(), 0)
        layout.addWidget(self._plots(), 1)
        self.curves = LiveCurves(self)
        for key, curve in (("clean", self.clean_curve), ("asr", self.asr_curve), ("loss", self.loss_curve),
                           ("ep_clean", self.ep_clean_curve), ("ep_asr", self.ep_asr_curve)):
            self.curves.add(key, curve)
        self._buffers = self.curves  # buffers by key (tests read their fill)
        self.state.model_changed.connect(self._model_changed)
        self.state.data_changed.connect(lambda _role: self._refresh_buttons())
        self._model_changed()

    # --------------------------------------------------------------- layout

    def _controls(self) -> QWidget:
        from core.repair import pruning

        box = QWidget()
        box.setMaximumWidth(340)
        column = QVBoxLayout(box)
        settings = QGroupBox("Settings")
        form = QFormLayout(settings)
        self.layer_combo = QComboBox()
        self.layer_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.layer_combo.setToolTip("Conv layer to prune; the default is the last conv layer that feeds the dense head")
        form.addRow(QLabel("Layer to prune"))
        form.addRow(self.layer_combo)  # a row of its own: "conv_3 (32 channels, default)" needs the column's width
        self.max_drop = QDoubleSpinBox()
        self.max_drop.setRange(0.0, 100.0)
        self.max_drop.setDecimals(1)
        self.max_drop.setSuffix(" points")
        self.max_drop.setValue(pruning.DEFAULT_MAX_ACC_DROP * 100)
        self.max_drop.valueChanged.connect(self._rule_changed)
        form.addRow("Max accuracy drop", self.max_drop)
        self.epochs = QSpinBox()
        self.epochs.setRange(0, 500)
        self.epochs.setValue(pruning.DEFAULT_EPOCHS)
        form.addRow("Fine-tune epochs", self.epochs)
        self.learning_rate = QDoubleSpinBox()
        self.learning_rate.setDecimals(5)
        self.learning_rate.setRange(1e-5, 1.0)
        self.learning_rate.setSingleStep(1e-3)
        self.learning_rate.setValue(pruning.DEFAULT_LEARNING_RATE)
        self.learning_rate.setToolTip("Adam's initial rate, cosine-decayed to zero over the run")
        form.addRow("Learning rate", self.learning_rate)
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 4096)
        self.batch_size.setValue(pruning.DEFAULT_BATCH_SIZE)
        form.addRow("Batch size", self.batch_size)
        self.augment = QCheckBox("Random shifts while fine-tuning")
        self.augment.setChecked(pruning.DEFAULT_AUGMENT)
        form.addRow(self.augment)
        column.addWidget(settings)

        self.run_button = QPushButton("Run sweep")
        self.run_button.clicked.connect(lambda: self.run_sweep())
        self.tune_button = QPushButton("Prune && fine-tune")
        self.tune_button.clicked.connect(lambda: self.run_repair())
        self.save_button = QPushButton("Save repaired model…")
        self.save_button.clicked.connect(self._ask_save)
        for button in (self.run_button, self.tune_button, self.save_button):
            column.addWidget(button)
        self.stop_label = QLabel("Run the sweep to see how accuracy and attack success fall as channels go.")
        self.stop_label.setWordWrap(True)
        column.addWidget(self.stop_label)

        self.table_caption = caption()
        column.addWidget(self.table_caption)
        self.table = BeforeAfterTable(["Before", "After pruning", "After fine-tuning"])
        column.addWidget(self.table)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        column.addWidget(self.note)
        column.addStretch(1)
        return box

    def _plots(self) -> QWidget:
        grid_widget = QWidget()
        grid = QGridLayout(grid_widget)
        self.sweep_plot = _plot("Pruning sweep", "fraction of channels pruned", "rate")
        self.sweep_plot.setYRange(0, 1.02)
        self.sweep_plot.setXRange(0, 1)
        self.clean_curve = self.sweep_plot.plot([], [], pen=CLEAN_PEN, name="clean accuracy")
        self.asr_curve = self.sweep_plot.plot([], [], pen=ASR_PEN, name="attack success")
        self.stop_marker = pg.ScatterPlotItem(size=12, symbol="star", brush=pg.mkBrush("#2ca02c"), pen=pg.mkPen("k"))
        self.sweep_plot.addItem(self.stop_marker)
        self.prune_line = pg.InfiniteLine(pos=0, angle=90, movable=True, pen=pg.mkPen("#2ca02c", width=2, style=pg.QtCore.Qt.PenStyle.DashLine),
                                          label="prune here", labelOpts={"position": 0.08, "color": "#2ca02c"})
        self.prune_line.setBounds((0, 1))
        self.prune_line.setVisible(False)
        self.prune_line.sigPositionChangeFinished.connect(self._line_moved)
        self.sweep_plot.addItem(self.prune_line)

        self.bar_plot = _plot("Mean activation on clean data", "channel", "mean activation", legend=False)
        self.bars: Optional[pg.BarGraphItem] = None

        self.loss_plot = _plot("Fine-tuning loss per batch", "batch", "loss", legend=False)
        self.loss_curve = self.loss_plot.plot([], [], pen=pg.mkPen("#555555", width=1))
        self.epoch_plot = _plot("Fine-tuning (held-out clean data)", "epoch", "rate")
        self.epoch_plot.setYRange(0, 1.02)
        self.ep_clean_curve = self.epoch_plot.plot([], [], pen=CLEAN_PEN, symbol="o", symbolSize=6, symbolBrush="#1f77b4", name="clean accuracy")
        self.ep_asr_curve = self.epoch_plot.plot([], [], pen=ASR_PEN, symbol="o", symbolSize=6, symbolBrush="#d62728", name="attack success")
        grid.addWidget(self.sweep_plot, 0, 0)
        grid.addWidget(self.bar_plot, 0, 1)
        grid.addWidget(self.loss_plot, 1, 0)
        grid.addWidget(self.epoch_plot, 1, 1)
        return grid_widget

    # ---------------------------------------------------------------- state

    def _model_changed(self) -> None:
        """Nothing of the old model's sweep, prune point or table may stay on screen."""
        self.layer_combo.clear()
        self._reset_sweep()
        self._arrays = None
        self._channels = 0
        self._activations = None
        if self.bars is not None:
            self.bar_plot.removeItem(self.bars)
            self.bars = None
        self.bar_plot.setTitle("Mean activation on clean data", color="k")
        self.stop_label.setText("Run the sweep to see how accuracy and attack success fall as channels go.")
        loaded = self.state.loaded
        if loaded is not None:
            from core.errors import TrojanScopeError
            from core.repair.pruning import conv_layers, default_layer

            try:
                default = default_layer(loaded.model)
            except TrojanScopeError:
                default = None
            for name, channels in conv_layers(loaded.model):
                tag = ", default" if name == default else ""
                self.layer_combo.addItem(f"{name} ({channels} channels{tag})", name)
            if default is not None:
                self.layer_combo.setCurrentIndex(self.layer_combo.findData(default))
        self._refresh_buttons()

    def _refresh_buttons(self) -> None:
        clean = self.state.clean_for_calibration()
        ready = self.state.loaded is not None and clean is not None and self.layer_combo.count() > 0
        self.run_button.setEnabled(ready)
        self.tune_button.setEnabled(ready and self.sweep_result is not None)
        self.save_button.setEnabled(self.repair_result is not None)

    def selected_count(self) -> int:
        """Channels to prune at the line's position (snapped to a sweep step)."""
        if not self._channels:
            return 0
        return int(round(self.prune_line.value() * self._channels))

    # ---------------------------------------------------------------- sweep

    def run_sweep(self, then: Optional[Callable[[bool], None]] = None) -> bool:
        from core.intake.data import load_arrays
        from core.evaluate import choose_scale
        from core.repair.pruning import PruneSettings, sweep

        loaded = self.state.loaded
        clean = self.state.data.get("clean_valid") or self.state.data.get("clean_test")
        poisoned = self.state.data.get("poisoned")
        if loaded is None or clean is None:
            return False
        layer = self.layer_combo.currentData()
        requested_scale, target = self.state.scale, self.state.target
        max_drop = self.max_drop.value() / 100.0

        def job():
            yield Progress(None, f"Reading {clean.path.name}")
            scale, _note = choose_scale(loaded, clean, requested_scale)
            cx = load_arrays(clean, loaded.input_shape)
            px = load_arrays(poisoned, loaded.input_shape) if poisoned is not None else None
            result = yield from sweep(loaded, cx.x, cx.y, scale, PruneSettings(layer=layer, max_acc_drop=max_drop),
                                      x_poisoned=None if px is None else px.x, y_poisoned=None if px is None else px.y, target=target)
            return result, (cx, px, scale)

        roles = [self.state.calibration_role(), "poisoned"]

        def finished(value: Any) -> None:
            self.sweep_result, self._arrays = value
            cx = self._arrays[0]
            self.state.publish(Kind.SWEEP, self.sweep_result, roles,
                               note=f"{len(cx.x)} clean images of {clean.path.name} (all of them; the sweep trains nothing)")
            self._show_stop(self.sweep_result.stop)
            self._refresh_buttons()

        self._reset_sweep()
        return self.window.start_job("Pruning sweep", job, finished, self._on_event, live=self.curves,
                                     on_end=lambda outcome: then(outcome == DONE) if then else None)

    def _reset_sweep(self) -> None:
        self.sweep_result = self.repair_result = None
        self.curves.clear()
        self.stop_marker.setData([], [])
        self.prune_line.setVisible(False)
        self.table.clearContents()
        self.table_caption.setText("")
        self.note.setText("")
        self._refresh_buttons()

    def _on_event(self, event: Any) -> None:
        from core.repair.finetune import BatchLoss, EpochMetrics
        from core.repair.pruning import Ranking, StageMetrics, SweepPoint

        if isinstance(event, SweepPoint):
            self._channels = event.channels_total
            self.curves.append("clean", event.fraction, event.clean_accuracy)
            if event.attack_success_rate is not None:
                self.curves.append("asr", event.fraction, event.attack_success_rate)
        elif isinstance(event, Ranking):
            self._activations, self._order = np.array(event.activations), np.array(event.order)
            self._draw_bars(0)
        elif isinstance(event, BatchLoss):
            self.curves.append("loss", event.step, event.loss)
        elif isinstance(event, EpochMetrics):
            clean = clean_accuracy_of(event.metrics)
            if clean is not None:
                self.curves.append("ep_clean", event.epoch, clean)
            if "attack_success_rate" in event.metrics:
                self.curves.append("ep_asr", event.epoch, event.metrics["attack_success_rate"])
        elif isinstance(event, StageMetrics):
            row = {"before": 0, "after_prune": 1, "after_fine_tune": 2}[event.stage]
            self.table.set_row(row, event.metrics)

    def _draw_bars(self, pruned: int) -> None:
        if getattr(self, "_activations", None) is None:
            return
        brushes = [KEPT_BRUSH] * len(self._activations)
        for channel in self._order[:pruned]:
            brushes[int(channel)] = PRUNED_BRUSH
        if self.bars is not None:
            self.bar_plot.removeItem(self.bars)
        self.bars = pg.BarGraphItem(x=np.arange(len(self._activations)), height=self._activations, width=0.8,
                                    brushes=brushes, pens=[pg.mkPen(None)] * len(brushes))
        self.bar_plot.addItem(self.bars)
        self.bar_plot.setTitle(f"Mean activation on clean data ({pruned} pruned, in red)", color="k")

    def _show_stop(self, count: int) -> None:
        result = self.sweep_result
        if result is None:
            return
        point = result.curve[count]
        self.stop_marker.setData([point.fraction], [point.clean_accuracy])
        self.prune_line.setVisible(True)
        self.prune_line.setValue(point.fraction)
        self._describe_point(count)
        self._draw_bars(count)

    def _describe_point(self, count: int) -> None:
        """The chosen point against the unpruned model, both measured on the sweep's images (named)."""
        result = self.sweep_result
        point = result.curve[count]
        base = result.curve[0].clean_accuracy
        chosen = f"the stop rule: {result.stop_rule}" if count == result.stop else f"by hand; the stop rule says {result.stop}"
        clean, poisoned = self._sweep_images()
        asr = ("" if point.attack_success_rate is None
               else f"; attack success {point.attack_success_rate:.1%} on all {result.n_poisoned} of {poisoned}")
        self.stop_label.setText(
            f"Prune {count}/{result.channels_total} channels of {result.layer} ({chosen}). "
            f"Clean accuracy {point.clean_accuracy:.1%} on all {result.n_clean} images of {clean}, "
            f"{(point.clean_accuracy - base) * 100:+.1f} points from {base:.1%} unpruned{asr}. "
            "Drag the green line to choose another point."
        )

    def _sweep_images(self) -> tuple[str, str]:
        """The names of the clean and poisoned sets the sweep measured on."""
        entry = self.state.results.latest(Kind.SWEEP)
        data = entry.data if entry is not None else {}
        clean = next((Path(p).name for r, p in data.items() if r != "poisoned"), "the clean data")
        poisoned = Path(data["poisoned"]).name if "poisoned" in data else "the poisoned data"
        return clean, poisoned

    def _line_moved(self) -> None:
        if self.sweep_result is None:
            return
        count = self.selected_count()
        self.prune_line.setValue(count / self._channels)  # snap to a step
        self._describe_point(count)
        self._draw_bars(count)

    def _rule_changed(self) -> None:
        if self.sweep_result is None:
            return
        from core.repair.pruning import choose_stop

        stop, rule = choose_stop(self.sweep_result.curve, self.max_drop.value() / 100.0)
        self.sweep_result.stop, self.sweep_result.stop_rule = stop, rule
        self._show_stop(stop)

    # --------------------------------------------------------------- repair

    def run_repair(self, then: Optional[Callable[[bool], None]] = None) -> bool:
        from core.repair.pruning import PruneSettings, repair

        if self.sweep_result is None or self._arrays is None:
            return False
        loaded, result = self.state.loaded, self.sweep_result
        cx, px, _scale = self._arrays
        count = self.selected_count()
        epochs, lr, batch, augment = self.epochs.value(), self.learning_rate.value(), self.batch_size.value(), self.augment.isChecked()
        self.curves.clear("loss", "ep_clean", "ep_asr")
        self.table.clearContents()
        clean_name = self.state.clean_for_calibration().path.name if self.state.clean_for_calibration() is not None else "the clean data"
        poisoned_name = self.state.data["poisoned"].path.name if "poisoned" in self.state.data else "the poisoned data"
        self.table_caption.setText(f"Measuring on the held-out {PruneSettings.holdout:.0%} of {clean_name} (never trained on)…")
        self.repair_result = None
        self._refresh_buttons()
        roles = [self.state.calibration_role(), "poisoned"]

        def job():
            settings = PruneSettings(count=count, epochs=epochs, learning_rate=lr, batch_size=batch, augment=augment)
            return (yield from repair(loaded, result, cx.x, cx.y, settings, x_poisoned=None if px is None else px.x,
                                      y_poisoned=None if px is None else px.y))

        def finished(repaired: Any) -> None:
            self.repair_result = repaired
            self.table.show_stages({row: getattr(repaired, stage) for row, stage in
                                    enumerate(("before", "after_prune", "after_fine_tune"))})
            measured = measured_on(repaired.n_holdout, self.state)
            asr_on = (f"; attack success on all {len(px.x)} images of {poisoned_name}" if px is not None and len(px.x) else "")
            self.table_caption.setText(f"Same images in every row: clean accuracy on {measured}{asr_on}.")
            self.note.setText(
                f"Pruned channels {repaired.pruned_channels} of {repaired.layer}; they stay exactly zero. "
                f"'After pruning' = the {len(repaired.pruned_channels)} channels zeroed, before any fine-tuning."
            )
            self.state.publish(Kind.PRUNE, repaired, roles, note=f"clean accuracy on {measured}")
            self._refresh_buttons()

        return self.window.start_job("Pruning and fine-tuning", job, finished, self._on_event, live=self.curves,
                                     on_end=lambda outcome: then(outcome == DONE) if then else None)

    # ----------------------------------------------------------------- save

    def _ask_save(self) -> None:
        from core.repair.pruning import default_output_path

        if self.repair_result is None:
            return
        path = ask_save_path(self, default_output_path(self.state.loaded.summary.path))
        if path:
            self.save_to(path)

    def save_to(self, path: str, then: Optional[Callable[[bool], None]] = None) -> bool:
        """Save the repaired model (and its JSON record) on the worker thread."""
        from core.repair.pruning import save_result

        return save_in_background(self.window, save_result, self.repair_result, path, then)

    # ----------------------------------------------------------- screenshot

    def run_default(self, done: Callable[[], None]) -> None:
        if not self.run_sweep(lambda ok: self.window.after_idle(lambda: self.run_repair(lambda _ok: done()) or done()) if ok else done()):
            done()
