"""Fine-Pruning panel: sweep with live curves, pick a point, fine-tune, save; Cancel works."""

from __future__ import annotations

import pytest

from tests.conftest import wait_idle


@pytest.fixture(autouse=True)
def only_needed_panels(monkeypatch):
    """Build the window with the panels this test needs, so panels in progress elsewhere cannot break it."""
    import gui.main_window as main_window

    monkeypatch.setattr(main_window, "PANELS", [("gui.model_panel", "ModelPanel"), ("gui.prune_panel", "PrunePanel")])


@pytest.fixture
def demo_window(qtbot, window, demo_bundle, demo_settings):
    window.demo_settings = demo_settings
    window.load_demo()
    wait_idle(qtbot, window)
    assert window.state.loaded is not None
    return window


def test_sweep_pick_point_fine_tune_and_save(qtbot, demo_window, demo_bundle, tmp_path):
    from core.intake.models import file_sha256, load_model
    from core.repair.pruning import zero_channels

    panel = demo_window.panels["PrunePanel"]
    assert panel.layer_combo.currentData() == "conv_3"
    assert "32 channels" in panel.layer_combo.currentText()
    sha = file_sha256(demo_bundle.model)
    assert panel.run_sweep()
    wait_idle(qtbot, demo_window)
    assert panel.sweep_result is not None and panel._buffers["clean"].n == 33
    assert panel._buffers["asr"].n == 33
    assert panel.prune_line.isVisible() and panel.selected_count() == panel.sweep_result.stop
    panel.prune_line.setValue(10 / 32 + 0.004)  # the analyst drags the line
    panel._line_moved()
    assert panel.selected_count() == 10 and "10/32" in panel.stop_label.text()
    panel.epochs.setValue(1)
    assert panel.run_repair()
    wait_idle(qtbot, demo_window)
    assert panel.repair_result is not None and len(panel.repair_result.pruned_channels) == 10
    assert panel._buffers["loss"].n > 0 and panel._buffers["ep_clean"].n == 2
    assert panel.table.item(2, 0) is not None and panel.save_button.isEnabled()
    out = tmp_path / "fixed.keras"
    assert panel.save_to(str(out))
    wait_idle(qtbot, demo_window)
    assert zero_channels(load_model(out).model, "conv_3") == panel.repair_result.pruned_channels
    assert file_sha256(demo_bundle.model) == sha


def test_cancel_mid_sweep_keeps_window_usable(qtbot, demo_window):
    from core.repair.pruning import SweepPoint

    panel = demo_window.panels["PrunePanel"]
    demo_window.runner.event.connect(lambda e: demo_window.runner.cancel() if isinstance(e, SweepPoint) and e.pruned == 3 else None)
    assert panel.run_sweep()
    wait_idle(qtbot, demo_window)
    assert panel.sweep_result is None and not panel.tune_button.isEnabled()
    assert panel.run_button.isEnabled()
