"""Hostile model files are refused before Keras sees them, and no code ever runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from core.errors import ModelError, UnsafeModelError
from core.intake.models import load_model
from tests.hostile import lambda_model, rewrite_keras_config, tiny_model


@pytest.fixture(scope="module")
def evil_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("evil")
    marker = root / "MARKER"
    model = lambda_model(marker)  # building it calls the lambda once
    model.save(root / "evil.h5")
    model.save(root / "evil.keras")
    marker.unlink()
    return root, marker


@pytest.mark.parametrize("name", ["evil.h5", "evil.keras"])
def test_lambda_layer_is_refused_and_never_runs(evil_files, name):
    root, marker = evil_files
    with pytest.raises(UnsafeModelError, match="innocent_resize.*Lambda"):
        load_model(root / name)
    assert not marker.exists()


def test_the_lambda_file_really_is_hostile(evil_files, tmp_path):
    """Control: Keras with safe_mode off runs the payload, so the refusal above matters."""
    root, marker = evil_files
    script = (
        "import keras; keras.models.load_model(%r, compile=False, safe_mode=False)" % str(root / "evil.h5")
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert marker.exists()
    marker.unlink()


def test_weights_only_loading_refuses_a_hostile_architecture(evil_files, tmp_path):
    root, marker = evil_files
    weights = tmp_path / "w.weights.h5"
    tiny_model().save_weights(weights)
    with pytest.raises(UnsafeModelError, match="Lambda"):
        load_model(weights, arch=root / "evil.keras")
    assert not marker.exists()


@pytest.fixture(scope="module")
def plain_keras(tmp_path_factory):
    path = tmp_path_factory.mktemp("plain") / "plain.keras"
    tiny_model().save(path)
    return path


def _edit_layer(config, index, **changes):
    config["config"]["layers"][index].update(changes)
    return config


def test_custom_registered_object_is_refused(plain_keras, tmp_path):
    bad = tmp_path / "custom.keras"
    rewrite_keras_config(plain_keras, bad, lambda c: _edit_layer(c, 1, module="evilpkg.layers", registered_name="evilpkg>Conv"))
    with pytest.raises(UnsafeModelError, match="custom object"):
        load_model(bad)


def test_function_reference_outside_keras_is_refused(plain_keras, tmp_path):
    bad = tmp_path / "fn.keras"

    def edit(config):
        config["config"]["layers"][1]["config"]["activation"] = {
            "module": "os", "class_name": "function", "config": "system", "registered_name": "function"
        }
        return config

    rewrite_keras_config(plain_keras, bad, edit)
    with pytest.raises(UnsafeModelError, match="os.system"):
        load_model(bad)


def test_unknown_layer_class_is_refused_naming_it(plain_keras, tmp_path):
    bad = tmp_path / "tfop.keras"
    rewrite_keras_config(plain_keras, bad, lambda c: _edit_layer(c, 1, class_name="TFOpLambda"))
    with pytest.raises(UnsafeModelError, match="TFOpLambda"):
        load_model(bad)


def test_legacy_h5_with_custom_class_is_refused(tmp_path):
    path = tmp_path / "legacy.h5"
    tiny_model().save(path)
    with h5py.File(path, "r+") as h5:
        config = json.loads(h5.attrs["model_config"])
        config["config"]["layers"][1]["class_name"] = "MyCustomConv"
        h5.attrs["model_config"] = json.dumps(config)
    with pytest.raises(UnsafeModelError, match="MyCustomConv"):
        load_model(path)


def test_external_link_in_h5_is_refused(tmp_path):
    secret = tmp_path / "analyst_secret.h5"
    with h5py.File(secret, "w") as h5:
        h5["passwords"] = np.arange(4)
    path = tmp_path / "linked.h5"
    tiny_model().save(path)
    with h5py.File(path, "r+") as h5:
        h5["model_weights"]["leak"] = h5py.ExternalLink(str(secret), "/passwords")
    with pytest.raises(UnsafeModelError, match="external link"):
        load_model(path)


def test_external_storage_in_weights_is_refused(tmp_path):
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"\0" * 64)
    path = tmp_path / "ext.h5"
    tiny_model().save(path)
    with h5py.File(path, "r+") as h5:
        h5.create_dataset("sneaky", shape=(16,), dtype="f4", external=[(str(raw), 0, 64)])
    with pytest.raises(UnsafeModelError, match="external file"):
        load_model(path)


def test_zip_bomb_member_is_refused_before_inflating(plain_keras, tmp_path):
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(plain_keras) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            zout.writestr(item, zin.read(item))
        with zout.open("assets/padding.bin", "w", force_zip64=True) as member:
            chunk = b"\0" * (1 << 20)
            for _ in range(64):
                member.write(chunk)
    with pytest.raises(UnsafeModelError, match="zip bomb"):
        load_model(bomb)


def test_path_traversal_member_is_refused(plain_keras, tmp_path):
    bad = tmp_path / "trav.keras"
    with zipfile.ZipFile(plain_keras) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, zin.read(item))
        zout.writestr("../../outside.txt", b"x")
    with pytest.raises(UnsafeModelError, match="unsafe path"):
        load_model(bad)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"this is not a model at all", "not a Keras model"),
    ],
)
def test_non_model_files_are_refused_clearly(tmp_path, content, message):
    path = tmp_path / "m.h5"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        load_model(path)


@pytest.mark.parametrize("name", ["plain.keras", "plain.h5"])
def test_truncated_model_is_a_clear_error(plain_keras, tmp_path, name):
    source = plain_keras if name.endswith(".keras") else tmp_path / "full.h5"
    if name.endswith(".h5"):
        tiny_model().save(source)
    data = Path(source).read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated or corrupt|could not load"):
        load_model(cut)
