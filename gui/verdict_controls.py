"""The Verdict panel's settings: the detectors' (candidates, rounds, seed, MM-BD) and the repair's (method, class, stamped share, epochs, learning rate)."""

from __future__ import annotations

from typing import Any, Optional

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QSpinBox,
    QWidget,
)

REPAIR_LABELS = {  # the button says what it will do
    "unlearn": "Repair by unlearning",
    "both": "Repair: fine-prune, then unlearn",
    "fine-prune": "Repair by fine-pruning",
}


def _pair(grid: QGridLayout, row: int, col: int, text: str, field: QWidget) -> None:
    """A label and its field in two cells of ``grid`` (two settings share a row: the panel must fit 720 px)."""
    label = QLabel(text)
    label.setBuddy(field)
    grid.addWidget(label, row, col)
    grid.addWidget(field, row, col + 1)


class DetectorBox(QGroupBox):
    """What the next Neural Cleanse + MM-BD run uses; the panel connects ``run_button``."""

    def __init__(self) -> None:
        from core.detect.model_level.cleanse import CleanseSettings

        super().__init__("Detectors")
        defaults = CleanseSettings()
        grid = QGridLayout(self)
        self.candidates = QSpinBox()
        self.candidates.setRange(1, 100000)
        self.candidates.setValue(defaults.candidates)
        self.candidates.setToolTip("Candidate classes K: with more classes than this, all are screened cheaply and only "
                                   "the K most suspicious are optimised")
        _pair(grid, 0, 0, "Classes K", self.candidates)
        self.rounds = QSpinBox()
        self.rounds.setRange(1, 10000)
        self.rounds.setValue(defaults.max_rounds)
        self.rounds.setToolTip(f"At most this many rounds of {defaults.steps_per_round} optimisation steps per class")
        _pair(grid, 0, 2, "Rounds", self.rounds)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        _pair(grid, 1, 0, "Seed", self.seed)
        self.use_mmbd = QCheckBox("Twin, MM-BD, warp")
        self.use_mmbd.setChecked(True)
        self.use_mmbd.setToolTip("Besides Neural Cleanse: a clean twin distilled from the model's answers on the clean "
                                 "images, on which Neural Cleanse runs again (a class far easier to reach only on the "
                                 "suspect); MM-BD (Wang et al., IEEE S&P 2024), which does not assume a small trigger; "
                                 "warp inversion, for a class a gentle warp reaches (WaNet). The verdict's levels were "
                                 "fitted with all four: with Neural Cleanse alone it is less sure (docs/zoo.md).")
        grid.addWidget(self.use_mmbd, 1, 2, 1, 2)
        self.run_button = QPushButton("Run the detectors")
        grid.addWidget(self.run_button, 2, 0, 1, 4)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)


class RepairBox(QGroupBox):
    """The repair's method and settings, and which classes it repairs; the panel connects ``repair_button``."""

    def __init__(self) -> None:
        from core.repair import repair

        super().__init__("Repair")
        self._class_options: list[Optional[tuple[int, ...]]] = [None]  # what each entry of the class combo repairs
        grid = QGridLayout(self)
        self.method = QComboBox()
        self.method.addItem("Unlearn the reversed trigger", "unlearn")
        self.method.addItem("Fine-prune, then unlearn", "both")
        self.method.addItem("Fine-prune only", "fine-prune")
        grid.addWidget(QLabel("Method"), 0, 0)
        grid.addWidget(self.method, 0, 1, 1, 3)
        self.repair_class = QComboBox()
        self.repair_class.setToolTip("The class whose reversed trigger is unlearned (the CLI's repair --target-class); "
                                     "choose one even when nothing was flagged")
        grid.addWidget(QLabel("Class"), 1, 0)
        grid.addWidget(self.repair_class, 1, 1, 1, 3)
        self.fraction = QDoubleSpinBox()
        self.fraction.setRange(0.01, 0.99)
        self.fraction.setSingleStep(0.05)
        self.fraction.setValue(repair.DEFAULT_FRACTION)
        self.fraction.setToolTip("Share of each batch stamped with the reversed trigger, keeping the true label")
        _pair(grid, 2, 0, "Stamped", self.fraction)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 500)
        self.epochs.setValue(repair.DEFAULT_EPOCHS)
        _pair(grid, 2, 2, "Epochs", self.epochs)
        self.learning_rate = QDoubleSpinBox()
        self.learning_rate.setDecimals(5)
        self.learning_rate.setRange(1e-5, 1.0)
        self.learning_rate.setSingleStep(1e-4)
        self.learning_rate.setValue(repair.DEFAULT_LEARNING_RATE)
        self.learning_rate.setToolTip("Adam's initial rate, cosine-decayed to zero")
        grid.addWidget(QLabel("Learning rate"), 3, 0)
        grid.addWidget(self.learning_rate, 3, 1, 1, 3)
        self.repair_button = QPushButton(REPAIR_LABELS["unlearn"])
        self.method.currentIndexChanged.connect(lambda _i: self.repair_button.setText(REPAIR_LABELS[self.method.currentData()]))
        grid.addWidget(self.repair_button, 4, 0, 1, 4)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)

    def chosen_classes(self) -> Optional[tuple[int, ...]]:
        """The classes to repair, as the combo says (None: none chosen yet)."""
        i = self.repair_class.currentIndex()
        return self._class_options[i] if 0 <= i < len(self._class_options) else None

    def fill_classes(self, verdict: Any, n: int) -> None:
        """The class choice for ``n`` classes: the verdict's targets first; any class; or "choose" when none is suspected."""
        combo = self.repair_class
        previous = self.chosen_classes()
        targets = tuple(verdict.targets) if verdict is not None and verdict.level != "no evidence" else ()
        from core.detect.model_level.verdict import LABEL_SPECIFIC

        all_to_all = not targets and verdict is not None and any(
            e.method == LABEL_SPECIFIC and e.level == "backdoored" for e in verdict.evidence)
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
