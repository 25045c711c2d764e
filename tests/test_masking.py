"""Reversed-trigger masking: its score against hand computation, its calibration, combined with it, the triggers file, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.detect.input_level import masking
from core.detect.input_level import scanner
from core.detect.input_level import strip
from core.detect.input_level.calibration import conservative_threshold
from core.intake.data import ArraySource
from core.errors import DataError
from core.jobs import run_job
from tests.test_scanners import SHAPE, _images, _numpy_probs, _planted

# Class 1 of the planted model answers to a bright pixel (0, 0): the reversed trigger of class 1.
TRIGGER = np.zeros((1,) + SHAPE[:2], np.float32)
TRIGGER[0, 0, 0] = 0.93


@pytest.fixture(scope="module")
def planted():
    return _planted()


def _triggers() -> masking.Triggers:
    return masking.Triggers((1,), TRIGGER.copy(), "p" * 64, "hand-made")


def test_score_is_the_fall_of_the_targets_log_probability_once_the_region_takes_the_fill(planted):
    loaded, w, b = planted
    x = np.concatenate([_images(np.random.default_rng(0), 5, False), _images(np.random.default_rng(1), 5, True)])
    fill = np.full(SHAPE, 0.25, np.float32)
    scores, probs = masking.drop_scores(loaded, x, (1,), TRIGGER > 0.5, fill, "1")
    before = _numpy_probs(w, b, x)
    replaced = x.copy()
    replaced[:, 0, 0] = 0.25
    expected = np.log(before[:, 1]) - np.log(_numpy_probs(w, b, replaced)[:, 1])
    sent_to_1 = before.argmax(1) == 1
    np.testing.assert_allclose(probs, before, atol=1e-5)
    np.testing.assert_allclose(scores[sent_to_1], expected[sent_to_1], rtol=1e-3)
    assert np.all(scores[~sent_to_1] == 0.0)  # inputs the model sends elsewhere carry no attack on class 1
    assert sent_to_1.tolist() == [False] * 5 + [True] * 5 and scores[5:].min() > 5.0


def test_calibration_flags_the_triggered_inputs_and_holds_its_frr(planted):
    loaded, _, _ = planted
    rng = np.random.default_rng(2)
    clean = np.concatenate([_images(rng, 500, False), _images(rng, 100, False) + 0.3])  # dim (class 0) and bright (class 2)
    settings = scanner.ScanSettings(method="masking", triggers=_triggers(), max_clean=600)
    profile = run_job(scanner.calibrate(loaded, ArraySource(clean, None, "clean"), settings, scale="1"))
    det = profile.detectors["masking"]
    assert det.frr == pytest.approx(0.01) and det.classes == (1,)
    assert det.threshold == conservative_threshold(det.clean_scores, 0.01, 0.95, "high").threshold
    np.testing.assert_allclose(det.fill, np.median(clean, axis=0), atol=1e-6)  # what clean images have there
    labels, _scores, _pred = scanner.classify(loaded, profile, _images(rng, 200, True))
    assert np.all(labels == 3)  # every triggered input flagged into class N
    labels, _scores, _pred = scanner.classify(loaded, profile, _images(rng, 300, False))
    assert np.mean(labels == 3) <= 0.03


def test_combined_takes_the_targeted_detectors_with_triggers_at_one_percent_per_detector_and_round_trips(planted, tmp_path):
    loaded, _, _ = planted
    rng = np.random.default_rng(3)
    clean = np.concatenate([_images(rng, 400, False), _images(rng, 200, False) + 0.3])
    settings = scanner.ScanSettings(triggers=_triggers(), strip=strip.StripSettings(n_overlays=16), max_clean=600)
    targeted = ("masking", "target_features", "reference")
    assert settings.frr == pytest.approx(0.06) and settings.detectors() == scanner.COMBINED + targeted  # 1% per detector
    assert scanner.ScanSettings().detectors() == scanner.COMBINED  # without triggers, as before
    profile = run_job(scanner.calibrate(loaded, ArraySource(clean, None, "clean"), settings, scale="1"))
    assert list(profile.detectors) == list(scanner.COMBINED + targeted)
    for det in profile.detectors.values():
        assert det.frr == pytest.approx(0.01) and det.confidence == pytest.approx(1 - 0.05 / 6)
    assert profile.detectors["target_features"].targets == (1,) == profile.detectors["reference"].classes
    back = scanner.load_profile(scanner.save_profile(profile, tmp_path / "c.npz"))
    assert list(back.detectors) == list(profile.detectors)
    assert back.detectors["target_features"].targets == (1,)
    np.testing.assert_array_equal(back.detectors["masking"].regions, profile.detectors["masking"].regions)
    x = np.concatenate([_images(rng, 30, False), _images(rng, 30, True)])
    labels, scores, _ = scanner.classify(loaded, back, x)
    np.testing.assert_array_equal(labels, scanner.classify(loaded, profile, x)[0])
    assert labels[30:].tolist() == [3] * 30  # every triggered input into class N
    # the targeted feature detector scores only inputs sent to the suspected class: the same distance as untargeted there
    sent_to_1 = np.asarray(loaded.model(x)).argmax(axis=1) == 1
    assert np.all(scores["target_features"][~sent_to_1] == 0.0)
    np.testing.assert_allclose(scores["target_features"][sent_to_1], scores["features"][sent_to_1])


def test_triggers_file_round_trips_and_hostile_or_foreign_ones_are_refused(planted, tmp_path, monkeypatch):
    loaded, _, _ = planted
    path = masking.save_triggers(_triggers(), tmp_path / "t.npz")
    back = masking.load_triggers(path)
    assert back.classes == (1,) and back.model_sha256 == "p" * 64
    np.testing.assert_array_equal(back.masks, TRIGGER)

    np.savez(tmp_path / "pickled.npz", masks=np.array([{"x": 1}], dtype=object), metadata=np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="not a readable reversed-triggers file"):
        masking.load_triggers(tmp_path / "pickled.npz")
    small = tmp_path / "inflating.npz"
    masking.save_triggers(masking.Triggers((1,), np.zeros((1, 64, 64), np.float32)), small)  # 16 KiB of masks, compressed
    assert small.stat().st_size < 2000
    monkeypatch.setattr(masking, "MAX_TRIGGERS_BYTES", 4000)  # what the arrays may inflate to, not just the file size
    with pytest.raises(DataError, match="declare .* in all, over the limit"):
        masking.load_triggers(small)
    monkeypatch.undo()
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(DataError, match="not a reversed-triggers file"):
        masking.load_triggers(tmp_path / "text.npz")
    with pytest.raises(DataError, match="does not exist"):
        masking.load_triggers(tmp_path / "missing.npz")

    clean = ArraySource(_images(np.random.default_rng(4), 50, False), None, "clean")
    foreign = masking.Triggers((1,), np.ones((1, 8, 8), np.float32))
    with pytest.raises(DataError, match="another model"):
        run_job(scanner.calibrate(loaded, clean, scanner.ScanSettings(method="masking", triggers=foreign), scale="1"))
    out_of_range = masking.Triggers((7,), TRIGGER.copy())
    with pytest.raises(DataError, match="outside this model"):
        run_job(scanner.calibrate(loaded, clean, scanner.ScanSettings(method="masking", triggers=out_of_range), scale="1"))
    with pytest.raises(DataError, match="run Neural Cleanse") as raised:
        run_job(scanner.calibrate(loaded, clean, scanner.ScanSettings(method="masking"), scale="1"))
    assert raised.value.fixed_by == ("triggers",)  # the CLI names its --triggers flag


def test_cli_cleanse_saves_the_verdicts_trigger_and_scan_masks_it(tmp_path, capsys):
    """The one-pixel BadNet of tests/planted.py: `cleanse --save-triggers` then `scan --triggers --method masking`."""
    import cli
    from tests.planted import CLASSES, H, PLANTED, W, save_linear_model

    model = tmp_path / "planted.keras"
    save_linear_model(model)
    rng = np.random.default_rng(0)
    y = rng.integers(0, CLASSES, 400)
    x = rng.uniform(0, 0.15, (400, H, W, 1)).astype(np.float32)
    for i, k in enumerate(y):
        x[i, 2 * k : 2 * k + 2] = rng.uniform(0.6, 1.0, (2, W, 1))
    x[:, 12, 11] = 0.0
    np.savez(tmp_path / "clean.npz", x=x, y=y)
    poisoned = x[y != PLANTED][:60].copy()
    poisoned[:, 12, 11] = 1.0
    np.savez(tmp_path / "poisoned.npz", x=poisoned, y=np.full(len(poisoned), PLANTED))

    trig = tmp_path / "triggers.npz"
    code = cli.main(["cleanse", "--model", str(model), "--clean", str(tmp_path / "clean.npz"), "--scale", "1", "--rounds", "20",
                     "--save-triggers", str(trig), "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    judged = json.loads(out)  # strict JSON: MM-BD's point-mass null (every other margin equal) once wrote Infinity
    assert PLANTED in judged["targets"] and judged["triggers_file"] == str(trig)
    assert judged["mmbd"]["gamma_null"]["shape"] is None
    saved = masking.load_triggers(trig)
    assert PLANTED in saved.classes
    mask = saved.masks[saved.classes.index(PLANTED)]
    assert np.unravel_index(mask.argmax(), mask.shape) == (12, 11)

    code = cli.main(["scan", "--method", "masking", "--model", str(model), "--clean", str(tmp_path / "clean.npz"), "--scale", "1",
                     "--triggers", str(trig), "--scan", str(tmp_path / "poisoned.npz"), "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    scanned = json.loads(out)
    assert scanned["detectors"] == ["masking"] and scanned["scanned"] == 60
    assert scanned["flagged"] == 60 and all(r["label"] == CLASSES for r in scanned["results"])

    code = cli.main(["scan", "--model", str(model), "--profile", str(trig), "--triggers", str(trig),
                     "--scan", str(tmp_path / "poisoned.npz"), "--json", "--quiet"])
    _out, err = capsys.readouterr()
    assert code != 0 and "--triggers is used when calibrating" in err and "Traceback" not in err


def test_a_scan_profile_whose_masking_arrays_do_not_fit_is_refused(planted, tmp_path):
    import io

    loaded, _, _ = planted
    clean = ArraySource(_images(np.random.default_rng(5), 400, False), None, "clean")
    profile = run_job(scanner.calibrate(loaded, clean, scanner.ScanSettings(method="masking", triggers=_triggers()), scale="1"))
    path = scanner.save_profile(profile, tmp_path / "m.npz")
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for key, bad in (("masking__regions", np.ones((1, 9, 9), np.uint8)), ("masking__fill", np.full(SHAPE, np.nan, np.float32))):
        np.savez(tmp_path / "bad.npz", **{**arrays, key: bad})
        with pytest.raises(DataError, match="masking: 'classes', 'regions'"):
            scanner.load_profile(tmp_path / "bad.npz")


def test_cli_masking_without_triggers_names_the_flag(tmp_path, capsys):
    import cli
    from tests.planted import H, W, save_linear_model

    save_linear_model(tmp_path / "m.keras")
    np.savez(tmp_path / "clean.npz", x=np.random.default_rng(0).uniform(0, 1, (50, H, W, 1)).astype(np.float32))
    code = cli.main(["scan", "--method", "masking", "--model", str(tmp_path / "m.keras"), "--clean", str(tmp_path / "clean.npz"),
                     "--scale", "1", "--save-profile", str(tmp_path / "p.npz"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "run Neural Cleanse" in err and err.strip().endswith("(--triggers)") and not (tmp_path / "p.npz").exists()
