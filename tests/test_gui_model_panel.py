"""The Model & Data flow as an analyst clicks it: load, evaluate, see results; errors never crash."""

from __future__ import annotations

import time
from pathlib import Path

from core.jobs import Progress
from tests.conftest import wait_idle

SHOTS = Path(__file__).resolve().parent.parent / "out" / "screenshots"


def test_load_demo_evaluate_and_show_results(qtbot, window, demo_settings, demo_bundle):
    window.demo_settings = demo_settings
    window.load_demo()
    wait_idle(qtbot, window)
    assert window.state.loaded is not None
    assert set(window.state.data) == {"clean_valid", "clean_test", "poisoned", "scan"}
    panel = window.panels["ModelPanel"]
    assert panel.evaluate_button.isEnabled()
    qtbot.mouseClick(panel.evaluate_button, __import__("PySide6.QtCore", fromlist=["Qt"]).Qt.MouseButton.LeftButton)
    wait_idle(qtbot, window)
    from gui.state import Kind

    result = window.state.results.value(Kind.EVALUATION)
    assert result is not None and result.attack_success_rate > 0.8
    assert f"{result.clean_accuracy:.2%}" in panel.results.text()
    assert panel.grid.count() > 0
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert window.grab().save(str(SHOTS / "model_panel_after_evaluate.png"))


def _fully_inside(widget, viewport) -> bool:
    """Whether ``widget`` lies wholly inside ``viewport`` (what the analyst sees of a scroll area)."""
    from PySide6.QtCore import QPoint, QRect

    return viewport.rect().contains(QRect(widget.mapTo(viewport, QPoint(0, 0)), widget.size()))


def test_every_sample_caption_is_whole_on_a_1280_by_720_screen(qtbot, window, demo_settings, demo_bundle):
    from gui.app import SCREENSHOT_SIZE
    from gui.model_panel import SAMPLES_PER_KIND

    window.resize(*SCREENSHOT_SIZE)
    window.demo_settings = demo_settings
    window.load_demo()
    wait_idle(qtbot, window)
    panel = window.panels["ModelPanel"]
    panel.evaluate()
    wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: panel.grid.count() > 0)
    qtbot.wait(50)  # the grid's layout settles
    captions = panel.grid_host.findChildren(type(panel.results), "sample_caption")
    assert len(captions) == 2 * SAMPLES_PER_KIND
    viewport = panel.samples_scroll.viewport()
    for caption in captions:
        assert caption.isVisible() and _fully_inside(caption, viewport), caption.text()
        hint = caption.sizeHint()
        assert caption.width() >= hint.width() and caption.height() >= hint.height(), caption.text()
    assert not window.progress.isVisible()  # idle after the job: no bar stuck at 0%


def test_the_progress_bar_shows_only_while_a_job_runs(qtbot, window):
    assert not window.progress.isVisible()
    release = []

    def job():
        yield Progress(0.5, "half way")
        while not release:
            time.sleep(0.01)
            yield Progress(0.5, "half way")
        return 42

    results = []
    window.start_job("a job", job, results.append)
    qtbot.waitUntil(lambda: window.status.text() == "half way", timeout=5000)
    assert window.progress.isVisible() and window.progress.value() == 500
    release.append(True)
    wait_idle(qtbot, window, timeout=5000)
    assert results == [42]
    assert not window.progress.isVisible()
    window.start_job("another", job, results.append)  # release is still set: it finishes at once
    wait_idle(qtbot, window, timeout=5000)
    assert results == [42, 42] and not window.progress.isVisible()


def test_bad_model_file_shows_an_error_and_the_window_lives_on(qtbot, window, tmp_path):
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with qtbot.waitSignal(window.error_shown, timeout=60_000) as signal:
        window.open_model(str(bad))
    assert "broken.h5" in signal.args[0]
    wait_idle(qtbot, window)
    assert window.state.loaded is None
    assert window.isVisible()


def test_cancel_stops_a_job_within_a_second(qtbot, window):
    cleaned = []

    def endless():
        try:
            while True:
                time.sleep(0.05)
                yield Progress(None, "working")
        finally:
            cleaned.append(True)

    window.start_job("endless", endless)
    qtbot.waitUntil(lambda: window.status.text() == "working", timeout=5000)
    started = time.monotonic()
    window.cancel_button.click()
    wait_idle(qtbot, window, timeout=5000)
    assert time.monotonic() - started < 1.0
    assert cleaned == [True]
    assert "Cancelled" in window.status.text()


def test_recent_files_persist(qtbot, window, demo_bundle):
    window.open_data("clean_test", str(demo_bundle.clean_test))
    wait_idle(qtbot, window)
    assert ["clean_test", str(demo_bundle.clean_test)] in window._recent()
    assert any(str(demo_bundle.clean_test) in a.text() for a in window.recent_menu.actions())
