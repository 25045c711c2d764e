"""The Inspector as an analyst uses it: default run on the demo, send an image, export."""

from __future__ import annotations

from pathlib import Path

from core.demo import TARGET
from core.inspect.trigger import box_overlap
from tests.conftest import wait_idle

SHOTS = Path(__file__).resolve().parent.parent / "out" / "screenshots"


def test_default_run_locates_the_sticker_and_transplants_it(qtbot, window, demo_settings, demo_bundle, tmp_path):
    from core.demo import STICKER_BOX

    window.demo_settings = demo_settings
    window.load_demo()
    wait_idle(qtbot, window)
    panel = window.panels["InspectorPanel"]
    finished = []
    panel.run_default(lambda: finished.append(True))
    qtbot.waitUntil(lambda: bool(finished), timeout=120_000)
    wait_idle(qtbot, window)
    assert window.last_error is None
    ins = panel.inspection
    assert ins is not None and ins.predicted == TARGET
    assert box_overlap(ins.primary.box, STICKER_BOX)[0] > 0
    assert panel.views["occlusion"]["box"].isVisible()
    tr = panel.transplant_result
    assert tr is not None and tr.flip_rate > tr.baseline + 0.5
    assert f"{tr.flip_rate:.0%}" in panel.transplant_label.text()
    assert panel.grid.count() > 10
    assert panel.image_list.count() > 0

    saved = panel.export_overlays(tmp_path / "overlays.png")
    assert saved is not None and saved.read_bytes().startswith(b"\x89PNG")
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert window.grab().save(str(SHOTS / "inspector_panel.png"))


def test_send_to_inspector_accepts_a_path_and_switches_tab(qtbot, window, demo_settings, demo_bundle):
    window.demo_settings = demo_settings
    window.load_demo()
    wait_idle(qtbot, window)
    panel = window.panels["InspectorPanel"]
    png = sorted(Path(demo_bundle.scan_dir).glob("*.png"))[0]
    assert panel.inspect_image(str(png))
    wait_idle(qtbot, window)
    assert window.tabs.currentWidget() is panel
    assert panel.inspection is not None and panel.inspection.source == str(png)
    assert set(panel.inspection.maps) == {"gradcam", "occlusion"}


def test_listing_images_enables_inspect_and_clears_the_status(qtbot, window, demo_settings, demo_bundle):
    window.demo_settings = demo_settings
    window.load_demo()
    wait_idle(qtbot, window)
    panel = window.panels["InspectorPanel"]
    assert panel.load_source("clean_test")
    wait_idle(qtbot, window)
    assert panel.image_list.count() > 0 and panel.inspect_button.isEnabled()
    assert not window.status.text().startswith("Reading")
