"""Occlusion tries several patch sizes, and the transplant test names the box that flips (issue 13).

The model is built by hand so the ground truth is known exactly: class 1
fires only when BOTH bars are bright (an AND, like a pair of sunglasses), so
covering part of one bar with a small patch changes nothing and the small
patch's box cannot carry the trigger on its own.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.jobs import run_job
from core.intake.models import LoadedModel, ModelSummary
from core.inspect.occlusion import OcclusionSettings
from core.intake.tf_env import keras
from core.inspect.trigger import box_overlap, inspect, transplant, transplant_search

SIDE = 28
BAR_1 = (8, 1, 10, 13)  # (row0, col0, row1, col1): two bars of 2 x 12 pixels, a gap of two columns
BAR_2 = (8, 15, 10, 27)


def _mask(box):
    mask = np.zeros((SIDE, SIDE), bool)
    r0, c0, r1, c1 = box
    mask[r0:r1, c0:c1] = True
    return mask


@pytest.fixture(scope="module")
def two_bar_model() -> LoadedModel:
    """logit(1) = 40 * relu(mean(bar 1) + mean(bar 2) - 1.5) on pixels / 255; logit(0) = 1."""
    k = keras()
    inputs = k.Input((SIDE, SIDE, 1))
    x = k.layers.Flatten()(inputs)
    both = k.layers.Dense(1, activation="relu", name="both")(x)
    outputs = k.layers.Dense(2, activation="softmax", name="out")(both)
    model = k.Model(inputs, outputs)
    weights = np.zeros((SIDE * SIDE, 1), np.float32)
    for bar in (BAR_1, BAR_2):
        weights[_mask(bar).reshape(-1), 0] = 1.0 / _mask(bar).sum()
    model.get_layer("both").set_weights([weights, np.array([-1.5], np.float32)])
    model.get_layer("out").set_weights([np.array([[0.0, 40.0]], np.float32), np.array([1.0, 0.0], np.float32)])
    summary = ModelSummary("two-bar", "keras", (SIDE, SIDE, 1), 2, (), int(model.count_params()), None, "0" * 64)
    return LoadedModel(model, summary)


def _noise(n, seed):
    return np.random.default_rng(seed).uniform(0, 80, (n, SIDE, SIDE, 1)).astype(np.float32)


def _triggered() -> np.ndarray:
    image = _noise(1, 1)[0]
    image[_mask(BAR_1) | _mask(BAR_2)] = 255.0
    return image


def test_the_model_is_the_and_of_two_bars(two_bar_model):
    from core.intake.inference import predict_labels

    one_bar = _noise(1, 2)[0]
    one_bar[_mask(BAR_1)] = 255.0
    labels = predict_labels(two_bar_model, np.stack([_triggered(), one_bar, _noise(1, 3)[0]]), "255")
    assert labels.tolist() == [1, 0, 0]


def test_a_small_patch_alone_misses_the_two_bar_trigger(two_bar_model):
    """The failure the issue reports: the 4 px patch's box does not transplant the trigger."""
    image = _triggered()
    small = run_job(inspect(two_bar_model, image, "255", "occlusion", occlusion_settings=OcclusionSettings(patch=4)))
    assert len(small.occlusion_sizes) == 1
    clean = _noise(60, 4)
    tr = run_job(transplant(two_bar_model, image, small.primary.box, clean, np.zeros(60, int), "255", 1, 60))
    assert tr.flip_rate < 0.5 and not tr.looks_like_trigger


def test_default_sizes_find_both_bars_and_name_the_patch(two_bar_model):
    image = _triggered()
    result = run_job(inspect(two_bar_model, image, "255"))
    tried = [m.detail for m, _ in result.occlusion_sizes]
    assert [d.split(",")[0] for d in tried] == ["patch 4", "patch 7", "patch 11"]
    assert any("tried patches of 4, 7, 11 px" in n for n in result.notes)
    clean = _noise(60, 4)
    tr = run_job(transplant_search(two_bar_model, result, clean, np.zeros(60, int), m=60))
    assert tr.looks_like_trigger and tr.flip_rate > 0.9 and tr.baseline < 0.1
    assert box_overlap(tr.box, BAR_1)[0] > 0 and box_overlap(tr.box, BAR_2)[0] > 0  # the box spans both bars
    assert "patch 4," not in tr.box_from and tr.box_from.startswith("occlusion, patch")
    assert tr.tried[-1]["box_from"] == tr.box_from and len(tr.tried) >= 1
    assert tr.as_dict()["transplant_box_from"] == tr.box_from
