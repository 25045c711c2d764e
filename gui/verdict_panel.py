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

The panel runs the jobs and combines the verdict; its parts:
gui/verdict_evidence.py (headline, reasons, evidence rows), gui/verdict_controls.py
(the detectors' and the repair's settings, the class choice), gui/verdict_triggers.py
(the norm chart, the trigger gallery).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGridLayout, QHBoxLayout, QLabel, QPushButton, QScrollArea, QVBoxLayout, QWidget

from core.jobs import Progress
from gui.before_after import BeforeAfterTable, caption
from gui.saving import ask_save_path, save_in_background
from gui.jobs import DONE
from gui.live_curve import LiveCurves, clean_accuracy_of
from gui.state import Kind, measured_on
from gui.verdict_controls import REPAIR_LABELS, DetectorBox, RepairBox
from gui.verdict_evidence import ASK, LEVEL_COLOURS, NEUTRAL, VerdictHeadline
from gui.verdict_triggers import NormChart, TriggerGallery, titled_plot

CLEAN_PEN = pg.mkPen("#1f77b4", width=2)
ASR_PEN = pg.mkPen("#d62728", width=2)
STAGE_ROWS = {"before": 0, "after_prune": 1, "after": 2}  # "after_fine_prune" is in the note and the report
REPAIR_NAMES = {"unlearn": "Unlearning", "both": "Fine-pruning, then unlearning", "fine-prune": "Fine-pruning"}
SHORT_NAMES = {"unlearn": "Unlearning", "both": "Fine-prune + unlearn", "fine-prune": "Fine-pruning"}  # titles of a narrow plot


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
        self.repair_result: Any = None
        self._example: Optional[np.ndarray] = None  # one clean image, for the stamped thumbnails
        self._pixel_max = 255.0
        self._bars: dict[int, float] = {}
        self._norm_keys: dict[int, str] = {}  # class -> its live mask-norm curve, made at its first round
        self._repairing = False  # the repair's extra trigger searches must not redraw the verdict's chart

        outer = QVBoxLayout(self)
        self._headline = VerdictHeadline()
        self.verdict_label, self.reason_label, self.evidence_table = (
            self._headline.verdict_label, self._headline.reason_label, self._headline.evidence_table)
        outer.addWidget(self._headline)
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
        for key, curve in (("loss", self.loss_curve), ("ep_clean", self.ep_clean_curve), ("ep_asr", self.ep_asr_curve)):
            self.curves.add(key, curve)
        self._buffers = self.curves  # buffers by key (tests read their fill)
        self.state.model_changed.connect(self._model_changed)
        self.state.data_changed.connect(lambda _role: self._refresh_buttons())
        self.state.results.changed.connect(self._results_changed)
        self._refresh_buttons()

    # --------------------------------------------------------------- layout

    def _controls(self) -> QWidget:
        box = QWidget()
        box.setMaximumWidth(330)
        column = QVBoxLayout(box)
        column.setContentsMargins(0, 0, 0, 0)
        detectors, self._repair_box = DetectorBox(), RepairBox()
        self.candidates, self.rounds, self.seed, self.use_mmbd, self.run_button = (
            detectors.candidates, detectors.rounds, detectors.seed, detectors.use_mmbd, detectors.run_button)
        r = self._repair_box
        self.method, self.repair_class, self.fraction, self.epochs, self.learning_rate, self.repair_button = (
            r.method, r.repair_class, r.fraction, r.epochs, r.learning_rate, r.repair_button)
        self.run_button.clicked.connect(lambda: self.run_cleanse())
        self.repair_class.currentIndexChanged.connect(lambda _i: self._refresh_buttons())
        self.repair_button.clicked.connect(lambda: self.run_repair())
        self.method.currentIndexChanged.connect(lambda _i: self._refresh_buttons())  # after the box relabels the button
        column.addWidget(detectors)
        column.addWidget(r)

        self.table_caption = caption()
        column.addWidget(self.table_caption)
        self.table = BeforeAfterTable(["Before", "After pruning", "After repair"])
        self.table.setToolTip("After pruning: the channels zeroed, before any fine-tuning (as in Fine-Pruning); "
                              "'not run' when the method prunes nothing")
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
        self._norms, self._gallery = NormChart(), TriggerGallery()
        self.norm_plot, self.threshold_line, self.median_line = self._norms.plot, self._norms.threshold_line, self._norms.median_line
        self.trigger_host, self.trigger_grid = self._gallery.trigger_host, self._gallery.trigger_grid

        self.live_plot = titled_plot("Optimisation: mask norm per round", "round", "mask L1 norm (pixels)", legend=False)
        self.loss_curve = self.live_plot.plot([], [], pen=pg.mkPen("#555555", width=1))
        self.epoch_plot = titled_plot("Unlearning (held-out data)", "epoch", "rate")
        self.epoch_plot.setYRange(0, 1.02)
        self.ep_clean_curve = self.epoch_plot.plot([], [], pen=CLEAN_PEN, symbol="o", symbolSize=6, symbolBrush="#1f77b4", name="clean accuracy")
        self.ep_asr_curve = self.epoch_plot.plot([], [], pen=ASR_PEN, symbol="o", symbolSize=6, symbolBrush="#d62728", name="attack success")

        grid.addWidget(self.norm_plot, 0, 0)
        grid.addWidget(self._gallery, 0, 1)
        grid.addWidget(self.live_plot, 1, 0)
        grid.addWidget(self.epoch_plot, 1, 1)
        grid.setColumnStretch(0, 2)
        grid.setColumnStretch(1, 3)  # the gallery's eleven columns (ten classes, the untargeted trigger) need the width
        return host

    # ---------------------------------------------------------------- state

    @property
    def bar_item(self) -> Optional[pg.BarGraphItem]:
        """The norm chart's bars (None before the first finished class)."""
        return self._norms.bar_item

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

    def chosen_classes(self) -> Optional[tuple[int, ...]]:
        """The classes to repair, as the combo says (None: none chosen yet)."""
        return self._repair_box.chosen_classes()

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
        self._headline.show_verdict(verdict)

    def _fill_classes(self) -> None:
        """The repair's class choice: the verdict's targets first; any class; or "choose" when none is suspected."""
        self._repair_box.fill_classes(self.verdict, self.state.loaded.num_classes if self.state.loaded is not None else 0)

    def _clear_views(self) -> None:
        self.curves.clear()
        self._bars = {}
        self._norms.clear()
        self._gallery.clear()
        self.table.clearContents()
        self.table_caption.setText("")
        self.note.setText("")

    # ------------------------------------------------------------- cleanse

    def run_cleanse(self, then: Optional[Callable[[bool], None]] = None) -> bool:
        """Run the detectors (core.detect.model_level.judge: Neural Cleanse, MM-BD) on the loaded model and clean validation data."""
        from core.detect.model_level.cleanse import CleanseSettings
        from core.intake.data import load_arrays
        from core.intake.fit import pair
        from core.detect.model_level.judge import judge
        from core.detect.model_level.mmbd import MMBDSettings

        loaded = self.state.loaded
        clean = self.state.clean_for_calibration()
        if loaded is None or clean is None:
            return False
        settings = CleanseSettings(candidates=self.candidates.value(), max_rounds=self.rounds.value(), seed=self.seed.value())
        mmbd_settings = MMBDSettings(seed=self.seed.value())
        methods = ("cleanse", "twin", "mmbd", "warp") if self.use_mmbd.isChecked() else ("cleanse",)
        requested = self.state.scale

        def job():
            yield Progress(None, f"Reading {clean.path.name}")
            arrays = load_arrays(clean, loaded.input_shape, limit=settings.max_images)
            pairing = pair(loaded, arrays, requested)  # scale and pixel range decided once, for every detector
            judgement = yield from judge(loaded, arrays, pairing.scale, methods=methods, cleanse_settings=settings,
                                         mmbd_settings=mmbd_settings, pixel_max=pairing.pixel_max)
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
                self._headline.style_verdict(None)
                self._refresh_buttons()
            if then:
                then(outcome == DONE)

        self.result = self.repair_result = self.judgement = None
        self._repairing = False
        self.live_plot.setLabel("bottom", "round")
        self.live_plot.setLabel("left", "mask L1 norm (pixels)")
        self._clear_views()
        self._show_verdict(None)
        self.verdict_label.setText("The detectors are running: Neural Cleanse reverse-engineers a trigger per candidate class"
                                   + (", then MM-BD measures each class's maximum margin and warp inversion the smallest "
                                      "warp that reaches it…" if self.use_mmbd.isChecked() else "…"))
        self._refresh_buttons()
        name = "Neural Cleanse + MM-BD + warp inversion" if self.use_mmbd.isChecked() else "Neural Cleanse"
        return self.window.start_job(name, job, finished, self._on_event, live=self.curves, on_end=stopped)

    def _on_event(self, event: Any) -> None:
        from core.detect.model_level.cleanse import ClassDone, CleanseRound
        from core.repair.finetune import BatchLoss, EpochMetrics
        from core.repair.repair import RepairStage

        if isinstance(event, (CleanseRound, ClassDone)) and self._repairing:
            if isinstance(event, CleanseRound):
                self.window.status.setText(f"Extra reversed triggers (unlearned too), round {event.round}")
            return
        if isinstance(event, CleanseRound):
            if event.round == 1:  # every class starts at once; the untargeted trigger (class -1) after them
                self.curves.clear(*self._norm_keys.values())
                self.live_plot.setTitle("Mask norm per round, per class"
                                        if -1 not in event.norms else "Untargeted trigger: norm per round", color="k")
            for target, norm in event.norms.items():
                self.curves.append(self._norm_key(target), event.round, norm)
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

    def _norm_key(self, target: int) -> str:
        """The live curve of one class's mask norm (the untargeted trigger, -1, in black), made when first needed."""
        key = self._norm_keys.get(target)
        if key is None:
            key = self._norm_keys[target] = f"norm {target}"
            colour = pg.mkPen("k", width=2) if target < 0 else pg.mkPen(pg.intColor(target, hues=max(10, len(self._norm_keys))), width=1.5)
            self.curves.add(key, self.live_plot.plot([], [], pen=colour))
        return key

    def _draw_bars(self) -> None:
        self._norms.draw_bars(self._bars, set(self.result.flagged_classes) if self.result is not None else set())

    def _show_result(self) -> None:
        r = self.result
        self._bars = dict(r.norms)
        self._norms.show_result(r, self._bars)
        self._gallery.fill(r, self._example, self._pixel_max)
        screened = (f" {len(r.screened_out)} classes screened out ({r.screening['method']})." if r.screened_out else "")
        self.note.setText(
            f"{len(r.candidates)} classes optimised on {r.n_images} clean images in {r.seconds:.0f} s; "
            f"median norm {r.median:.1f}, MAD×1.4826 {r.mad:.1f}; threshold {r.threshold_norm:.1f} px.{screened}"
            + ("" if r.label_specific is None else
               f" Untargeted (any class \u2192 another) trigger: {r.label_specific.trigger.norm:.0f} px, "
               f"{r.label_specific.ratio:.2f} x the smallest one-class trigger.")
        )

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
        self.table_caption.setText(f"Measuring on the held-out {RepairSettings.holdout:.0%} of {clean.path.name} (never trained on)…")
        self.repair_result = None
        self._refresh_buttons()
        self._repairing = True
        self.curves.clear("loss", "ep_clean", "ep_asr", *self._norm_keys.values())
        doing = REPAIR_NAMES[method]
        self.live_plot.setTitle(f"{SHORT_NAMES[method]}: loss per batch", color="k")
        self.epoch_plot.setTitle(f"{doing} (held-out clean data)", color="k")
        self.live_plot.setLabel("bottom", "batch")
        self.live_plot.setLabel("left", "loss")
        self.live_plot.enableAutoRange()

        requested = self.state.scale
        suspects = tuple(self.verdict.targets) if self.verdict is not None and self.verdict.targets else None  # if none is flagged
        sizes: dict[str, int] = {}  # what the job read, for the caption

        def job():
            from core.intake.fit import choose_scale

            yield Progress(None, f"Reading {clean.path.name}")
            scale = verdict.scale if verdict is not None else choose_scale(loaded, clean, requested)[0]
            cx = load_arrays(clean, loaded.input_shape)
            px = load_arrays(poisoned, loaded.input_shape) if poisoned is not None else None
            sizes["poisoned"] = 0 if px is None else len(px.x)
            return (yield from repair(
                loaded, cx.x, cx.y, scale, RepairSettings(method=method, classes=classes, fraction=fraction, epochs=epochs,
                                                          learning_rate=lr, seed=seed, suspects=suspects),
                verdict=verdict, x_poisoned=None if px is None else px.x, y_poisoned=None if px is None else px.y, target=target,
            ))

        roles = [self.state.calibration_role(), "poisoned"]

        def finished(result: Any) -> None:
            self.repair_result = result
            self.table.show_stages({STAGE_ROWS[st.stage]: st.metrics for st in result.stages if st.stage in STAGE_ROWS})
            measured = measured_on(result.n_holdout, self.state)
            asr_on = (f"all {sizes['poisoned']} images of {poisoned.path.name}" if sizes.get("poisoned")
                      else result.asr_source)
            self.table_caption.setText(f"{REPAIR_NAMES[result.method]}. Same images in every row: clean accuracy on "
                                       f"{measured}; attack success on {asr_on}." + (f" {result.note}." if result.note else ""))
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
