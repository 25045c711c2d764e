"""Clean accuracy, attack success and the automatic pixel scale, on the real demo BadNet."""

from __future__ import annotations

import numpy as np
import pytest

from core.intake.data import ArraySource, open_data
from core.evaluate import attack_success_rate, evaluate
from core.jobs import collect, run_job
from core.intake.inference import predict_labels


def test_demo_badnet_is_accurate_and_backdoored(demo_bundle, demo_model):
    events, result = collect(evaluate(demo_model, open_data(demo_bundle.clean_test), open_data(demo_bundle.poisoned_test)))
    assert result.clean_accuracy > 0.85
    assert result.attack_success_rate > 0.8
    assert result.target == demo_bundle.info["target"]
    assert result.n_poisoned == open_data(demo_bundle.poisoned_test).count
    fractions = [e.fraction for e in events if getattr(e, "fraction", None) is not None]
    assert fractions[-1] == 1.0


def test_accuracy_matches_an_independent_computation(demo_model, demo_arrays):
    _, test, _ = demo_arrays
    expected = float(np.mean(demo_model.model.predict(test.x / 255.0, verbose=0).argmax(1) == test.y))
    result = run_job(evaluate(demo_model, ArraySource(test.x, test.y), scale="255"))
    assert result.clean_accuracy == pytest.approx(expected)


def test_clean_control_model_is_not_backdoored(demo_bundle, clean_demo_model):
    result = run_job(evaluate(clean_demo_model, open_data(demo_bundle.clean_test), open_data(demo_bundle.poisoned_test)))
    assert result.attack_success_rate < 0.2


def test_auto_scale_detects_data_stored_in_zero_one(demo_model, demo_arrays, tmp_path):
    """A model trained on x/255 fed data already in [0, 1] must keep it as is."""
    valid, _, _ = demo_arrays
    path = tmp_path / "unit.npz"
    np.savez(path, x=valid.x / 255.0, y=valid.y)
    result = run_job(evaluate(demo_model, open_data(path)))
    assert result.scale == "1"
    assert result.clean_accuracy > 0.85
    wrong = run_job(evaluate(demo_model, open_data(path), scale="255"))
    assert wrong.clean_accuracy < result.clean_accuracy - 0.3


def test_attack_success_with_explicit_target_or_labels():
    predicted = np.array([7, 7, 1, 7])
    assert attack_success_rate(predicted, None, 7) == 0.75
    assert attack_success_rate(predicted, np.array([7, 1, 1, 1]), None) == 0.5


def test_scan_folder_predictions_follow_the_manifest(demo_bundle, demo_model):
    from core.demo import read_manifest

    truth = {row["file"]: row for row in read_manifest(demo_bundle.manifest)}
    files = sorted(demo_bundle.scan_dir.iterdir())
    from core.intake.data import load_arrays

    arrays = load_arrays(open_data(demo_bundle.scan_dir), demo_model.input_shape)
    predicted = predict_labels(demo_model, arrays.x, "255")
    triggered = np.array([truth[p.split("/")[-1]]["triggered"] for p in arrays.sources])
    assert len(files) == len(arrays.sources)
    assert np.mean(predicted[triggered] == demo_bundle.info["target"]) > 0.8
