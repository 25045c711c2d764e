"""Inspector engine: Grad-CAM, occlusion, salient boxes and the transplant test.

Maps are checked against models whose answer is known by construction (a
hand-made Keras model that reads only one region), boxes against hand-worked
synthetic maps, and the transplant test against the demo BadNet's sticker.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.demo import STICKER_BOX, TARGET
from core.jobs import collect
from core.intake.models import ConvLayer, LoadedModel, ModelSummary

REGION = (3, 7, 6, 10)  # rows 3..5, cols 7..9 of a 12x12 image


def _region_model(with_conv: bool) -> LoadedModel:
    """A 12x12x1 classifier that sees only REGION: class 0 when it is bright, else class 1."""
    from core.intake.tf_env import keras

    k = keras()
    r0, c0, r1, c1 = REGION
    inputs = k.Input((12, 12, 1))
    x = inputs
    if with_conv:
        x = k.layers.Conv2D(1, 1, activation="relu", name="conv", use_bias=False)(x)
    x = k.layers.Cropping2D(((r0, 12 - r1), (c0, 12 - c1)))(x)
    x = k.layers.Flatten()(x)
    outputs = k.layers.Dense(2, activation="softmax", name="out")(x)
    model = k.Model(inputs, outputs)
    if with_conv:
        model.get_layer("conv").set_weights([np.ones((1, 1, 1, 1), np.float32)])
    n = (r1 - r0) * (c1 - c0)
    kernel = np.zeros((n, 2), np.float32)
    kernel[:, 0] = 1.0  # class 0 score = sum of the region's pixels (scaled 0..1)
    model.get_layer("out").set_weights([kernel, np.array([0.0, 4.0], np.float32)])
    convs = (ConvLayer("conv", 1),) if with_conv else ()
    summary = ModelSummary("region-model", "keras", (12, 12, 1), 2, convs, int(model.count_params()), None, "0" * 64)
    return LoadedModel(model, summary)


def _bright_region_image() -> np.ndarray:
    image = np.full((12, 12, 1), 40.0, np.float32)
    r0, c0, r1, c1 = REGION
    image[r0:r1, c0:c1] = 255.0
    return image


def _inside(point, box) -> bool:
    return box[0] <= point[0] < box[2] and box[1] <= point[1] < box[3]


# ------------------------------------------------------------------ occlusion


def test_occlusion_map_peaks_on_the_only_region_the_model_reads():
    from core.inspect.occlusion import OcclusionSettings, occlusion_maps
    from core.inspect.trigger import salient_box

    loaded = _region_model(with_conv=False)
    image = _bright_region_image()
    occ = occlusion_maps(loaded, image, "255", OcclusionSettings(patch=3, stride=1, fill="zero"))
    assert occ.classes[0] == 0
    heat = occ.maps[0]
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    assert _inside(peak, REGION)
    # Patches that do not touch the region change nothing: exactly zero drop there.
    r0, c0, r1, c1 = REGION
    far = np.ones_like(heat, bool)
    far[max(r0 - 2, 0) : r1 + 2, max(c0 - 2, 0) : c1 + 2] = False
    assert np.all(heat[far] == 0.0)
    assert salient_box(heat).box == REGION


def test_occlusion_patch_positions_reach_every_edge():
    from core.inspect.occlusion import OcclusionSettings, patches, positions

    assert positions(28, 4, 1) == list(range(25))
    assert positions(10, 4, 4) == [0, 4, 6]  # the last patch is moved to touch the edge
    boxes = patches((10, 10, 3), OcclusionSettings(patch=4, stride=4))
    covered = np.zeros((10, 10), int)
    for r0, c0, r1, c1 in boxes:
        covered[r0:r1, c0:c1] += 1
    assert covered.min() >= 1 and len(boxes) == 9


def test_occlusion_fills_cover_with_zero_mean_and_blur():
    from core.inspect.occlusion import OcclusionSettings, cover

    image = np.zeros((8, 8, 3), np.float32)
    image[2:6, 2:6] = 200.0
    assert cover(image, (2, 2, 6, 6), OcclusionSettings(4, 1, "zero")).max() == 0.0
    mean = cover(image, (2, 2, 6, 6), OcclusionSettings(4, 1, "mean", (10.0, 20.0, 30.0)))
    assert np.array_equal(mean[3, 3], [10.0, 20.0, 30.0]) and mean[0, 0, 0] == 0.0
    blurred = cover(image, (2, 2, 6, 6), OcclusionSettings(4, 1, "blur"))
    assert 0.0 < blurred[3, 3, 0] < 200.0  # softened, not erased


def test_mean_fill_without_a_colour_is_refused():
    from core.errors import DataError
    from core.inspect.occlusion import OcclusionSettings

    with pytest.raises(DataError, match="mean"):
        OcclusionSettings(fill="mean").resolved((28, 28, 3))


# -------------------------------------------------------------------- Grad-CAM


def test_gradcam_shape_range_and_classes_on_the_demo(demo_model, demo_arrays):
    from core.inspect.gradcam import gradcam_maps
    from core.intake.inference import predict_labels

    x = demo_arrays[2].x[:12]
    cam = gradcam_maps(demo_model, x, "255")
    assert cam.maps.shape == (12, 28, 28) and cam.maps.dtype == np.float32
    assert cam.maps.min() >= 0.0 and cam.maps.max() <= 1.0 + 1e-6
    assert np.array_equal(cam.classes, predict_labels(demo_model, x, "255"))
    assert cam.layer == demo_model.summary.conv_layers[-1].name
    other = gradcam_maps(demo_model, x, "255", layer="conv_2", classes=3)
    assert other.maps.shape == (12, 28, 28) and other.maps.min() >= 0.0
    assert set(other.classes.tolist()) == {3}


def test_gradcam_of_a_one_channel_model_is_its_activation_by_hand():
    """One channel with a positive weight alpha: L = ReLU(alpha * A), so the normalised map is A / max(A)."""
    from core.inspect.gradcam import gradcam_maps

    loaded = _region_model(with_conv=True)
    image = _bright_region_image()
    cam = gradcam_maps(loaded, image, "255")
    assert cam.classes[0] == 0
    np.testing.assert_allclose(cam.maps[0], image[:, :, 0] / 255.0, rtol=1e-5)
    # Explaining the other class: its score falls as the region brightens, alpha < 0, ReLU leaves nothing.
    assert gradcam_maps(loaded, image, "255", classes=1).maps.max() == 0.0


def test_gradcam_refuses_a_model_without_conv_layers():
    from core.errors import ModelError
    from core.inspect.gradcam import gradcam_maps

    with pytest.raises(ModelError, match="Conv2D"):
        gradcam_maps(_region_model(with_conv=False), _bright_region_image(), "255")


# ---------------------------------------------------------------- salient box


def test_box_of_the_strongest_region_with_exclusive_ends():
    from core.inspect.trigger import salient_box

    heat = np.zeros((20, 20))
    heat[2:4, 3:6] = 1.0  # peak, but small: mass 6
    heat[10:15, 12:16] = 0.8  # weaker but larger: mass 16
    heat[0, 19] = -5.0  # negative values never count
    found = salient_box(heat, threshold=0.5)
    assert found.peak == (2, 3)
    assert found.box == (10, 12, 15, 16)
    assert salient_box(heat, threshold=0.9).box == (2, 3, 4, 6)  # the weaker blob is below 0.9 x peak


def test_box_joins_diagonal_neighbours_and_handles_empty_maps():
    from core.inspect.trigger import salient_box

    heat = np.zeros((6, 6))
    heat[1, 1] = heat[2, 2] = heat[3, 3] = 1.0
    assert salient_box(heat).box == (1, 1, 4, 4)  # 8-connected
    empty = salient_box(np.zeros((5, 5)))
    assert empty.box is None and empty.peak is None
    assert salient_box(-np.ones((5, 5))).box is None


def test_box_overlap_is_hand_checked():
    from core.inspect.trigger import box_overlap

    assert box_overlap((0, 0, 4, 4), (2, 2, 6, 6)) == (4, 4 / 28)
    assert box_overlap((0, 0, 2, 2), (2, 2, 4, 4)) == (0, 0.0)


# ------------------------------------------------------- transplant and repair


def _fired(demo_model, demo_arrays):
    from core.intake.inference import predict_labels

    poisoned = demo_arrays[2].x
    pred = predict_labels(demo_model, poisoned, "255")
    return poisoned[pred == TARGET]


def test_transplanting_the_sticker_flips_far_more_than_the_baseline(demo_model, demo_arrays):
    from core.inspect.trigger import transplant

    clean = demo_arrays[1]
    suspect = _fired(demo_model, demo_arrays)[0]
    _, tr = collect(transplant(demo_model, suspect, STICKER_BOX, clean.x, clean.y, "255", m=100, seed=1))
    assert tr.suspect_class == TARGET and tr.n == 100
    assert np.all(tr.recipient_labels != TARGET) and np.all(tr.before != TARGET)
    assert tr.flip_rate > 0.8
    assert tr.flip_rate > tr.baseline + 0.5
    assert tr.baseline_same_place < 0.2
    assert np.mean(tr.predicted == TARGET) == pytest.approx(tr.flip_rate)


def test_inspect_finds_the_sticker_repairs_by_covering_it_and_transplants(demo_model, demo_arrays):
    from core.inspect.trigger import box_overlap, inspect, transplant

    suspect = _fired(demo_model, demo_arrays)[1]
    _, ins = collect(inspect(demo_model, suspect, "255", methods=["gradcam", "occlusion"]))
    assert ins.predicted == TARGET and set(ins.maps) == {"gradcam", "occlusion"}
    assert box_overlap(ins.primary.box, STICKER_BOX)[0] > 0
    assert _inside(ins.primary.peak, ins.primary.box)
    assert ins.repair is not None and ins.repair.left_class
    clean = demo_arrays[1]
    _, tr = collect(transplant(demo_model, suspect, ins.primary.box, clean.x, clean.y, "255"))
    assert tr.flip_rate > tr.baseline + 0.5


def test_a_clean_images_salient_box_does_not_transplant_its_class(demo_model, demo_arrays):
    from core.intake.inference import predict_labels
    from core.inspect.trigger import inspect, transplant

    clean = demo_arrays[1]
    pred = predict_labels(demo_model, clean.x, "255")
    i = int(np.flatnonzero((pred == clean.y) & (clean.y != TARGET))[0])
    _, ins = collect(inspect(demo_model, clean.x[i], "255"))
    _, tr = collect(transplant(demo_model, clean.x[i], ins.primary.box, clean.x, clean.y, "255"))
    assert tr.flip_rate < 0.3


# ------------------------------------------------------------------------ CLI


def test_cli_inspect_prints_the_contract_keys_and_writes_the_overlay(demo_bundle, tmp_path, capsys):
    import cli

    out = tmp_path / "overlay.png"
    code = cli.main([
        "inspect", "--model", str(demo_bundle.model), "--image", str(demo_bundle.poisoned_test), "--index", "2",
        "--out", str(out), "--transplant", "--clean", str(demo_bundle.clean_test), "--transplants", "40", "--json", "--quiet",
    ])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    for key in ("method", "predicted", "confidence", "peak", "box", "saved", "flip_rate", "baseline"):
        assert key in result
    assert result["method"] == "occlusion" and result["saved"] == str(out)
    assert out.read_bytes().startswith(b"\x89PNG")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    assert len(result["box"]) == 4 and len(result["peak"]) == 2


def test_cli_inspect_bad_input_exits_2_in_one_line(demo_bundle, tmp_path, capsys):
    import cli

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert cli.main(["inspect", "--model", str(demo_bundle.model), "--image", str(broken), "--json"]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["inspect", "--model", str(demo_bundle.model), "--image", str(broken), "--transplant", "--json"]) == 2
    assert "--clean" in capsys.readouterr().err
