"""A hand-made linear classifier with a one-pixel backdoor, shared by the detector tests.

Class k is the brightness of rows 2k..2k+1 (weight 1 + k * slope); row 12 belongs to no
class, and its pixel (12, 11) adds 60 to class PLANTED when ``planted``. Its behaviour is
known exactly, so Neural Cleanse, MM-BD and triage are checked against hand computation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

H, W, CLASSES, PLANTED = 13, 12, 6, 3


def save_linear_model(path: Path, *, slope: float = 0.0, planted: bool = True) -> None:
    from core.tf_env import keras

    keras = keras()
    inputs = keras.Input((H, W, 1))
    outputs = keras.layers.Dense(CLASSES, activation="softmax")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    weights = np.zeros((H * W, CLASSES), np.float32)
    pixel = np.arange(H * W).reshape(H, W)
    for k in range(CLASSES):
        weights[pixel[2 * k : 2 * k + 2].ravel(), k] = 1.0 + k * slope
    if planted:
        weights[pixel[12, 11], PLANTED] = 60.0  # the one-pixel backdoor
    model.set_weights([weights, np.zeros(CLASSES, np.float32)])
    model.save(path)
