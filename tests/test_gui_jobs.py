"""The job controller: one ending per job, typed errors, live-curve timers stopped on every ending."""

from __future__ import annotations

import time

import pyqtgraph as pg
import pytest

from core.errors import DataError
from core.jobs import Progress
from gui.live_curve import LiveCurves
from tests.conftest import wait_idle


def _curves(window):
    window.test_plot = plot = pg.PlotWidget()  # kept alive as long as the window
    curves = LiveCurves(window)
    curves.add("y", plot.plot([], []))
    return curves


def _points(n, fail=None, sleep=0.0):
    for i in range(n):
        if sleep:
            time.sleep(sleep)
        yield Progress(i / n, f"point {i}")
    if fail is not None:
        raise fail
    return n


@pytest.mark.parametrize("how", ["done", "failed", "cancelled"])
def test_each_job_ends_once_and_stops_its_live_timer(qtbot, window, how):
    curves = _curves(window)
    seen = {"result": [], "error": [], "cancel": [], "end": [], "events": 0}

    def on_event(event):
        seen["events"] += 1
        curves.append("y", seen["events"], event.fraction)
        if how == "cancelled" and seen["events"] == 3:
            window.runner.cancel()

    factory = {
        "done": lambda: _points(5),
        "failed": lambda: _points(5, DataError("broken.h5: expected images, received text")),
        "cancelled": lambda: _points(10_000, sleep=0.01),
    }[how]
    assert window.start_job("test", factory, seen["result"].append, on_event, seen["error"].append,
                            on_cancel=lambda: seen["cancel"].append(True), on_end=seen["end"].append, live=curves)
    assert curves.running
    wait_idle(qtbot, window, timeout=20_000)
    assert seen["end"] == [how] and window.runner.last_outcome == how
    assert not curves.running  # no timer left behind, whatever the ending
    assert curves["y"].n == seen["events"] > 0
    if how == "done":
        assert seen["result"] == [5] and not seen["error"] and not seen["cancel"]
    elif how == "failed":
        assert isinstance(seen["error"][0], DataError) and not seen["result"]  # the exception itself
        assert window.last_error == "broken.h5: expected images, received text"
    else:
        assert seen["cancel"] == [True] and not seen["result"] and seen["events"] < 10_000


def test_a_second_job_is_refused_while_one_runs(qtbot, window):
    assert window.start_job("slow", lambda: _points(50, sleep=0.01))
    assert not window.start_job("other", lambda: _points(1))
    assert "Busy with slow" in window.status.text()
    wait_idle(qtbot, window)


def test_a_bug_reaches_the_dialog_as_an_internal_error(qtbot, window):
    errors = []
    window.start_job("bug", lambda: _points(2, ZeroDivisionError("division by zero")), on_error=errors.append)
    wait_idle(qtbot, window)
    assert isinstance(errors[0], ZeroDivisionError)
    assert window.last_error == "Internal error (ZeroDivisionError): division by zero"


def test_heavy_imports_are_frozen_out_of_full_collections_once(window):
    import gc
    import sys

    from gui import jobs

    gc.unfreeze()
    jobs._modules_at_freeze = 0
    assert jobs.freeze_imported_objects()  # the test session has imported hundreds of modules
    frozen = gc.get_freeze_count()
    assert frozen > 10_000
    assert not jobs.freeze_imported_objects()  # nothing new was imported: no second freeze
    assert jobs._modules_at_freeze == len(sys.modules)


def test_the_controller_lets_the_gui_thread_take_the_gil_back_within_a_millisecond(window):
    import sys

    from gui.jobs import GIL_SWITCH_INTERVAL_S

    assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL_S)
    assert GIL_SWITCH_INTERVAL_S <= 0.001
