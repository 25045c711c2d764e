"""Every line an analyst reads on the command line is plain and complete (issue 23)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import cli

ROOT = Path(__file__).resolve().parent.parent


def test_flags_are_checked_before_any_file_is_opened(capsys, tmp_path):
    """--frr 3 is refused by the flag itself: the model named does not even exist, and that is not what is said."""
    missing = tmp_path / "nowhere.keras"
    code = cli.main(["strip", "--model", str(missing), "--clean", str(tmp_path), "--scan", str(tmp_path), "--frr", "3"])
    err = capsys.readouterr().err
    assert code == 2
    assert "write 3% as 0.03" in err and "nowhere" not in err
    assert len(err.strip().splitlines()) == 1
    for argv, needle in ((["prune", "--holdout", "20"], "write 20% as 0.2"), (["cleanse", "--classes", "0"], "at least 1"),
                         (["repair", "--epochs", "two"], "'two' is not a whole number"), (["scan", "--confidence", "1.5"], "not a rate")):
        code = cli.main([argv[0], "--model", str(missing), "--clean", str(tmp_path), "--out", str(tmp_path / "o"), *argv[1:]])
        err = capsys.readouterr().err
        assert code == 2 and needle in err and "nowhere" not in err, (argv, err)


def test_a_closed_pipe_ends_quietly(demo_bundle):
    """`classify ... | head -1`: the reader goes away before the command writes; no 'internal error', exit 0."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "evaluate", "--model", str(demo_bundle.model), "--clean", str(demo_bundle.clean_test)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ},
    )
    proc.stdout.close()  # the reader is gone long before TensorFlow has loaded
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert b"BrokenPipe" not in err and b"internal error" not in err


def test_no_display_is_one_line_not_a_qt_abort():
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "main.py")], capture_output=True, text=True, env=env, timeout=120)
    if not sys.platform.startswith("linux"):
        pytest.skip("the X11/Wayland check is for Linux")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no display" in lines[0] and "QT_QPA_PLATFORM=offscreen" in lines[0] and "--help" in lines[0]
    assert time.monotonic() - started < 60  # said at once, before Qt or TensorFlow load


def test_weights_that_do_not_fit_name_the_layer_in_one_complete_line(capsys, tmp_path):
    from core.intake.tf_env import keras

    k = keras()

    def net(filters: int):
        inputs = k.Input((8, 8, 1))
        x = k.layers.Flatten()(k.layers.Conv2D(filters, 3, name="c1")(inputs))
        return k.Model(inputs, k.layers.Dense(3, activation="softmax", name="out")(x))

    net(4).save(tmp_path / "arch.keras")
    net(6).save_weights(tmp_path / "other.weights.h5")
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 8, 8, 1), np.uint8), y=np.zeros(2))
    code = cli.main(["evaluate", "--model", str(tmp_path / "other.weights.h5"), "--arch", str(tmp_path / "arch.keras"),
                     "--clean", str(tmp_path / "d.npz")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "layer 'c1' (Conv2D)" in err and "(3, 3, 1, 4)" in err and "(3, 3, 1, 6)" in err
    assert not err.endswith(":") and "Example error message" not in err


@pytest.fixture(scope="module")
def strip_profile(demo_bundle, tmp_path_factory):
    path = tmp_path_factory.mktemp("profile") / "strip.npz"
    assert cli.main(["strip", "--model", str(demo_bundle.model), "--clean", str(demo_bundle.clean_valid), "--overlays", "16",
                     "--save-profile", str(path), "--quiet"]) == 0
    return path


def test_classify_a_folder_names_each_file_and_explains_the_reject_class(capsys, demo_bundle, strip_profile):
    capsys.readouterr()
    assert cli.main(["classify", "--model", str(demo_bundle.model), "--profile", str(strip_profile), str(demo_bundle.scan_dir)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    files = sorted(p for p in Path(demo_bundle.scan_dir).rglob("*") if p.is_file())
    assert len(lines) == len(files)
    assert all(line.split("\t")[0].startswith(str(demo_bundle.scan_dir)) for line in lines)
    flagged = [line for line in lines if line.split("\t")[1] == "10"]
    assert flagged and all("class 10 = N+1, the reject class" in line for line in flagged)
    assert cli.main(["classify", "--model", str(demo_bundle.model), "--profile", str(strip_profile), str(demo_bundle.scan_dir), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert {Path(r["path"]) for r in rows} <= set(files) and len(rows) == len(files)


def test_classify_files_listed_one_by_one_keeps_bare_classes(capsys, demo_bundle, strip_profile):
    """The contract: one line per image given, its class in [0, N-1] or N."""
    files = sorted(p for p in Path(demo_bundle.scan_dir).rglob("*.png"))[:3]
    capsys.readouterr()
    assert cli.main(["classify", "--model", str(demo_bundle.model), "--profile", str(strip_profile), *map(str, files)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.isdigit() and 0 <= int(line) <= 10 for line in lines)


def test_triage_says_no_evidence_found_never_clean(capsys, monkeypatch, tmp_path):
    import cli.triage as cli_triage
    from core.detect.model_level.triage import TriageResult, TriageRow

    rows = [TriageRow("/m/quiet.keras", "clean", "no evidence", 0.2, (), "No evidence found by Neural Cleanse and MM-BD",
                      1.0, 10, (28, 28, 3), "255")]

    def judged(*_args, **_kwargs):
        yield from ()
        return TriageResult(rows, [], "/m", 1.0)

    monkeypatch.setattr(cli_triage, "triage", judged)
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 28, 28, 3), np.uint8), y=np.zeros(2))
    assert cli.main(["triage", "--models", str(tmp_path), "--clean", str(tmp_path / "c.npz")]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "quiet.keras" in line)
    assert "no evidence found" in line and "clean" not in line.replace("/m/quiet.keras", "")
    assert cli.main(["triage", "--models", str(tmp_path), "--clean", str(tmp_path / "c.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["verdict"] == "clean"  # the machine value stays


def test_scan_names_thresholds_in_words_and_an_inactive_detector():
    from types import SimpleNamespace

    from core.detect.input_level import scanner

    profile = SimpleNamespace(detectors={
        "strip": SimpleNamespace(threshold=0.0412, tail="low"),
        "scaleup": SimpleNamespace(threshold=1.0, tail="high", score_bounds=(0.0, 1.0)),
    })
    text = scanner.describe_thresholds(profile)
    assert text.startswith("STRIP 0.0412 and SCALE-UP 1 (inactive")
    assert "{" not in text
    assert not scanner.inactive(SimpleNamespace(threshold=0.98, tail="high", score_bounds=(0.0, 1.0)))
