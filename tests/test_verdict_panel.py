"""The Verdict panel as an analyst clicks it: run Neural Cleanse, see the verdict, cancel, repair."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt

from tests.conftest import wait_idle

SHOTS = Path(__file__).resolve().parent.parent / "out" / "screenshots"


def _load_demo(qtbot, window, demo_settings):
    window.demo_settings = demo_settings
    window.load_demo()
    wait_idle(qtbot, window)
    return window.panels["VerdictPanel"]


def test_cancel_stops_neural_cleanse_at_once(qtbot, window, demo_settings, demo_bundle):
    panel = _load_demo(qtbot, window, demo_settings)
    assert panel.run_button.isEnabled() and not panel.repair_button.isEnabled()
    qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "round" in window.status.text(), timeout=60_000)  # optimising
    window.cancel_button.click()
    wait_idle(qtbot, window, timeout=3000)
    assert "Cancelled" in window.status.text()
    assert panel.result is None and not panel.repair_button.isEnabled()


def test_verdict_then_unlearning_fills_chart_grid_and_table(qtbot, window, demo_settings, demo_bundle, tmp_path):
    panel = _load_demo(qtbot, window, demo_settings)
    panel.rounds.setValue(30)
    qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, window, timeout=300_000)
    result = panel.result
    assert result is not None and result.verdict == "backdoored" and 7 in result.flagged_classes
    assert panel.verdict_label.text().startswith("Backdoored")
    assert panel.bar_item is not None and panel.threshold_line.isVisible()
    assert panel.trigger_grid.count() >= 3 * len(result.candidates)
    panel.epochs.setValue(3)
    qtbot.mouseClick(panel.repair_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, window, timeout=300_000)
    assert panel.repair_result is not None
    assert panel.table.item(0, 0) is not None and panel.table.item(2, 1) is not None
    assert panel._buffers["loss"].n > 0 and panel.save_button.isEnabled()
    out = tmp_path / "unlearned.keras"
    panel.save_to(str(out))
    wait_idle(qtbot, window)
    assert out.is_file() and (tmp_path / "unlearned.keras.json").is_file()
    window.tabs.setCurrentWidget(panel)
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert window.grab().save(str(SHOTS / "verdict_panel.png"))
