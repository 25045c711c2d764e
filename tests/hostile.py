"""Builders of hostile and broken files, shared by the safety tests."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path


def lambda_model(marker: Path):
    """A tiny model whose Lambda layer writes ``marker`` whenever its code runs."""
    from core.tf_env import keras

    k = keras()
    code = f"lambda t: (__import__('pathlib').Path({str(marker)!r}).write_text('code ran'), t)[1]"
    inputs = k.Input((8, 8, 3))
    x = k.layers.Lambda(eval(code), name="innocent_resize")(inputs)  # noqa: S307 (test fixture)
    x = k.layers.Conv2D(2, 3)(x)
    x = k.layers.Flatten()(x)
    outputs = k.layers.Dense(2, activation="softmax")(x)
    return k.Model(inputs, outputs)


def tiny_model(conv: bool = True):
    from core.tf_env import keras

    k = keras()
    inputs = k.Input((8, 8, 3))
    x = k.layers.Conv2D(2, 3, name="c")(inputs) if conv else inputs
    x = k.layers.Flatten()(x)
    outputs = k.layers.Dense(3, activation="softmax")(x)
    return k.Model(inputs, outputs)


def rewrite_keras_config(src: Path, dst: Path, edit) -> None:
    """Copy a .keras archive with its config.json passed through ``edit``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == "config.json":
                data = json.dumps(edit(json.loads(data))).encode()
            zout.writestr(item, data)
