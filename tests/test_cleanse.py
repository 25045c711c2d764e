"""Neural Cleanse and unlearning: the statistics by hand, a planted backdoor, the demo BadNet, cancel, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.detect.model_level.cleanse import CleanseSettings, anomaly_indices, cleanse, flag_classes
from core.detect.model_level.verdict import BACKDOORED, NO_EVIDENCE, from_label_specific
from core.intake.data import Arrays
from core.jobs import collect, run_job
from tests.planted import CLASSES, H, PLANTED, W, save_all_to_all_model, save_linear_model

# A few rounds and few classes keep these tests to seconds; the defaults are measured in bench/.
FAST = CleanseSettings(max_rounds=20, init_cost=1e-2, patience=2, early_stop_patience=4, seed=0)


def test_anomaly_index_matches_hand_computation():
    norms = {0: 10.0, 1: 50.0, 2: 55.0, 3: 60.0, 4: 65.0, 5: 200.0}
    # median = (55 + 60) / 2 = 57.5; |deviations| = 47.5, 7.5, 2.5, 2.5, 7.5, 142.5
    # their median = 7.5; MAD = 1.4826 * 7.5 = 11.1195
    indices, median, mad = anomaly_indices(norms)
    assert median == 57.5
    assert mad == pytest.approx(11.1195)
    assert indices[0] == pytest.approx(47.5 / 11.1195)  # 4.2718
    assert indices[5] == pytest.approx(142.5 / 11.1195)  # 12.815: anomalous, but LARGE
    assert indices[2] == pytest.approx(2.5 / 11.1195)
    assert flag_classes(norms, indices, median) == [0]  # only the abnormally small one


def test_anomaly_index_with_equal_norms_flags_nothing():
    indices, median, mad = anomaly_indices({0: 5.0, 1: 5.0, 2: 5.0})
    assert mad == pytest.approx(0.25) and set(indices.values()) == {0.0}  # the spread floor: 5% of the median
    assert flag_classes({0: 5.0, 1: 5.0, 2: 5.0}, indices, median) == []


def test_nearly_equal_norms_are_not_an_outlier():
    """Six one-class triggers of 12.1-12.7 px (a label-specific backdoor): the raw MAD is 0.07 px and would
    put the smallest 4.4 deviations out; the spread floor (5% of the median) keeps it within 2."""
    norms = {0: 12.42, 1: 12.48, 2: 12.41, 3: 12.39, 4: 12.68, 5: 12.11}
    # median = (12.41 + 12.42) / 2 = 12.415; |deviations| 0.005 ... 0.305, their median 0.045;
    # 1.4826 * 0.045 = 0.0667 < 0.05 * 12.415 = 0.62075, the floor
    indices, median, mad = anomaly_indices(norms)
    assert median == pytest.approx(12.415) and mad == pytest.approx(0.62075)
    assert indices[5] == pytest.approx(0.305 / 0.62075)
    assert flag_classes(norms, indices, median) == []


def _planted_images(n: int, seed: int = 0) -> Arrays:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = rng.uniform(0, 0.1, (n, H, W, 1)).astype(np.float32)
    x[:, 12] = 0.0  # the trigger pixel is dark on clean images
    for i, k in enumerate(y):
        x[i, 2 * k : 2 * k + 2] = 0.5
    return Arrays(x, y, [], [])


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from core.intake.models import load_model

    path = tmp_path_factory.mktemp("planted") / "planted.keras"
    save_linear_model(path)
    return load_model(path)


def test_planted_one_pixel_backdoor_is_flagged_on_its_class(planted):
    data = _planted_images(300)
    _events, result = collect(cleanse(planted, data, "1", FAST))
    assert result.verdict == "backdoored"
    assert result.flagged_classes == [PLANTED]
    trigger = result.triggers[PLANTED]
    assert trigger.norm < 2.0  # one pixel (a mask value of ~0.5 already flips it)
    assert np.unravel_index(np.argmax(trigger.mask), trigger.mask.shape) == (12, 11)
    natural = [result.norms[c] for c in range(CLASSES) if c != PLANTED]
    assert min(natural) > 5 * trigger.norm
    # one target: moving 95% of the images off their class needs more than the one-class trigger
    # (the planted class's own images do not move with it), so the label-specific step sees no shortcut
    assert result.label_specific.ratio > 1.0
    assert from_label_specific(result).level == NO_EVIDENCE


@pytest.fixture(scope="module")
def all_to_all(tmp_path_factory):
    """The planted all-to-all model and Neural Cleanse's result on it."""
    from core.intake.models import load_model

    path = tmp_path_factory.mktemp("all_to_all") / "all_to_all.keras"
    save_all_to_all_model(path)
    loaded = load_model(path)
    return loaded, run_job(cleanse(loaded, _planted_images(300), "1", FAST))


def test_label_specific_step_finds_a_planted_all_to_all_backdoor(all_to_all):
    loaded, result = all_to_all
    data = _planted_images(300)
    assert np.all(loaded.model.predict(data.x, verbose=0).argmax(1) == data.y)  # a sound classifier on clean images
    found = result.label_specific
    assert found.trigger.reached and found.moved >= 0.95
    assert found.destinations == {k: (k + 1) % CLASSES for k in range(CLASSES)}  # y -> y + 1, read back from the model
    assert np.unravel_index(np.argmax(found.trigger.mask), found.trigger.mask.shape) == (12, 11)
    assert found.trigger.norm < 2.0 and found.ratio < 0.3  # every one-class trigger must repaint rows of pixels
    assert found.hub_share == pytest.approx(1 / CLASSES)
    evidence = from_label_specific(result)
    assert evidence.level == BACKDOORED and evidence.classes == ()
    assert result.as_dict()["label_specific"]["destinations"] == {str(k): (k + 1) % CLASSES for k in range(CLASSES)}


def test_screening_keeps_the_planted_class_among_few_candidates(planted):
    data = _planted_images(200)
    settings = CleanseSettings(**{**FAST.__dict__, "candidates": 2})
    result = run_job(cleanse(planted, data, "1", settings))
    assert PLANTED in result.candidates and len(result.candidates) == 2
    assert len(result.screened_out) == CLASSES - 2
    assert "batched gradient steps" in result.screening["method"]
    assert result.label_specific is None  # step 4 needs every class's one-class trigger


def test_cleanse_yields_often_and_stops_when_closed(planted):
    job = cleanse(planted, _planted_images(100), "1", FAST)
    events = [next(job) for _ in range(5)]
    job.close()  # how Cancel works: nothing is written, nothing keeps running
    assert events and all(e is not None for e in events)


def test_demo_badnet_is_flagged_with_its_target(demo_model, demo_arrays, demo_bundle):
    clean_valid = demo_arrays[0]
    settings = CleanseSettings(max_rounds=30, seed=0)
    result = run_job(cleanse(demo_model, clean_valid, "255", settings))
    assert result.verdict == "backdoored"
    assert demo_bundle.info["target"] in result.flagged_classes
    assert from_label_specific(result).level == NO_EVIDENCE  # one target: no label-dependent shortcut


def test_demo_clean_control_is_judged_clean(clean_demo_model, demo_arrays):
    result = run_job(cleanse(clean_demo_model, demo_arrays[0], "255", CleanseSettings(max_rounds=30, seed=0)))
    assert from_label_specific(result).level == NO_EVIDENCE and result.label_specific.ratio > 1.0
    assert result.verdict == "clean", result.anomaly_index


# ------------------------------------------------------------------ repair


@pytest.fixture(scope="module")
def demo_verdict(demo_model, demo_arrays):
    """Class 7 alone, reverse-engineered quickly: enough to unlearn."""
    return run_job(cleanse(demo_model, demo_arrays[0], "255", CleanseSettings(max_rounds=30, seed=0), classes=[7]))


def test_unlearning_removes_the_demo_backdoor_and_saves_atomically(demo_model, demo_arrays, demo_verdict, tmp_path):
    from core.repair.repair import RepairSettings, repair

    clean, _test, poisoned = demo_arrays
    out = tmp_path / "repaired.keras"
    result = run_job(repair(demo_model, clean.x, clean.y, "255", RepairSettings(classes=(7,), restarts=1), verdict=demo_verdict,
                            x_poisoned=poisoned.x, y_poisoned=poisoned.y, out=out))
    assert result.before.attack_success_rate > 0.8
    assert result.after.attack_success_rate < 0.1
    assert result.after.clean_accuracy >= result.before.clean_accuracy - 0.05
    record = json.loads((tmp_path / "repaired.keras.json").read_text())
    assert record["method"] == "unlearn" and record["flagged_classes"] == [7] and record["saved"] == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repaired.keras", "repaired.keras.json"]


def test_unlearning_the_label_specific_trigger_keeps_stamped_images_in_their_class(all_to_all):
    from core.repair.repair import RepairSettings, repair

    loaded, verdict = all_to_all
    assert verdict.flagged_classes == []  # no single class stands out: only step 4 saw the backdoor
    data = _planted_images(400, seed=1)
    settings = RepairSettings(epochs=8, learning_rate=0.05, seed=0)  # default restarts: none for a trigger without a class
    result = run_job(repair(loaded, data.x, data.y, "1", settings, verdict=verdict))
    assert "label-specific" in result.asr_source
    assert result.before.attack_success_rate > 0.9  # stamped held-out images leave their class
    assert result.after.attack_success_rate < 0.1
    assert result.after.clean_accuracy > 0.95


def test_cancel_leaves_nothing_written(demo_model, demo_arrays, demo_verdict, tmp_path):
    from core.repair.finetune import BatchLoss
    from core.repair.repair import RepairSettings, repair

    clean = demo_arrays[0]
    job = repair(demo_model, clean.x, clean.y, "255", RepairSettings(classes=(7,), restarts=0), verdict=demo_verdict,
                 out=tmp_path / "never.keras")
    for event in job:
        if isinstance(event, BatchLoss):
            break
    job.close()
    assert list(tmp_path.iterdir()) == []


def test_repair_refuses_to_write_over_its_input(demo_model, demo_arrays, demo_verdict, demo_bundle):
    from core.errors import TrojanScopeError
    from core.repair.repair import RepairSettings, repair

    clean = demo_arrays[0]
    with pytest.raises(TrojanScopeError, match="refusing to write over"):
        run_job(repair(demo_model, clean.x, clean.y, "255", RepairSettings(classes=(7,)), verdict=demo_verdict, out=demo_bundle.model))


def test_repair_unlearns_the_verdicts_suspects_and_never_dead_ends(demo_model, demo_arrays):
    """Issue 22: a "suspicious" verdict that names no flagged class never leaves repair with nothing to do."""
    from core.repair.repair import RepairSettings, repair

    clean = demo_arrays[0]
    fast = CleanseSettings(max_rounds=6, seed=0, label_specific=False)
    verdict = run_job(cleanse(demo_model, clean, "255", fast, classes=[0, 1, 2]))  # the backdoor class (7) left out
    assert verdict.verdict == "clean"
    settings = RepairSettings(epochs=1, restarts=0, suspects=(2, 0), cleanse=fast)
    result = run_job(repair(demo_model, clean.x, clean.y, "255", settings, verdict=verdict))
    assert result.method == "unlearn" and result.flagged_classes == [2, 0]
    assert result.note == "unlearned the classes the verdict names (2, 0)"
    # nothing named and nothing flagged: the two easiest classes, and fine-pruning as well
    result = run_job(repair(demo_model, clean.x, clean.y, "255", RepairSettings(epochs=1, restarts=0, cleanse=fast), verdict=verdict))
    easiest = sorted(verdict.norms, key=verdict.norms.get)[:2]
    assert result.method == "both" and result.flagged_classes == easiest
    assert result.note.startswith("no class was named") and result.note.endswith("and fine-pruned as well")
    assert result.prune is not None and result.after.clean_accuracy is not None


def test_repair_without_suspects_unlearns_the_easiest_classes(planted):
    """No verdict's suspects and no conv layer (a linear model): unlearn the two easiest classes, and say why no pruning."""
    from core.repair.repair import RepairSettings, repair

    data = _planted_images(100)
    verdict = run_job(cleanse(planted, data, "1", FAST, classes=[0, 1, 2]))  # the backdoor class left out
    assert verdict.verdict == "clean"
    result = run_job(repair(planted, data.x, data.y, "1", RepairSettings(epochs=1, restarts=0, cleanse=FAST), verdict=verdict))
    easiest = sorted(verdict.norms, key=verdict.norms.get)[:2]
    assert result.method == "unlearn" and result.flagged_classes == easiest
    assert "easiest to reach" in result.note and result.note.endswith("no conv layer to fine-prune")


# --------------------------------------------------------------------- CLI


def test_cli_cleanse_and_repair_print_the_contract_keys(demo_bundle, tmp_path, capsys):
    import cli

    code = cli.main(["cleanse", "--model", str(demo_bundle.model), "--clean", str(demo_bundle.clean_valid),
                     "--only", "1", "7", "9", "--rounds", "10", "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {"verdict", "flagged_classes", "anomaly_index", "norms", "candidates", "seconds"} <= set(out)
    assert out["candidates"] == [1, 7, 9] and set(out["norms"]) == {"1", "7", "9"}
    assert out["label_specific"] is None  # classes chosen by the analyst: the untargeted step is not run

    target = tmp_path / "unlearned.keras"
    code = cli.main(["repair", "--model", str(demo_bundle.model), "--clean", str(demo_bundle.clean_valid),
                     "--poisoned", str(demo_bundle.poisoned_test), "--target-class", "7", "--epochs", "2",
                     "--restarts", "0", "--out", str(target), "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {"method", "flagged_classes", "before", "after", "saved"} <= set(out)
    assert set(out["before"]) == {"clean_accuracy", "attack_success_rate"}
    assert out["saved"] == str(target) and target.is_file()

    code = cli.main(["repair", "--model", str(demo_bundle.model), "--clean", str(demo_bundle.clean_valid),
                     "--out", str(demo_bundle.model), "--json"])
    assert code == 2 and "refusing to write over" in capsys.readouterr().err
