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
    base = panel.sweep_result.curve[0].clean_accuracy
    n_clean = panel.sweep_result.n_clean
    panel.prune_line.setValue(10 / 32 + 0.004)  # the analyst drags the line
    panel._line_moved()
    assert panel.selected_count() == 10 and "10/32" in panel.stop_label.text()
    # the point and its baseline are measured on the same images, and the text names them
    point = panel.sweep_result.curve[10].clean_accuracy
    assert (f"Clean accuracy {point:.1%} on all {n_clean} images of {demo_bundle.clean_valid.name}, "
            f"{(point - base) * 100:+.1f} points from {base:.1%} unpruned") in panel.stop_label.text()
    panel.epochs.setValue(1)
    assert panel.run_repair()
    wait_idle(qtbot, demo_window)
    assert panel.repair_result is not None and len(panel.repair_result.pruned_channels) == 10
    assert panel._buffers["loss"].n > 0 and panel._buffers["ep_clean"].n == 2
    assert panel.table.item(2, 0) is not None and panel.save_button.isEnabled()
    n_hold = panel.repair_result.n_holdout
    assert 0 < n_hold < n_clean
    assert panel.table.item(0, 0).text() == f"{panel.repair_result.before.clean_accuracy:.1%}"
    assert (f"Same images in every row: clean accuracy on {n_hold} held-out clean images of "
            f"{demo_bundle.clean_valid.name}") in panel.table_caption.text()
    out = tmp_path / "fixed.keras"
    assert panel.save_to(str(out))
    wait_idle(qtbot, demo_window)
    assert zero_channels(load_model(out).model, "conv_3") == panel.repair_result.pruned_channels
    assert file_sha256(demo_bundle.model) == sha


def test_the_layer_choice_is_never_cut_off(qtbot, demo_window):
    from gui.app import SCREENSHOT_SIZE

    demo_window.resize(*SCREENSHOT_SIZE)
    panel = demo_window.panels["PrunePanel"]
    demo_window.tabs.setCurrentWidget(panel)
    qtbot.wait(50)
    combo = panel.layer_combo
    assert combo.currentText() == "conv_3 (32 channels, default)"
    assert combo.width() >= combo.sizeHint().width()  # the whole text: no "conv_3 (32 channels, defa"


def test_cancel_mid_sweep_keeps_window_usable(qtbot, demo_window):
    from core.repair.pruning import SweepPoint

    panel = demo_window.panels["PrunePanel"]
    demo_window.runner.event.connect(lambda e: demo_window.runner.cancel() if isinstance(e, SweepPoint) and e.pruned == 3 else None)
    assert panel.run_sweep()
    wait_idle(qtbot, demo_window)
    assert panel.sweep_result is None and not panel.tune_button.isEnabled()
    assert panel.run_button.isEnabled()
