"""Triage: a folder with a clean model, a backdoored one, a hostile file and garbage, ranked and skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.detect.model_level.cleanse import CleanseSettings
from core.intake.data import open_data
from core.jobs import collect
from core.detect.model_level.mmbd import MMBDSettings
from core.detect.model_level.triage import TriageRow, rank, triage
from tests.hostile import lambda_model
from tests.planted import CLASSES, H, PLANTED, W, save_linear_model

FAST_NC = CleanseSettings(max_rounds=20, init_cost=1e-2, patience=2, early_stop_patience=4, seed=0, restarts=1)
FAST_MM = MMBDSettings(starts=2, steps=300, learning_rate=0.05)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("triage")
    models = root / "models"
    models.mkdir()
    save_linear_model(models / "a_clean.keras", slope=0.1, planted=False)
    save_linear_model(models / "b_backdoored.keras", slope=0.1)
    lambda_model(root / "marker.txt").save(models / "c_hostile.keras")
    (root / "marker.txt").unlink(missing_ok=True)  # building the model ran its code once, here; triage must not
    (models / "d_garbage.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)  # HDF5 magic, then junk
    rng = np.random.default_rng(0)
    y = rng.integers(0, CLASSES, 200)
    x = rng.uniform(0, 0.1, (200, H, W, 1)).astype(np.float32)
    x[:, 12] = 0.0
    for i, k in enumerate(y):
        x[i, 2 * k : 2 * k + 2] = 0.5
    np.savez(root / "clean.npz", x=x, y=y)
    return models, root / "clean.npz"


def test_triage_ranks_backdoored_first_and_skips_hostile_and_garbage(folder, tmp_path):
    models, clean = folder
    events, result = collect(triage(models, open_data(clean), "1", cleanse_settings=FAST_NC, mmbd_settings=FAST_MM))
    assert [Path(r.source).name for r in result.rows] == ["b_backdoored.keras", "a_clean.keras"]
    top, bottom = result.rows
    assert top.verdict == "backdoored" and PLANTED in top.targets
    assert bottom.verdict == "clean" and top.score > bottom.score
    skipped = {Path(s.source).name: s.reason for s in result.skipped}
    assert set(skipped) == {"c_hostile.keras", "d_garbage.h5"}
    assert "Lambda" in skipped["c_hostile.keras"]
    assert not (models.parent / "marker.txt").exists()  # the hostile code never ran
    assert [Path(e.source).name for e in events if isinstance(e, TriageRow)] == ["a_clean.keras", "b_backdoored.keras"]


def test_triage_cli_json_has_results_and_skipped(folder, capsys):
    import cli

    models, clean = folder
    code = cli.main(["triage", "--models", str(models), "--clean", str(clean), "--scale", "1", "--methods", "mmbd", "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [Path(r["source"]).name for r in out["results"]][0] == "b_backdoored.keras"
    assert {"source", "verdict", "score", "targets", "seconds"} <= set(out["results"][0])
    assert {Path(s["source"]).name for s in out["skipped"]} == {"c_hostile.keras", "d_garbage.h5"}
    assert all(s["reason"] for s in out["skipped"])


def test_a_model_whose_input_the_data_cannot_fit_is_skipped_with_the_reason(tmp_path):
    from core.intake.tf_env import keras

    k = keras()
    inputs = k.Input((H, W, 2))  # two channels: no conversion from 1-channel images exists
    k.Model(inputs, k.layers.Dense(CLASSES, activation="softmax")(k.layers.Flatten()(inputs))).save(tmp_path / "two.keras")
    np.savez(tmp_path / "clean.npz", x=np.zeros((10, H, W, 1), np.float32), y=np.zeros(10, np.int64))
    _events, result = collect(triage(tmp_path, open_data(tmp_path / "clean.npz"), "1", mmbd_settings=FAST_MM, methods=["mmbd"]))
    assert result.rows == []
    assert len(result.skipped) == 1 and "channels" in result.skipped[0].reason


def test_rank_orders_levels_then_scores():
    def row(name: str, level: str, score: float) -> TriageRow:
        verdict = "clean" if level == "no evidence" else level
        return TriageRow(name, verdict, level, score, (), "", 1.0, 10, (28, 28, 1), "255")

    rows = [row("a", "no evidence", 0.45), row("b", "suspicious", 0.4), row("c", "backdoored", 0.6), row("d", "suspicious", 0.55)]
    assert [r.source for r in rank(rows)] == ["c", "d", "b", "a"]


def test_empty_folder_is_a_clear_error(tmp_path):
    from core.errors import DataError

    np.savez(tmp_path / "clean.npz", x=np.zeros((4, H, W, 1), np.float32), y=np.zeros(4, np.int64))
    (tmp_path / "models").mkdir()
    with pytest.raises(DataError, match="no model file"):
        collect(triage(tmp_path / "models", open_data(tmp_path / "clean.npz"), "1"))


def test_triage_cli_lines_say_how_often_clean_models_get_each_answer(folder, capsys, monkeypatch):
    """Issue 22: the triage table shows the calibrated false-alarm rate in words beside the verdict."""
    import cli
    import cli.triage as cli_triage
    from core.detect.model_level.triage import TriageResult, TriageRow

    rows = [TriageRow("/m/bad.keras", "backdoored", "backdoored", 0.9, (3,), "Backdoored (target 3)", 1.0, 10, (28, 28, 3), "255",
                      false_alarm="about 2 in 100 clean models get this answer (95% interval 1-5)"),
            TriageRow("/m/quiet.keras", "clean", "no evidence", 0.1, (), "No evidence found by ...", 1.0, 10, (28, 28, 3), "255")]

    def judged(*_args, **_kwargs):
        yield from ()
        return TriageResult(rows, [], "/m", 2.0)

    monkeypatch.setattr(cli_triage, "triage", judged)
    models, clean = folder
    assert cli.main(["triage", "--models", str(models), "--clean", str(clean)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "/m/" in line]
    assert "backdoored" in lines[0] and "~2 in 100 clean models" in lines[0]
    assert "no evidence found" in lines[1] and "in 100" not in lines[1]
