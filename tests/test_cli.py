"""The command-line contract: one JSON object on stdout, exit 2 with one line on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cli
import cli.demo

ROOT = Path(__file__).resolve().parent.parent


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_evaluate_json_in_a_fresh_process(demo_bundle):
    """The real entry point: TensorFlow's chatter must not reach stdout (nor its C++ start-up lines stderr)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "evaluate", "--model", str(demo_bundle.model), "--clean", str(demo_bundle.clean_test),
         "--poisoned", str(demo_bundle.poisoned_test), "--json"],
        capture_output=True, text=True, env={**os.environ}, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # exactly one JSON object, nothing else
    for key in ("clean_accuracy", "attack_success_rate", "n_clean", "n_poisoned", "scale"):
        assert key in result
    assert result["attack_success_rate"] > 0.8
    assert "oneDNN" not in proc.stderr and "absl" not in proc.stderr


def test_demo_command_writes_the_bundle(capsys, demo_settings, tmp_path, monkeypatch):
    # the session's small demo, as TROJANSCOPE_DEMO_SETTINGS selects it for the command (cached: copied, not trained)
    monkeypatch.setenv("TROJANSCOPE_DEMO_SETTINGS", json.dumps(demo_settings.__dict__))
    code, out, _ = run_cli(capsys, "demo", "--out", str(tmp_path / "d"), "--json")
    assert code == 0
    paths = json.loads(out)
    for key in ("model", "clean_valid", "clean_test", "poisoned_test", "scan_dir", "manifest"):
        assert Path(paths[key]).exists()
    mine = tmp_path / "d" / "my_repaired_model.keras"
    mine.write_text("analyst's work")
    code, out, _ = run_cli(capsys, "demo", "--out", str(tmp_path / "d"), "--json")
    assert code == 0 and mine.read_text() == "analyst's work"  # re-exporting never deletes work
    code, out, err = run_cli(capsys, "demo", "--out", str(tmp_path))
    assert code == 2 and "not a TrojanScope demo folder" in err


def test_evaluate_without_poisoned_data_reports_null_asr(capsys, demo_bundle):
    code, out, _ = run_cli(capsys, "evaluate", "--model", str(demo_bundle.model), "--clean", str(demo_bundle.clean_test), "--json", "--quiet")
    assert code == 0
    result = json.loads(out)
    assert result["attack_success_rate"] is None and result["n_poisoned"] == 0


def test_evaluate_folder_reports_skipped_files(capsys, demo_bundle, tmp_path):
    import shutil

    folder = tmp_path / "imgs"
    shutil.copytree(demo_bundle.scan_dir, folder)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nrubbish")
    code, out, _ = run_cli(capsys, "evaluate", "--model", str(demo_bundle.model), "--poisoned", str(folder), "--target", "7", "--json", "--quiet")
    assert code == 0
    result = json.loads(out)
    assert [s["source"].endswith("broken.png") for s in result["skipped"]] == [True]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "--model", "missing.keras", "--clean", "{clean}"], "cannot read missing.keras"),
        (["evaluate", "--model", "{model}", "--clean", "{clean}", "--target", "99", "--poisoned", "{clean}"], "target class 99 is out of range"),
        (["evaluate", "--model", "{clean}", "--clean", "{clean}"], "Keras model"),
        (["evaluate", "--model", "{model}", "--clean", "{model}"], "not a data set"),
        (["evaluate", "--model", "{model}"], "nothing to evaluate"),
        (["evaluate", "--clean", "{clean}"], "required: --model"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, demo_bundle, argv, message):
    argv = [a.format(model=demo_bundle.model, clean=demo_bundle.clean_test) for a in argv]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert out == ""
    assert message in err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith(("error", "trojanscope"))]) == 1
