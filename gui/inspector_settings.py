"""The Inspector's second row of controls, how to inspect: which map's box, the class explained, the Grad-CAM layer, the occlusion patch, stride and fill, the salient threshold."""

from __future__ import annotations

from typing import Any

from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QHBoxLayout, QLabel, QSpinBox, QWidget

from gui.inspector_views import TITLES


class InspectSettings(QWidget):
    """What the next inspection uses; the panel reads the widgets when it starts one."""

    def __init__(self) -> None:
        from core.inspect.occlusion import FILLS
        from core.inspect.trigger import DEFAULT_METHOD, METHODS

        super().__init__()
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Box from"))
        self.method_combo = QComboBox()
        for m in METHODS:
            self.method_combo.addItem(TITLES[m], m)
        self.method_combo.setCurrentIndex(METHODS.index(DEFAULT_METHOD))
        self.method_combo.setToolTip("Which map's box is transplanted and covered. Occlusion (default) resolves small triggers to the stride; Grad-CAM to the last conv layer's cells.")
        row.addWidget(self.method_combo)
        row.addWidget(QLabel("Class"))
        self.class_spin = QSpinBox()
        self.class_spin.setRange(-1, 100000)
        self.class_spin.setSpecialValueText("predicted")
        self.class_spin.setValue(-1)
        row.addWidget(self.class_spin)
        row.addWidget(QLabel("Layer"))
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("Conv layer for Grad-CAM (default: the last)")
        row.addWidget(self.layer_combo)
        row.addWidget(QLabel("Patch"))
        self.patch_spin = QSpinBox()
        self.patch_spin.setRange(0, 512)
        self.patch_spin.setSpecialValueText("auto")
        self.patch_spin.setToolTip("Occlusion patch side; auto tries about 1/7, 1/4 and 1/2.5 of the image side "
                                   "and keeps the smallest whose box, covered, changes the prediction")
        row.addWidget(self.patch_spin)
        row.addWidget(QLabel("Stride"))
        self.stride_spin = QSpinBox()
        self.stride_spin.setRange(0, 512)
        self.stride_spin.setSpecialValueText("auto")
        row.addWidget(self.stride_spin)
        row.addWidget(QLabel("Fill"))
        self.fill_combo = QComboBox()
        self.fill_combo.addItems(list(FILLS))
        row.addWidget(self.fill_combo)
        row.addWidget(QLabel("Threshold"))
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.05, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setValue(0.5)
        self.threshold_spin.setToolTip("Salient region: pixels above this fraction of the map's peak")
        row.addWidget(self.threshold_spin)
        row.addStretch(1)

    def set_model(self, loaded: Any) -> None:
        """A new model: its conv layers to choose from (the last by default) and its classes."""
        self.layer_combo.clear()
        self.layer_combo.addItem("last conv", None)
        for conv in loaded.summary.conv_layers:
            self.layer_combo.addItem(conv.name, conv.name)
        self.class_spin.setMaximum(loaded.num_classes - 1)
