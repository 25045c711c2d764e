"""Real legacy files from the CSAW course, weights-only loading, and model shape checks."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from core.errors import ModelError
from core.intake.models import load_model, require_conv_layer
from tests.hostile import tiny_model


def test_csaw_full_legacy_h5_loads_with_its_summary(csaw_model):
    s = csaw_model.summary
    assert s.format == "h5"
    assert s.input_shape == (55, 47, 3)
    assert s.num_classes == 1283
    assert [(c.name, c.channels) for c in s.conv_layers] == [("conv_1", 20), ("conv_2", 40), ("conv_3", 60), ("conv_4", 80)]
    assert s.keras_version == "2.7.0"
    assert s.params == 601_643


def test_csaw_weights_only_file_needs_an_architecture(csaw_dir):
    with pytest.raises(ModelError, match="weights only.*architecture") as raised:
        load_model(csaw_dir / "sunglasses_bd_weights.h5")
    assert "--" not in str(raised.value) and raised.value.fixed_by == ("architecture",)  # the CLI adds --arch


def test_csaw_weights_onto_the_full_model_give_the_original_badnet(csaw_dir):
    badnet = load_model(csaw_dir / "sunglasses_bd_weights.h5", arch=csaw_dir / "fine_pruned_sunglasses_model.h5")
    assert badnet.summary.format == "weights+arch"
    assert badnet.summary.keras_version == "2.2.4"
    with h5py.File(csaw_dir / "sunglasses_bd_weights.h5", "r") as h5:
        for layer in ("conv_1", "conv_3", "fc_2", "output"):
            kernel = h5[layer][layer]["kernel:0"][()]
            bias = h5[layer][layer]["bias:0"][()]
            got_kernel, got_bias = badnet.model.get_layer(layer).get_weights()
            np.testing.assert_array_equal(got_kernel, kernel)
            np.testing.assert_array_equal(got_bias, bias)
    # and it is not simply the fine-pruned student model
    student = load_model(csaw_dir / "fine_pruned_sunglasses_model.h5")
    assert not np.array_equal(student.model.get_layer("conv_3").get_weights()[0], badnet.model.get_layer("conv_3").get_weights()[0])


def test_default_conv_layer_and_models_without_one(tmp_path, csaw_model):
    assert require_conv_layer(csaw_model) == "conv_4"  # last Conv2D overall; pruning picks its own default
    path = tmp_path / "dense.keras"
    tiny_model(conv=False).save(path)
    dense = load_model(path)
    assert dense.summary.conv_layers == ()
    with pytest.raises(ModelError, match="no Conv2D layer"):
        require_conv_layer(dense)
    with pytest.raises(ModelError, match="no Conv2D layer named 'nope'"):
        require_conv_layer(csaw_model, "nope")


def test_a_non_image_model_is_refused(tmp_path):
    from core.intake.tf_env import keras

    k = keras()
    inputs = k.Input((10,))
    model = k.Model(inputs, k.layers.Dense(2, activation="softmax")(inputs))
    path = tmp_path / "tabular.keras"
    model.save(path)
    with pytest.raises(ModelError, match="image input"):
        load_model(path)


def test_weights_that_do_not_fit_the_architecture(tmp_path, csaw_dir):
    weights = tmp_path / "small.weights.h5"
    tiny_model().save_weights(weights)
    with pytest.raises(ModelError, match="do not fit"):
        load_model(weights, arch=csaw_dir / "fine_pruned_sunglasses_model.h5")
