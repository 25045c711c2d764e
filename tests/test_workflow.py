"""Acceptance (issue 13): the whole analyst workflow by clicks, on two models in a row.

open -> evaluate -> STRIP calibrate -> scan a folder -> send a flagged image to
the Inspector -> transplant -> Neural Cleanse -> repair (fine-prune) and save
-> export the report; then the same on a second model. Asserts that the
Inspector received the flagged file, that nothing of the first model is shown
for the second, and that the report holds each result with the figures the
panels show. Kept fast: the tests' small demo, 8 STRIP overlays, 3 Neural
Cleanse candidates for 5 rounds, one fine-tuning epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFileDialog

from gui.state import Kind
from tests.conftest import wait_idle

SHOTS = Path(__file__).resolve().parent.parent / "out" / "screenshots"


def click(qtbot, button) -> None:
    assert button.isEnabled(), f"{button.text()!r} is disabled"
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


@pytest.fixture
def dialogs(monkeypatch):
    """The file dialogs answer with whatever the test puts in ``answers`` (one per call, in order)."""
    answers: list[str] = []
    pop = lambda *_a, **_k: (answers.pop(0), "")  # noqa: E731
    monkeypatch.setattr(QFileDialog, "getOpenFileName", pop)
    monkeypatch.setattr(QFileDialog, "getSaveFileName", pop)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *_a, **_k: answers.pop(0))
    return answers


def run_workflow(qtbot, window, dialogs, scan_dir: Path, out: Path, tag: str) -> dict:
    """Every step by clicks; returns what the panels showed, for comparison with the report."""
    p = window.panels
    model, strip_panel, inspector, verdict = p["ModelPanel"], p["StripPanel"], p["InspectorPanel"], p["VerdictPanel"]
    shown: dict = {}

    click(qtbot, model.evaluate_button)
    wait_idle(qtbot, window)
    evaluation = window.state.results.value(Kind.EVALUATION)
    shown["clean_accuracy"] = f"{evaluation.clean_accuracy:.2%}"
    assert shown["clean_accuracy"] in model.results.text() and "images of clean_test" in model.results.text()

    strip_panel.overlays_spin.setValue(8)
    click(qtbot, strip_panel.calibrate_button)
    wait_idle(qtbot, window)
    dialogs.append(str(scan_dir))
    click(qtbot, strip_panel.scan_folder_button)
    wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: window.state.results.value(Kind.SCAN) is not None, timeout=10_000)
    shown["flagged"] = int(strip_panel.model.flagged_mask().sum())
    assert strip_panel.model.rowCount() == len(list(scan_dir.glob("*.png")))

    # Send a flagged image (or, when the model flags none, the first row) to the Inspector.
    strip_panel.only_flagged.setChecked(shown["flagged"] > 0)
    index = strip_panel.proxy.index(0, 1)
    row = strip_panel.model.rows[strip_panel.proxy.mapToSource(index).row()]
    if shown["flagged"]:
        strip_panel.table.doubleClicked.emit(index)
    else:
        strip_panel.send_row(strip_panel.proxy.mapToSource(index).row())
    assert window.tabs.currentWidget() is inspector
    wait_idle(qtbot, window)
    assert inspector.inspection is not None and inspector.inspection.source == row.source  # the Inspector received the file
    shown["sent"] = row.source
    inspector.m_spin.setValue(40)
    click(qtbot, inspector.transplant_button)
    wait_idle(qtbot, window)
    tr = inspector.transplant_result
    assert tr is not None and f"{tr.flip_rate:.0%}" in inspector.transplant_label.text() and tr.box_from in inspector.transplant_label.text()
    shown["flip_rate"] = tr.flip_rate

    window.tabs.setCurrentWidget(verdict)
    verdict.candidates.setValue(3)
    verdict.rounds.setValue(5)
    click(qtbot, verdict.run_button)
    wait_idle(qtbot, window, timeout=300_000)
    assert verdict.result is not None and verdict.verdict is not None
    assert verdict.verdict_label.text().startswith(verdict.verdict.summary)  # the combined verdict is the headline
    shown["verdict"] = verdict.result.verdict
    verdict.method.setCurrentIndex(verdict.method.findData("fine-prune"))
    assert verdict.repair_button.text() == "Repair by fine-pruning"  # the label follows the method
    verdict.epochs.setValue(1)
    click(qtbot, verdict.repair_button)
    wait_idle(qtbot, window, timeout=300_000)
    assert verdict.repair_result is not None and verdict.curves["ep_clean"].n >= 1  # the "clean" key is drawn too
    assert not verdict.curves.running and not p["PrunePanel"].curves.running  # no timer left running
    dialogs.append(str(out.with_name(f"repaired_{tag}.keras")))
    click(qtbot, verdict.save_button)
    wait_idle(qtbot, window)
    shown["saved"] = verdict.repair_result.saved
    shown["after"] = verdict.repair_result.after

    if tag == "first":
        for key, panel in window.panels.items():
            window.tabs.setCurrentWidget(panel)
            qtbot.wait(50)
            SHOTS.mkdir(parents=True, exist_ok=True)
            assert window.grab().save(str(SHOTS / f"workflow_{key}.png"))

    dialogs.append(str(out))
    next(a for a in window.file_menu.actions() if a.text() == "&Export report…").trigger()
    wait_idle(qtbot, window, timeout=300_000)
    assert window.last_error is None, window.last_error
    return shown


def check_report(out: Path, shown: dict, model_path: str) -> dict:
    record = json.loads(out.with_suffix(".json").read_text())
    page = out.read_text()
    assert record["summary"]["path"] == model_path
    assert all(state == "run" for state in record["sections"].values()), record["sections"]
    assert f"{record['evaluation']['clean_accuracy']:.2%}" == shown["clean_accuracy"]
    assert "clean_test" in record["evaluation"]["clean_accuracy_measured_on"]
    scans = record["strip"]["scans"]
    assert len(scans) == 1 and scans[0]["flagged"] == shown["flagged"]
    inspected = record["inspector"]["inspected"]
    assert len(inspected) == 1 and inspected[0]["source"] == shown["sent"]
    assert inspected[0]["transplant"]["flip_rate"] == shown["flip_rate"]
    assert record["cleanse"]["verdict"] == shown["verdict"]
    repairs = record["repair"]["repairs"]
    assert len(repairs) == 1 and repairs[0]["method"] == "fine-prune" and repairs[0]["saved"] == shown["saved"]
    assert repairs[0]["after"]["clean_accuracy"] == shown["after"].clean_accuracy
    assert record["pruning"]["runs"][0]["origin"] == "repair (fine-prune)"  # a fine-prune from the Verdict panel counts
    assert f"{100 * shown['after'].clean_accuracy:.1f}%" in page
    return record


def test_two_models_in_a_row(qtbot, window, dialogs, demo_settings, demo_bundle, tmp_path):
    window.resize(1280, 720)
    window.demo_settings = demo_settings
    click(qtbot, window.panels["ModelPanel"].demo_button)
    wait_idle(qtbot, window)
    scan_dir = Path(demo_bundle.scan_dir)
    first = run_workflow(qtbot, window, dialogs, scan_dir, tmp_path / "first.html", "first")
    record = check_report(tmp_path / "first.html", first, str(demo_bundle.model))
    assert record["cleanse"]["verdict"] == "backdoored" or first["flagged"] > 0

    # The second model: the clean control network, opened by File > Open model.
    p = window.panels
    dialogs.append(str(demo_bundle.clean_model))
    click(qtbot, p["ModelPanel"].open_model_button)
    wait_idle(qtbot, window)
    assert window.state.loaded.summary.path == str(demo_bundle.clean_model)
    assert list(window.state.results.entries()) == []
    assert "previous model" in window.status.text() and "opened with the previous model" in p["ModelPanel"].data_labels["poisoned"].text()
    assert p["ModelPanel"].results.text() == "Model loaded: press Evaluate."
    assert p["StripPanel"].profile is None and p["StripPanel"].model.rowCount() == 0
    inspector = p["InspectorPanel"]
    assert inspector.inspection is None and inspector.transplant_result is None and inspector.grid.count() == 0
    assert inspector.views["occlusion"]["heat"].image is None and not inspector.views["image"]["box"].isVisible()
    assert "Model changed" in inspector.result_label.text()
    verdict = p["VerdictPanel"]
    assert verdict.result is None and verdict.table.item(0, 0) is None and verdict.bar_item is None
    assert verdict.verdict_label.text().startswith("Run Neural Cleanse")
    prune = p["PrunePanel"]
    assert prune.sweep_result is None and prune.curves["clean"].n == 0 and "Prune " not in prune.stop_label.text()

    second = run_workflow(qtbot, window, dialogs, scan_dir, tmp_path / "second.html", "second")
    record2 = check_report(tmp_path / "second.html", second, str(demo_bundle.clean_model))
    assert record2["summary"]["sha256"] != record["summary"]["sha256"]  # and check_report found one run of each analysis
