"""The clean reference model: its score against a numpy forward pass, cross-fitted calibration, saved profiles.

The planted model is one softmax layer on 16 pixels, so its twin (the reference's default architecture) is
softmax(x W + b): the numpy forward pass below.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.detect.input_level import masking
from core.detect.input_level import reference
from core.detect.input_level import scanner
from core.detect import twin  # the twin's size limits live there (the reference detector re-exports them)
from core.detect.input_level.calibration import conservative_threshold
from core.intake.data import ArraySource
from core.errors import DataError
from core.jobs import run_job
from tests.test_scanners import _images, _planted


@pytest.fixture(scope="module")
def planted():
    return _planted()


def _clean(rng: np.random.Generator, n: int) -> np.ndarray:
    """Dim (class 0) and bright (class 2) images without the trigger pixel: the planted model never sends them to 1."""
    return np.concatenate([_images(rng, n // 2, False), _images(rng, n - n // 2, False) + 0.3])


def _numpy_disbelief(weights: list[np.ndarray], x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """-log softmax(x W + b)[t]: the planted model's twin with a fold's weights."""
    w, b = (np.asarray(a, np.float64) for a in weights)
    z = x.reshape(len(x), -1).astype(np.float64) @ w + b
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(x)), t]


@pytest.fixture(scope="module")
def calibrated(planted):
    loaded, _, _ = planted
    split = run_job(_split(loaded, _clean(np.random.default_rng(0), 400)))
    profile = run_job(reference.calibrate_on(loaded, split, reference.ReferenceSettings(classes=(1,))))
    return split, profile


def _split(loaded, x):
    from core.detect.input_level.clean_split import draw_clean_split

    return draw_clean_split(loaded, ArraySource(x, None, "clean"), 0, len(x), 0, "1")


def test_score_is_the_geometric_mean_of_the_references_disbelief_and_the_suspects_certainty(planted, calibrated):
    loaded, _, _ = planted
    _, profile = calibrated
    rng = np.random.default_rng(1)
    x = np.concatenate([_images(rng, 6, False), _images(rng, 6, True)])  # 6 dim clean (class 0), 6 triggered (class 1)
    assert profile.architecture == "twin" and [w.shape for w in profile.weights[0]] == [(16, 3), (3,)]
    scores, probs = reference.suspicion_scores(loaded, profile.networks(loaded), x, (1,), "1")
    sent_to_1 = probs.argmax(axis=1) == 1
    assert sent_to_1.tolist() == [False] * 6 + [True] * 6
    disbelief = np.mean([_numpy_disbelief(w, x, np.ones(len(x), int)) for w in profile.weights], axis=0)
    sure = -np.log(np.asarray(probs, np.float64)[sent_to_1][:, [0, 2]].sum(axis=1))  # what the suspect leaves to the others
    np.testing.assert_allclose(scores[sent_to_1], np.sqrt(disbelief[sent_to_1] * sure), rtol=1e-4)
    assert np.all(scores[~sent_to_1] == 0.0)  # inputs sent elsewhere carry no attack on the suspected class


def test_calibration_is_cross_fitted_and_flags_what_the_clean_references_never_saw(planted, calibrated):
    loaded, _, _ = planted
    split, profile = calibrated
    assert len(profile.weights) == reference.FOLDS and profile.classes == (1,)
    # every clean image is sent to 0 or 2, never to the suspected class: nothing to disbelieve on clean data
    assert np.all(profile.clean_scores == 0.0)
    assert profile.threshold == conservative_threshold(profile.clean_scores, 0.01, 0.95, "high").threshold
    # the references learnt classes 0 and 2 only (the suspect's answers on clean images), so a triggered input that
    # the suspect sends to 1 is one they do not believe: every one is flagged, no clean one is
    triggered = _images(np.random.default_rng(2), 100, True)
    s, _ = profile.score_fn(loaded)(triggered)
    assert np.all(s > profile.threshold) and s.min() > 1.0
    clean, _ = profile.score_fn(loaded)(_clean(np.random.default_rng(3), 300))
    assert np.all(clean <= profile.threshold)


def test_out_of_fold_scores_come_from_the_network_that_did_not_train_on_them(planted):
    """A suspected class the clean images do reach (class 0): each fold's score is that fold's network's disbelief."""
    loaded, _, _ = planted
    split = run_job(_split(loaded, _clean(np.random.default_rng(4), 200)))
    profile = run_job(reference.calibrate_on(loaded, split, reference.ReferenceSettings(classes=(0,), folds=4)))
    x = split.calibration
    probs = np.asarray(loaded.model(x), np.float64)
    sent_to_0 = probs.argmax(axis=1) == 0
    sure = -np.log(probs[:, 1:].sum(axis=1))
    fold = np.arange(len(x)) % 4
    for f, w in enumerate(profile.weights):
        mine = (fold == f) & sent_to_0
        expected = np.sqrt(_numpy_disbelief(w, x[mine], np.zeros(mine.sum(), int)) * sure[mine])
        np.testing.assert_allclose(profile.clean_scores[mine], expected, rtol=1e-4)
    assert np.all(profile.clean_scores[~sent_to_0] == 0.0) and profile.clean_scores[sent_to_0].max() > 0.0


def test_certainty_is_exact_near_one_and_suspicion_needs_both_kinds_of_evidence():
    probs = np.array([[0.9, 0.06, 0.04], [1.0 - 1e-9, 6e-10, 4e-10], [0.2, 0.3, 0.5]], np.float64)
    np.testing.assert_allclose(reference.certainty(probs, np.array([0, 0, 2])), [-np.log(0.1), -np.log(1e-9), -np.log(0.5)])
    assert reference.certainty(np.array([[1.0, 0.0]]), np.array([0]))[0] == pytest.approx(-np.log(1e-12))  # floored, finite
    # a clean image the suspect gets wrong (unsure) and a clean image of the target (believed) both stay low
    np.testing.assert_allclose(reference.suspicion(np.array([9.0, 0.01, 9.0]), np.array([0.1, 9.0, 9.0])), [0.9**0.5, 0.09**0.5, 9.0])


def test_it_needs_suspected_classes_of_this_model_and_enough_clean_images(planted):
    loaded, _, _ = planted
    split = run_job(_split(loaded, _clean(np.random.default_rng(5), 200)))
    with pytest.raises(DataError, match="suspected target classes"):
        run_job(reference.calibrate_on(loaded, split, reference.ReferenceSettings()))
    with pytest.raises(DataError, match="outside this model's classes"):
        run_job(reference.calibrate_on(loaded, split, reference.ReferenceSettings(classes=(7,))))
    small = run_job(_split(loaded, _clean(np.random.default_rng(6), 12)))
    with pytest.raises(DataError, match="at least .* clean images"):
        run_job(reference.calibrate_on(loaded, small, reference.ReferenceSettings(classes=(1,))))


def test_a_saved_reference_profile_scores_the_same_and_hostile_weights_are_refused(planted, tmp_path):
    loaded, _, _ = planted
    triggers = masking.Triggers((1,), np.pad(np.ones((1, 1, 1), np.float32), ((0, 0), (0, 3), (0, 3))), "p" * 64)
    settings = scanner.ScanSettings(method="reference", triggers=triggers, max_clean=300)
    assert settings.frr == pytest.approx(0.01)
    profile = run_job(scanner.calibrate(loaded, ArraySource(_clean(np.random.default_rng(7), 300), None, "clean"), settings, scale="1"))
    path = scanner.save_profile(profile, tmp_path / "ref.npz")
    back = scanner.load_profile(path)
    x = np.concatenate([_images(np.random.default_rng(8), 20, False), _images(np.random.default_rng(9), 20, True)])
    labels, scores, _ = scanner.classify(loaded, back, x)
    np.testing.assert_allclose(scores["reference"], scanner.classify(loaded, profile, x)[1]["reference"], rtol=1e-5)
    assert labels[:20].tolist() == [0] * 20 and labels[20:].tolist() == [3] * 20  # triggered ones into class N

    arrays = dict(np.load(path))
    for name, broken in [("a non-finite weight", {**arrays, "reference__w1_1": np.full_like(arrays["reference__w1_1"], np.nan)}),
                         ("a fold without weights", {k: v for k, v in arrays.items() if not k.startswith("reference__w4_")})]:
        bad = tmp_path / "bad.npz"
        np.savez(bad, **broken)
        with pytest.raises(DataError, match="reference"):
            scanner.load_profile(bad)
    # a profile saved before the score became disbelief x certainty: its threshold is in other units
    meta = json.loads(arrays["metadata"].tobytes())
    del meta["detectors"]["reference"]["score"]
    older = tmp_path / "older.npz"
    np.savez(older, **{**arrays, "metadata": np.frombuffer(json.dumps(meta).encode(), np.uint8)})
    with pytest.raises(DataError, match="earlier TrojanScope .* calibrate again"):
        scanner.load_profile(older)
    # a twin's weights of another shape load (they fit some model) but are refused when scored with this one
    bad = tmp_path / "other.npz"
    np.savez(bad, **{**arrays, "reference__w0_0": np.zeros((3, 3), np.float32)})
    with pytest.raises(DataError, match="do not fit this model"):
        scanner.classify(loaded, scanner.load_profile(bad), x)


def test_a_model_too_large_to_train_five_times_gets_the_small_network(planted, monkeypatch, tmp_path):
    loaded, _, _ = planted
    monkeypatch.setattr(twin, "MAX_TWIN_PARAMS", 10)  # the planted model has 51 weights
    split = run_job(_split(loaded, _clean(np.random.default_rng(10), 300)))
    profile = run_job(reference.calibrate_on(loaded, split, reference.ReferenceSettings(classes=(1,))))
    assert profile.architecture == "small" and len(profile.weights[0]) == 4  # dense 64 + dense 3 (no convolution below 8 px)
    assert any("too many to train" in n for n in profile.notes)
    s, _ = profile.score_fn(loaded)(_images(np.random.default_rng(11), 50, True))
    assert np.all(s > profile.threshold)
    saved = scanner.ScanProfile("reference", {"reference": profile}, 0.01, 0.95)
    path = scanner.save_profile(saved, tmp_path / "small.npz")
    assert scanner.load_profile(path).detectors["reference"].architecture == "small"
    arrays = dict(np.load(path))
    np.savez(tmp_path / "bad.npz", **{**arrays, "reference__w0_0": np.zeros((3, 3), np.float32)})
    with pytest.raises(DataError, match="small reference network"):
        scanner.load_profile(tmp_path / "bad.npz")


def test_multiply_adds_count_convolutions_and_dense_layers_by_hand():
    """Conv 3x3 (3 -> 8 channels, 'same') on 10x12, max-pool to 5x6, depthwise 3x3 'valid' (x2) to 3x4, a nested dense."""
    from core.intake.tf_env import keras

    k = keras()
    inner = k.Sequential([k.Input((192,)), k.layers.Dense(4)])
    x = inp = k.Input((10, 12, 3))
    x = k.layers.Conv2D(8, 3, padding="same")(x)
    x = k.layers.MaxPooling2D()(x)
    x = k.layers.DepthwiseConv2D(3, depth_multiplier=2)(x)
    out = inner(k.layers.Flatten()(x))
    model = k.Model(inp, out)
    expected = 10 * 12 * 9 * 3 * 8 + 3 * 4 * 9 * 8 * 2 + 192 * 4
    assert reference.multiply_adds(model) == expected


def test_a_costly_or_large_input_model_gets_the_small_network_on_pooled_images(planted, monkeypatch):
    loaded, _, _ = planted
    monkeypatch.setattr(twin, "MAX_TWIN_MACS", 10)  # the planted model does 48 multiply-adds per image
    assert reference.multiply_adds(loaded.model) == 48 and reference.architecture_for(loaded) == "small"
    monkeypatch.setattr(twin, "MAX_TWIN_MACS", 48)
    assert reference.architecture_for(loaded) == "twin"
    big = reference.small_network((224, 200, 3), 10, "255", 0)
    pooled = [layer for layer in big.layers if type(layer).__name__ == "AveragePooling2D"]
    assert len(pooled) == 1 and pooled[0].output.shape[1:3] == (56, 50)  # averaged by 4 down to <= 64 px a side
    assert reference.multiply_adds(big) < 20_000_000


def test_random_warps_bend_each_image_smoothly_and_keep_its_shape():
    rng = np.random.default_rng(0)
    x = np.random.default_rng(1).uniform(0, 1, (6, 28, 20, 3)).astype(np.float32)
    same = reference.random_warps(x, rng, shift=0.0)
    np.testing.assert_allclose(same, x, atol=1e-6)  # no displacement: the images themselves
    warped = reference.random_warps(x, np.random.default_rng(2))
    again = reference.random_warps(x, np.random.default_rng(2))
    assert warped.shape == x.shape and warped.dtype == np.float32 and np.array_equal(warped, again)  # seeded
    assert np.all([not np.allclose(warped[i], x[i], atol=1e-3) for i in range(len(x))])  # each image is bent...
    assert np.all([not np.allclose(warped[0], warped[i], atol=1e-3) for i in range(1, len(x))])  # ...by its own field
    # a bend of at most a pixel or two: a vertical edge moves by a few columns, never across the image
    edge = np.zeros((50, 28, 28, 1), np.float32)
    edge[..., 14:, :] = 1.0
    moved = reference.random_warps(edge, np.random.default_rng(3))
    assert moved.shape == edge.shape
    first_bright = np.argmax(moved[..., 0] > 0.5, axis=2)  # per row
    assert first_bright.min() >= 14 - 6 and first_bright.max() <= 14 + 6 and np.any(first_bright != 14)
