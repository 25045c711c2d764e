"""Hand-made classifiers with a one-pixel backdoor (one target, or all-to-all), shared by the detector tests.

Class k is the brightness of rows 2k..2k+1 (weight 1 + k * slope); row 12 belongs to no
class, and its pixel (12, 11) adds 60 to class PLANTED when ``planted``. Its behaviour is
known exactly, so Neural Cleanse, MM-BD and triage are checked against hand computation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

H, W, CLASSES, PLANTED = 13, 12, 6, 3


def save_linear_model(path: Path, *, slope: float = 0.0, planted: bool = True) -> None:
    from core.intake.tf_env import keras

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


def save_all_to_all_model(path: Path) -> None:
    """The same classes with an all-to-all backdoor: pixel (12, 11) bright sends class k to k + 1.

    Logits ``b + gate * 3 (s - b)``: ``b`` the class brightnesses, ``s`` the same
    shifted by one class, ``gate`` a sigmoid of the trigger pixel (0 on clean
    images, 1 once the pixel exceeds ~0.5). Standard layers only, so the
    loader's safety checks accept it.
    """
    from core.intake.tf_env import keras

    keras = keras()
    pixel = np.arange(H * W).reshape(H, W)
    base = np.zeros((H * W, CLASSES), np.float32)
    for k in range(CLASSES):
        base[pixel[2 * k : 2 * k + 2].ravel(), k] = 1.0
    shifted = np.roll(base, 1, axis=1)  # column k + 1 reads class k's rows
    inputs = keras.Input((H, W, 1))
    flat = keras.layers.Flatten()(inputs)
    b = keras.layers.Dense(CLASSES, use_bias=False, name="base")(flat)
    diff = keras.layers.Dense(CLASSES, use_bias=False, name="shift")(flat)
    gate = keras.layers.Dense(CLASSES, activation="sigmoid", name="gate")(flat)
    logits = keras.layers.Add()([b, keras.layers.Multiply()([gate, diff])])
    model = keras.Model(inputs, keras.layers.Softmax()(logits))
    gate_w = np.zeros((H * W, CLASSES), np.float32)
    gate_w[pixel[12, 11]] = 40.0
    model.get_layer("base").set_weights([base])
    model.get_layer("shift").set_weights([3.0 * (shifted - base)])
    model.get_layer("gate").set_weights([gate_w, np.full(CLASSES, -20.0, np.float32)])
    model.save(path)
