"""The STRIP panel's method column: the method, its settings (overlays, false rejection, seed, blend weights), the targets line, the calibrate and profile buttons."""

from __future__ import annotations

from typing import Any, Optional

from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton, QSpinBox

from core.detect.input_level import scanner
from core.detect.input_level import strip
from gui.state import Kind

# The methods offered (TeCo was measured and left out; SCALE-UP alone misses most triggers but
# catches SIG, so it runs inside "combined": docs/scan.md).
# The targeted detectors (masking, feature space on the targets, the clean reference) need the Verdict
# panel's targets: they join Combined once they exist.
METHODS = (("combined", "Combined (STRIP + feature space + SCALE-UP, + targeted)"), ("strip", "STRIP"), ("features", "Feature space"),
           ("masking", "Reversed-trigger masking"), ("reference", "Clean reference model"))


class MethodSettings(QGroupBox):
    """"Calibration on clean data": what the next calibration runs with; the panel connects the three buttons."""

    def __init__(self, state: Any) -> None:
        super().__init__("Calibration on clean data")
        self.state = state
        form = QFormLayout(self)
        self.method_combo = QComboBox()
        for key, label in METHODS:
            self.method_combo.addItem(label, key)
        self.method_combo.setToolTip("STRIP misses large, blended and warped triggers; the feature-space detector catches them "
                                     "and SCALE-UP catches sinusoidal signals (docs/scan.md). Reversed-trigger masking masks the "
                                     "Verdict panel's reversed trigger of each target it names; the clean reference model trains "
                                     "small networks on the clean images alone and flags what the model sends to a target but they do "
                                     "not believe. Combined flags an input when any of its detectors does (masking, feature space "
                                     "on the targets and the clean reference join once the Verdict panel names a target), 1% each.")
        self.overlays_spin = QSpinBox()
        self.overlays_spin.setRange(2, 1000)
        self.overlays_spin.setValue(strip.DEFAULT_OVERLAYS)
        self.overlays_spin.setToolTip("Clean images superimposed on each input (the paper uses 100)")
        self.frr_spin = QDoubleSpinBox()
        self.frr_spin.setRange(0.1, 49.0)
        self.frr_spin.setDecimals(1)
        self.frr_spin.setSuffix(" %")
        self._default_frr = scanner.default_frr(scanner.DEFAULT_METHOD)
        self.frr_spin.setValue(self._default_frr * 100)
        self.frr_spin.setToolTip("False rejection rate allowed on clean inputs calibration never saw (holds with 95% confidence); "
                                 "default 1% per detector, so 3% for Combined")
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setValue(strip.DEFAULT_SEED)
        weights = QHBoxLayout()
        self.input_weight = _weight_spin(strip.DEFAULT_INPUT_WEIGHT, "Weight of the scanned input in each blend")
        self.overlay_weight = _weight_spin(strip.DEFAULT_OVERLAY_WEIGHT, "Weight of the clean overlay in each blend")
        weights.addWidget(QLabel("input"))
        weights.addWidget(self.input_weight)
        weights.addWidget(QLabel("overlay"))
        weights.addWidget(self.overlay_weight)
        form.addRow("Method", self.method_combo)
        self.triggers_note = QLabel("")
        self.triggers_note.setWordWrap(True)
        form.addRow("", self.triggers_note)
        form.addRow("STRIP overlays (N)", self.overlays_spin)
        form.addRow("False rejection", self.frr_spin)
        form.addRow("Seed", self.seed_spin)
        form.addRow("STRIP blend weights", weights)
        self.method_combo.currentIndexChanged.connect(self._method_changed)
        buttons = QHBoxLayout()
        self.calibrate_button = QPushButton("Calibrate")
        self.load_profile_button = QPushButton("Load profile…")
        self.save_profile_button = QPushButton("Save profile…")
        for b in (self.calibrate_button, self.load_profile_button, self.save_profile_button):
            buttons.addWidget(b)
        form.addRow(buttons)

    def _method_changed(self) -> None:
        """STRIP's own settings only matter when the method runs STRIP."""
        method = self.method_combo.currentData()
        uses_strip = method in ("combined", "strip")
        for w in (self.overlays_spin, self.input_weight, self.overlay_weight):
            w.setEnabled(uses_strip)
        shown_default = round(self._default_frr * 100, self.frr_spin.decimals())  # as the spin box holds it
        if self.frr_spin.value() == shown_default:  # still the default: follow the method's (1% per detector)
            self._default_frr = scanner.default_frr(method, self.session_triggers() is not None)
            self.frr_spin.setValue(self._default_frr * 100)

    def session_triggers(self) -> Optional[Any]:
        """Neural Cleanse's reversed triggers of the current verdict's targets (Verdict panel), or None."""
        from core.detect.input_level.masking import triggers_from

        cleanse, verdict = self.state.results.value(Kind.CLEANSE), self.state.results.value(Kind.VERDICT)
        if self.state.loaded is None or cleanse is None or verdict is None or not verdict.targets:
            return None
        triggers = triggers_from(cleanse, verdict.targets, self.state.loaded.summary.sha256)
        return triggers if triggers.classes else None

    def results_changed(self, _kind: str) -> None:
        """The Verdict panel's targets decide whether masking can run (and joins Combined)."""
        triggers = self.session_triggers()
        if triggers is None:
            self.triggers_note.setText("Targeted detectors (masking, target features, clean reference): need a target from the "
                                       "Verdict panel's detectors.")
        else:
            which = ", ".join(map(str, triggers.classes))
            self.triggers_note.setText(f"Reversed triggers of class{'es' if len(triggers.classes) > 1 else ''} {which} "
                                       f"(Verdict panel): Combined adds masking, feature space on the target and a clean reference "
                                       f"model, at {scanner.DEFAULT_FRR_PER_DETECTOR:.0%} per detector.")
        self._method_changed()

    def strip_settings(self) -> strip.StripSettings:
        """STRIP's settings as shown (the false rejection as a fraction)."""
        weights = strip.BlendWeights(self.input_weight.value(), self.overlay_weight.value())
        return strip.StripSettings(self.overlays_spin.value(), self.frr_spin.value() / 100.0, seed=self.seed_spin.value(), weights=weights)

    def show_profile(self, profile: scanner.ScanProfile) -> None:
        """The settings a loaded or calibrated profile was made with."""
        self.method_combo.setCurrentIndex(max(0, self.method_combo.findData(profile.method)))
        self.frr_spin.setValue(profile.frr * 100)
        if "strip" in profile.detectors:
            sp = profile.detectors["strip"]
            self.overlays_spin.setValue(sp.n_overlays)
            self.seed_spin.setValue(sp.seed)
            self.input_weight.setValue(sp.weights.input)
            self.overlay_weight.setValue(sp.weights.overlay)


def _weight_spin(value: float, tip: str) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setRange(0.05, 5.0)
    spin.setSingleStep(0.1)
    spin.setDecimals(2)
    spin.setValue(value)
    spin.setToolTip(tip)
    return spin
