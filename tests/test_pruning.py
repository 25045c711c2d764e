"""Fine-Pruning engine: layer choice, sweep correctness, permanent pruning, safe saving, cancel."""

from __future__ import annotations

import numpy as np
import pytest

from core.jobs import collect

TARGET = 7


def _naive_accuracy(model, layer, channels, x_scaled, y):
    """Independent recomputation: zero the filters on a clone, run the whole network."""
    from core.repair.pruning import prune_model

    pruned = prune_model(model, layer, channels)
    pred = np.asarray(pruned(x_scaled, training=False)).argmax(1)
    return float(np.mean(pred == y))


@pytest.fixture(scope="module")
def demo_sweep(demo_model, demo_arrays):
    from core.repair.pruning import sweep

    valid, _test, poisoned = demo_arrays
    events, result = collect(sweep(demo_model, valid.x, valid.y, "255", x_poisoned=poisoned.x, target=TARGET))
    return events, result


def test_default_layer_of_demo_is_conv_3(demo_model):
    from core.repair.pruning import default_layer

    assert default_layer(demo_model.model) == "conv_3"


def test_deepid_default_layer_is_conv_3_not_the_branch_conv_4(csaw_model):
    from core.repair.pruning import default_layer

    assert default_layer(csaw_model.model) == "conv_3"


def test_sweep_on_deepid_fixture_with_random_data(csaw_model):
    from core.repair.pruning import PruneSettings, SweepPoint, sweep

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (48, 55, 47, 3)).astype(np.float32)
    y = rng.integers(0, csaw_model.num_classes, 48)
    for layer, channels in (("conv_3", 60), ("conv_4", 80)):  # conv_4: a branch, needs the other branch cached
        events, result = collect(sweep(csaw_model, x, y, "255", PruneSettings(layer=layer), x_poisoned=x[:16], target=0))
        assert result.channels_total == channels and len(result.curve) == channels + 1
        assert sum(isinstance(e, SweepPoint) for e in events) == channels + 1
        # Everything pruned: compare the last point with the whole network run on a zeroed clone.
        assert result.curve[-1].clean_accuracy == pytest.approx(
            _naive_accuracy(csaw_model.model, layer, range(channels), x / 255.0, y))


def test_sweep_curve_matches_naive_recomputation(demo_model, demo_arrays, demo_sweep):
    valid, _test, poisoned = demo_arrays
    _events, result = demo_sweep
    for k in (0, 5, result.stop, 20, 31):
        channels = [int(c) for c in result.order[:k]]
        assert result.curve[k].clean_accuracy == pytest.approx(_naive_accuracy(demo_model.model, "conv_3", channels, valid.x / 255.0, valid.y), abs=1e-9)
        pred_p = np.asarray(__import__("core.repair.pruning", fromlist=["prune_model"]).prune_model(demo_model.model, "conv_3", channels)(poisoned.x / 255.0)).argmax(1)
        assert result.curve[k].attack_success_rate == pytest.approx(float(np.mean(pred_p == TARGET)))


def test_ranking_is_mean_activation_ascending(demo_model, demo_arrays, demo_sweep):
    from core.intake.tf_env import keras

    valid = demo_arrays[0]
    _events, result = demo_sweep
    probe = keras().Model(demo_model.model.inputs, demo_model.model.get_layer("conv_3").output)
    means = np.asarray(probe(valid.x / 255.0)).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(result.activations, means, rtol=1e-4, atol=1e-6)
    assert np.all(np.diff(result.activations[result.order]) >= 0)


def test_stop_rule_is_largest_prune_within_budget(demo_sweep):
    from core.repair.pruning import choose_stop

    _events, result = demo_sweep
    base = result.curve[0].clean_accuracy
    stop, _rule = choose_stop(result.curve, 0.04)
    assert result.curve[stop].clean_accuracy >= base - 0.04
    assert all(p.clean_accuracy < base - 0.04 for p in result.curve[stop + 1 :])
    assert choose_stop(result.curve, count=3)[0] == 3
    assert choose_stop(result.curve, fraction=0.5)[0] == 16


def test_pruned_channels_exactly_zero_in_saved_file_and_input_untouched(demo_bundle, demo_model, demo_arrays, tmp_path):
    from core.intake.models import file_sha256, load_model
    from core.repair.pruning import PruneSettings, fine_prune, zero_channels

    valid, _test, poisoned = demo_arrays
    before = file_sha256(demo_bundle.model)
    weights_before = [w.copy() for w in demo_model.model.get_weights()]
    out = tmp_path / "repaired.keras"
    _events, result = collect(fine_prune(demo_model, valid.x, valid.y, "255", PruneSettings(count=12, epochs=1),
                                         x_poisoned=poisoned.x, target=TARGET, out=out))
    assert file_sha256(demo_bundle.model) == before
    assert all(np.array_equal(a, b) for a, b in zip(weights_before, demo_model.model.get_weights()))
    saved = load_model(out)
    assert zero_channels(saved.model, "conv_3") == result.pruned_channels and len(result.pruned_channels) == 12
    assert (tmp_path / "repaired.keras.json").is_file()


def test_h5_output_and_refuses_to_overwrite_input(demo_bundle, demo_model, demo_arrays, tmp_path):
    from core.errors import TrojanScopeError
    from core.intake.models import load_model
    from core.repair.pruning import PruneSettings, fine_prune, zero_channels

    valid = demo_arrays[0]
    with pytest.raises(TrojanScopeError):
        collect(fine_prune(demo_model, valid.x, valid.y, "255", PruneSettings(count=2, epochs=0), out=demo_bundle.model))
    out = tmp_path / "repaired.h5"
    _e, result = collect(fine_prune(demo_model, valid.x[:200], valid.y[:200], "255", PruneSettings(count=4, epochs=1), out=out))
    assert zero_channels(load_model(out).model, "conv_3") == result.pruned_channels


@pytest.mark.parametrize("cancel_on", ["SweepPoint", "BatchLoss"])
def test_cancel_leaves_no_output(demo_model, demo_arrays, tmp_path, cancel_on):
    from core.repair.pruning import PruneSettings, fine_prune

    valid = demo_arrays[0]
    out = tmp_path / "never.keras"
    job = fine_prune(demo_model, valid.x, valid.y, "255", PruneSettings(count=4, epochs=2), out=out)
    seen = 0
    for event in job:
        if type(event).__name__ == cancel_on:
            seen += 1
            if seen == 3:
                break
    job.close()
    assert seen == 3
    assert list(tmp_path.iterdir()) == []


def test_fine_tune_keeps_masks_and_does_not_modify_input(demo_model, demo_arrays):
    from core.repair.finetune import BatchLoss, EpochMetrics, FineTuneSettings, fine_tune

    valid, test, poisoned = demo_arrays
    kernel_before = demo_model.model.get_layer("conv_3").kernel.numpy().copy()
    mask = np.ones(32, np.float32)
    mask[[0, 5, 7]] = 0
    seen = []

    def transform(xb, yb, rng):
        seen.append(len(xb))
        return xb, yb

    events, result = collect(fine_tune(demo_model.model, valid.x[:256], valid.y[:256], "255",
                                       FineTuneSettings(epochs=2, batch_size=64, augment=True), masks={"conv_3": mask}, transform=transform,
                                       eval_sets={"clean": (test.x, test.y, None), "asr": (poisoned.x, None, TARGET)}))
    assert np.array_equal(demo_model.model.get_layer("conv_3").kernel.numpy(), kernel_before)
    layer = result.model.get_layer("conv_3")
    assert np.all(layer.kernel.numpy()[..., [0, 5, 7]] == 0) and np.all(layer.bias.numpy()[[0, 5, 7]] == 0)
    assert sum(isinstance(e, BatchLoss) for e in events) == 8 and seen == [64] * 8
    epochs = [e for e in events if isinstance(e, EpochMetrics)]
    assert [e.epoch for e in epochs] == [0, 1, 2] and set(epochs[-1].metrics) == {"clean", "asr"}
