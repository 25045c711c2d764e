"""SCALE-UP, TeCo and the combined scanner: their maths on a planted model, profiles, the scan CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.detect.input_level import scaleup
from core.detect.input_level import scanner
from core.detect.input_level import strip
from core.detect.input_level import teco
from core.detect.input_level.calibration import conservative_threshold
from core.intake.data import ArraySource, open_data
from core.errors import DataError
from core.jobs import collect, run_job

SHAPE = (4, 4, 1)  # pixel 0 is the trigger; the other 15 set the "digit"


def _planted():
    """3 classes on [0, 1] inputs. Class 1 answers to a bright pixel 0 (the backdoor);
    otherwise the mean m of the other pixels decides: dim images are class 0, bright ones class 2,
    so amplifying a clean image flips it, while the trigger keeps class 1."""
    from core.intake.models import LoadedModel, ModelSummary
    from core.intake.tf_env import keras

    k = keras()
    inputs = k.Input(SHAPE)
    dense = k.layers.Dense(3, activation="softmax")
    model = k.Model(inputs, dense(k.layers.Flatten()(inputs)))
    w = np.zeros((16, 3), np.float32)
    w[1:, 0], w[1:, 2] = -20 / 15, 20 / 15  # logit0 = 20 (0.5 - m), logit2 = 20 (m - 0.5)
    w[0, 1] = 40.0  # logit1 = 40 (t - 0.5)
    dense.set_weights([w, np.array([10.0, -20.0, -10.0], np.float32)])
    return LoadedModel(model, ModelSummary("planted", "keras", SHAPE, 3, (), 51, None, "p" * 64)), w, np.array([10.0, -20.0, -10.0])


def _images(rng, n, triggered):
    x = rng.uniform(0.2, 0.4, (n,) + SHAPE).astype(np.float32) * rng.uniform(0.8, 1.2, (n, 1, 1, 1)).astype(np.float32)  # m ~ 0.24-0.36
    x[:, 0, 0, 0] = 1.0 if triggered else 0.0
    return x


def _numpy_probs(w, b, x):
    z = x.reshape(len(x), -1).astype(np.float64) @ w + b
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def planted():
    return _planted()


def test_spc_is_the_mean_probability_of_the_own_class_over_clipped_amplifications(planted):
    loaded, w, b = planted
    x = np.concatenate([_images(np.random.default_rng(0), 5, False), _images(np.random.default_rng(1), 5, True)])
    spc, base = scaleup.spc_scores(loaded, x, (3.0, 5.0), "1", 1.0)
    own = _numpy_probs(w, b, x).argmax(1)
    expected = np.mean([_numpy_probs(w, b, np.clip(x * f, 0, 1))[np.arange(10), own] for f in (3.0, 5.0)], axis=0)
    np.testing.assert_allclose(spc, expected, atol=1e-4)
    np.testing.assert_allclose(base, _numpy_probs(w, b, x), atol=1e-5)
    assert spc[5:].min() > 0.9 > 0.1 > spc[:5].max()  # the trigger survives amplification, the digit does not


def test_scaleup_calibration_flags_the_planted_trigger_and_holds_its_frr(planted):
    loaded, _, _ = planted
    rng = np.random.default_rng(2)
    clean = _images(rng, 600, False)
    profile = run_job(scaleup.calibrate(loaded, ArraySource(clean, None, "clean"), scaleup.ScaleUpSettings(frr=0.02), scale="1"))
    assert profile.threshold == conservative_threshold(profile.clean_scores, 0.02, 0.95, "high").threshold
    fresh_clean, triggered = _images(rng, 400, False), _images(rng, 400, True)
    assert np.mean(scaleup.spc_scores(loaded, triggered, profile.factors, "1", 1.0)[0] > profile.threshold) == 1.0
    assert np.mean(scaleup.spc_scores(loaded, fresh_clean, profile.factors, "1", 1.0)[0] > profile.threshold) <= 0.03


def test_transition_severity_is_the_first_changed_level_or_six():
    changed = np.zeros((2, 3, 5), bool)
    changed[0, 0, 2:] = True  # changes at severity 3
    changed[0, 1, 0] = True  # at 1
    changed[1, 2, 4] = True  # at 5; the rest never
    np.testing.assert_array_equal(teco.transition_severities(changed), [[3, 1, 6], [6, 6, 5]])


def test_teco_score_is_the_std_of_transition_severities_checked_against_a_plain_loop(planted):
    loaded, w, b = planted
    x = np.concatenate([_images(np.random.default_rng(3), 4, False), _images(np.random.default_rng(4), 4, True)])
    score, _ = teco.teco_scores(loaded, x, "1", 1.0, seed=7)
    own = _numpy_probs(w, b, x).argmax(1)
    firsts, kept = [], []
    for kind in teco.CORRUPTIONS:
        probs = [_numpy_probs(w, b, teco.corrupt(x, kind, s, 7)) for s in range(1, 6)]
        first = np.full(len(x), 6)
        for s in range(5, 0, -1):
            first = np.where(probs[s - 1].argmax(1) != own, s, first)
        firsts.append(first)
        kept.append(np.mean([p[np.arange(len(x)), own] for p in probs], axis=0))
    expected = np.std(firsts, axis=0) + teco.TIE_BREAK * np.std(kept, axis=0)
    np.testing.assert_allclose(score, expected, atol=1e-3)


def test_corruptions_are_deterministic_in_range_and_grow_with_severity():
    x = np.random.default_rng(0).uniform(0, 1, (3, 8, 8, 1)).astype(np.float32)
    for kind in teco.CORRUPTIONS:
        outs = [teco.corrupt(x, kind, s, 0) for s in range(1, 6)]
        assert all(o.shape == x.shape and o.min() >= 0 and o.max() <= 1 for o in outs), kind
        np.testing.assert_array_equal(outs[0], teco.corrupt(x, kind, 1, 0))
        dist = [np.abs(o - x).mean() for o in outs]
        assert dist[-1] >= dist[0], kind


@pytest.fixture(scope="module")
def combined(demo_model, demo_bundle):
    settings = scanner.ScanSettings(method="combined", frr=0.03, strip=strip.StripSettings(n_overlays=16), max_clean=300)
    return run_job(scanner.calibrate(demo_model, open_data(demo_bundle.clean_valid), settings, scale="255"))


def test_combined_splits_the_frr_between_detectors_and_flags_if_either_does(combined, demo_model, demo_arrays):
    assert list(combined.detectors) == list(scanner.COMBINED)
    d = len(scanner.COMBINED)
    for det in combined.detectors.values():
        assert det.frr == pytest.approx(0.03 / d) and det.confidence == pytest.approx(1 - 0.05 / d)
        assert det.threshold == conservative_threshold(det.scores, 0.03 / d, 1 - 0.05 / d, det.tail).threshold
    x = np.concatenate([demo_arrays[1].x[:40], demo_arrays[2].x[:40]])
    labels, scores, predicted = scanner.classify(demo_model, combined, x)
    either = np.zeros(len(x), bool)
    for name, det in combined.detectors.items():
        either |= scores[name] < det.threshold if det.tail == "low" else scores[name] > det.threshold
    np.testing.assert_array_equal(labels == 10, either)
    np.testing.assert_array_equal(labels[~either], predicted[~either])
    assert combined.frr_estimate().bound <= sum(d.frr_estimate().bound for d in combined.detectors.values()) + 1e-12


def test_scan_profile_round_trip_keeps_the_method_and_strip_profiles_load_as_strip(combined, demo_model, demo_arrays, tmp_path):
    path = scanner.save_profile(combined, tmp_path / "c.npz")
    back = scanner.load_profile(path)
    assert back.method == "combined" and list(back.detectors) == list(combined.detectors)
    x = demo_arrays[2].x[:20]
    np.testing.assert_array_equal(scanner.classify(demo_model, back, x)[0], scanner.classify(demo_model, combined, x)[0])
    sp = strip.save_profile(combined.detectors["strip"], tmp_path / "s.npz")
    assert scanner.load_profile(sp).method == "strip"
    with pytest.raises(DataError, match="not a scan profile"):
        np.savez(tmp_path / "d.npz", x=np.zeros(3))
        scanner.load_profile(tmp_path / "d.npz")


def test_a_combined_profile_saved_before_scaleup_joined_loads_with_its_own_two_detectors(combined, demo_model, demo_arrays, tmp_path):
    older = scanner.ScanProfile("combined", {k: combined.detectors[k] for k in ("strip", "features")}, 0.02, 0.95)
    back = scanner.load_profile(scanner.save_profile(older, tmp_path / "old.npz"))
    assert list(back.detectors) == ["strip", "features"]
    x = np.concatenate([demo_arrays[1].x[:20], demo_arrays[2].x[:20]])
    np.testing.assert_array_equal(scanner.classify(demo_model, back, x)[0], scanner.classify(demo_model, older, x)[0])


def test_the_default_frr_is_one_percent_per_detector():
    assert scanner.ScanSettings().method == "combined" and len(scanner.COMBINED) == 3
    assert scanner.ScanSettings().frr == pytest.approx(0.03)
    assert scanner.ScanSettings(method="strip").frr == pytest.approx(0.01)
    assert scanner.ScanSettings(method="features", frr=0.05).frr == 0.05


def test_scan_streams_rows_with_every_detectors_score(combined, demo_model, demo_arrays):
    source = ArraySource(demo_arrays[2].x[:30], None, "poisoned")
    events, result = collect(scanner.scan(demo_model, combined, source, step=8))
    streamed = [r for e in events if isinstance(e, scanner.ScannerRows) for r in e.rows]
    assert len(streamed) == len(result.rows) == 30
    row = result.as_dict()["results"][0]
    assert set(row["scores"]) == set(scanner.COMBINED) and row["entropy"] == row["scores"]["strip"]
    assert all((r.label == 10) == r.flagged for r in result.rows)


def test_cli_scan_json_keys_and_classify_applies_the_saved_method(capsys, demo_bundle, tmp_path):
    import cli
    from core.demo import read_manifest

    prof = tmp_path / "scan.npz"
    code = cli.main(["scan", "--method", "scaleup", "--model", str(demo_bundle.model), "--clean", str(demo_bundle.clean_valid),
                     "--frr", "0.03", "--scan", str(demo_bundle.scan_dir), "--save-profile", str(prof), "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    for key in ("threshold", "frr", "num_classes", "scanned", "flagged", "results", "skipped", "method", "frr_estimate"):
        assert key in result, key
    assert result["method"] == "scaleup" and isinstance(result["threshold"], float)
    assert result["scanned"] == len(read_manifest(demo_bundle.manifest))
    lo, hi = result["frr_estimate"]["interval"]
    assert lo <= result["frr_estimate"]["expected"] <= hi
    files = [str(demo_bundle.scan_dir / m["file"]) for m in read_manifest(demo_bundle.manifest)[:6]]
    code = cli.main(["classify", "--model", str(demo_bundle.model), "--profile", str(prof), "--json", "--quiet", *files])
    out, err = capsys.readouterr()
    assert code == 0, err
    classified = json.loads(out)
    assert classified["method"] == "scaleup"
    by_source = {r["source"]: r["label"] for r in result["results"]}
    assert [r["label"] for r in classified["results"]] == [by_source[f] for f in files]


def test_mahalanobis_matches_scipy_with_the_shrunk_shared_covariance():
    from scipy.spatial.distance import mahalanobis

    from core.detect.input_level import features

    rng = np.random.default_rng(5)
    feats = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 4))
    classes = rng.integers(0, 3, 300)
    feats[classes == 1] += 3.0
    g = features.fit_gaussians(feats, classes, 3)
    means = np.stack([feats[classes == k].mean(0) for k in range(3)])
    centred = feats - means[classes]
    cov = np.cov(centred.T)
    shrunk = (1 - features.SHRINK) * cov + features.SHRINK * np.trace(cov) / 4 * np.eye(4)
    vi = np.linalg.inv(shrunk)
    probe, cls = rng.normal(size=(5, 4)), np.array([0, 1, 2, 1, 0])
    expected = [mahalanobis(p, means[c], vi) for p, c in zip(probe, cls)]
    np.testing.assert_allclose(g.distances(probe, cls), expected, rtol=1e-6)


def test_cross_fitted_scores_are_out_of_sample():
    from core.detect.input_level import features

    rng = np.random.default_rng(6)
    feats, classes = rng.normal(size=(200, 3)), rng.integers(0, 2, 200)
    scores = features.cross_fitted_scores(feats, classes, 2, folds=4)
    held = np.arange(200) % 4 == 1
    g = features.fit_gaussians(feats[~held], classes[~held], 2)
    np.testing.assert_allclose(scores[held], g.distances(feats[held], classes[held]))
    in_sample = features.fit_gaussians(feats, classes, 2).distances(feats, classes)
    assert np.median(scores) > np.median(in_sample)  # why cross-fitting: in-sample distances are optimistic


def test_feature_detector_flags_the_planted_trigger(planted):
    from core.detect.input_level import features

    loaded, _, _ = planted
    rng = np.random.default_rng(8)
    profile = run_job(features.calibrate(loaded, ArraySource(_images(rng, 600, False), None, "clean"), features.FeatureSettings(frr=0.02), scale="1"))
    score = profile.score_fn(loaded)
    assert np.all(score(_images(rng, 200, True))[0] > profile.threshold)
    assert np.mean(score(_images(rng, 400, False))[0] > profile.threshold) <= 0.03


def test_feature_space_on_the_targets_spends_the_budget_on_inputs_sent_to_them(planted):
    """Same cross-fitted distances, zero outside the targets: the threshold is the targets' own tail, not everyone's."""
    from core.detect.input_level import features
    from core.detect.input_level.clean_split import draw_clean_split

    loaded, _, _ = planted
    rng = np.random.default_rng(9)
    clean = np.concatenate([_images(rng, 300, False), _images(rng, 300, False) + 0.3])  # class 0 and class 2
    split = run_job(draw_clean_split(loaded, ArraySource(clean, None, "clean"), 0, 600, 0, "1"))
    every = run_job(features.calibrate_on(loaded, split, features.FeatureSettings()))
    mine = run_job(features.calibrate_on(loaded, split, features.FeatureSettings(), targets=(2,)))
    sent_to_2 = np.asarray(loaded.model(split.calibration)).argmax(axis=1) == 2
    assert 200 < sent_to_2.sum() < 400
    np.testing.assert_allclose(mine.clean_scores, np.where(sent_to_2, every.clean_scores, 0.0))
    assert mine.threshold == conservative_threshold(mine.clean_scores, 0.01, 0.95, "high").threshold
    assert mine.threshold < every.threshold  # a lower rank of class 2's distances than of all of them
    assert isinstance(mine, features.TargetFeatureProfile) and mine.targets == (2,)
    with pytest.raises(DataError, match="outside this model's classes"):
        run_job(features.calibrate_on(loaded, split, features.FeatureSettings(), targets=(5,)))
