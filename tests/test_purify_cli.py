"""Purification on the demo BadNet through the command line (issue 25): the purify JSON contract and classify --purify.

The evidence is built by hand: the reversed trigger of class 7 is the demo's sticker box (core.demo.STICKER_BOX),
saved as `cleanse --save-triggers` would, so the test does not depend on Neural Cleanse finding it. The scan
folder's manifest says which image carries the sticker and what its true label is.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import cli
from core.demo import STICKER_BOX, TARGET, read_manifest
from core.detect.input_level import masking

CONTRACT = ("index", "path", "label", "flagged", "purified_label", "method", "reason")


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def demo_profile(demo_bundle, tmp_path_factory):
    """The sticker's box as the reversed trigger of class 7, and a combined scan profile calibrated with it (clean reference included)."""
    folder = tmp_path_factory.mktemp("purify")
    r0, c0, r1, c1 = STICKER_BOX
    mask = np.zeros((1, 28, 28), np.float32)
    mask[0, r0:r1, c0:c1] = 1.0
    triggers = masking.save_triggers(masking.Triggers((TARGET,), mask, "", "the demo's sticker, by hand"), folder / "triggers.npz")
    profile = folder / "profile.npz"
    code = cli.main(["scan", "--model", str(demo_bundle.model), "--clean", str(demo_bundle.clean_valid), "--triggers", str(triggers),
                     "--save-profile", str(profile), "--quiet", "--json"])
    assert code == 0 and profile.is_file()
    return triggers, profile


def test_purify_prints_one_row_per_input_in_order_and_gives_stickered_digits_their_label_back(demo_bundle, demo_profile, tmp_path, capsys):
    _triggers, profile = demo_profile
    out_dir = tmp_path / "purified"
    code, out, err = run_cli(capsys, "purify", "--model", demo_bundle.model, "--profile", profile, "--scan", demo_bundle.scan_dir,
                             "--out", out_dir, "--json", "--quiet")
    assert code == 0, err
    result = json.loads(out)  # exactly one JSON object
    manifest = read_manifest(demo_bundle.manifest)
    rows = result["results"]
    assert [r["index"] for r in rows] == list(range(len(manifest)))
    assert [Path(r["path"]).name for r in rows] == [m["file"] for m in manifest]
    for r in rows:
        assert set(CONTRACT) <= set(r)
        assert r["purified_label"] is None or isinstance(r["purified_label"], int)
        assert isinstance(r["method"], str) and isinstance(r["reason"], str) and r["reason"]
        assert isinstance(r["label"], int) and 0 <= r["label"] < 10  # the model's answer before, never the reject class
    triggered = [(r, m) for r, m in zip(rows, manifest) if m["triggered"]]
    clean = [(r, m) for r, m in zip(rows, manifest) if not m["triggered"]]
    assert sum(r["label"] == TARGET for r, _m in triggered) >= 0.8 * len(triggered)  # the backdoor fires before
    assert sum(r["flagged"] for r, _m in triggered) >= 0.8 * len(triggered)
    recovered = sum(r["purified_label"] == m["true_label"] for r, m in triggered)
    assert recovered >= 0.8 * len(triggered)
    assert sum(r["purified_label"] == TARGET for r, _m in triggered) <= 2  # the attack no longer lands
    for r, m in clean:
        if not r["flagged"]:
            assert r["purified_label"] == r["label"] and r["method"] == "not_flagged"
    assert sum(r["purified_label"] == m["true_label"] for r, m in clean) >= 0.85 * len(clean)
    # the images: before for every flagged input, mask and after where a region was filled; the JSON beside them
    saved = json.loads((out_dir / "purify.json").read_text())
    assert saved["results"] == rows and result["saved"] == str(out_dir)
    for k, r in enumerate(rows):
        assert (out_dir / f"{k:05d}_before.png").is_file() == r["flagged"]
        filled = r["method"] in ("shared_trigger", "reversed_trigger", "salient_box")
        assert (out_dir / f"{k:05d}_after.png").is_file() == filled and (out_dir / f"{k:05d}_mask.png").is_file() == filled


def test_classify_purify_answers_the_recovered_class_and_n_only_when_purification_fails(demo_bundle, demo_profile, capsys):
    _triggers, profile = demo_profile
    manifest = read_manifest(demo_bundle.manifest)
    files = [demo_bundle.scan_dir / m["file"] for m in manifest]
    code, guarded, err = run_cli(capsys, "classify", "--model", demo_bundle.model, "--profile", profile, "--quiet", *files)
    assert code == 0, err
    code, purified, err = run_cli(capsys, "classify", "--model", demo_bundle.model, "--profile", profile, "--purify", "--quiet", *files)
    assert code == 0, err
    before, after = [int(v) for v in guarded.split()], [int(v) for v in purified.split()]
    assert len(before) == len(after) == len(files)  # one class per image, in the order given
    assert all(0 <= v <= 10 for v in after)
    for b, a in zip(before, after):
        if b != 10:
            assert a == b  # an image the scan lets through keeps its class
    rejected = [(a, m) for b, a, m in zip(before, after, manifest) if b == 10 and m["triggered"]]
    assert len(rejected) >= 0.8 * sum(m["triggered"] for m in manifest)
    assert sum(a == m["true_label"] for a, m in rejected) >= 0.8 * len(rejected)  # N became the true class
    code, out, err = run_cli(capsys, "classify", "--model", demo_bundle.model, "--profile", profile, "--purify", "--json", "--quiet", *files)
    data = json.loads(out)
    assert [r["label"] for r in data["results"]] == after and data["reject_class"] == 10


@pytest.mark.parametrize("argv, message", [
    (["--scan", "{scan}"], "give --clean DATA"),
    (["--scan", "{scan}", "--profile", "{profile}", "--triggers", "{triggers}"], "a saved --profile already holds its masks"),
    (["--scan", "{scan}", "--profile", "{profile}", "--out", "{busy}"], "already holds other files"),
    (["--scan", "{scan}", "--profile", "{profile}", "--out", "{model}"], "refusing to write over the input file"),
])
def test_purify_bad_input_exits_2_in_one_line(demo_bundle, demo_profile, tmp_path, capsys, argv, message):
    triggers, profile = demo_profile
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("the analyst's")
    argv = [a.format(scan=demo_bundle.scan_dir, profile=profile, triggers=triggers, busy=busy, model=demo_bundle.model) for a in argv]
    code, out, err = run_cli(capsys, "purify", "--model", demo_bundle.model, *argv, "--json", "--quiet")
    assert code == 2 and out == "" and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert (busy / "notes.txt").read_text() == "the analyst's" and sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


def test_a_cancelled_purification_writes_nothing(demo_bundle, demo_profile, tmp_path, capsys, monkeypatch):
    from core.jobs import collect
    from core.repair import purify

    _triggers, profile = demo_profile
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt  # what Ctrl-C does in the middle of the purification pass

    monkeypatch.setattr(purify, "purify_images", interrupted)
    out_dir = tmp_path / "purified"
    code, out, err = run_cli(capsys, "purify", "--model", demo_bundle.model, "--profile", profile, "--scan", demo_bundle.scan_dir,
                             "--out", out_dir, "--quiet")
    assert code == 130 and calls and "cancelled" in err and not out_dir.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.undo()

    # the job itself: closing it after its first purified chunk (the GUI's Cancel) ends it cleanly
    from core.detect.input_level import scanner
    from core.intake.data import open_data
    from core.intake.models import load_model

    loaded = load_model(demo_bundle.model)
    prof = scanner.load_profile(profile)
    job = purify.scan_and_purify(loaded, prof, open_data(demo_bundle.scan_dir), purify.evidence_from(loaded, prof),
                                 purify.PurifySettings(chunk=4))
    for event in job:
        if isinstance(event, purify.PurifiedChunk):
            break
    job.close()
    assert len(event.positions) == len(event.purified) <= 4
    _events, result = collect(purify.scan_and_purify(loaded, prof, open_data(demo_bundle.scan_dir), purify.evidence_from(loaded, prof)))
    assert len(result.purified) == len(result.scan.rows) == len(read_manifest(demo_bundle.manifest))
