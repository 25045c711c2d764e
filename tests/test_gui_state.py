"""The session registry: results published with what they were measured on; new models clear, new data marks stale."""

from __future__ import annotations

import types
from pathlib import Path

from gui.state import AppState, Kind


def _model(sha):
    return types.SimpleNamespace(summary=types.SimpleNamespace(sha256=sha))


def _data(path):
    return types.SimpleNamespace(path=Path(path))


def test_new_model_clears_and_new_data_marks_stale(qtbot):
    state = AppState()
    lines = []
    state.results_stale.connect(lines.append)
    state.set_model(_model("a" * 64))
    state.set_data("clean_test", _data("/x/clean.h5"))
    state.set_data("poisoned", _data("/x/poisoned.h5"))
    state.publish(Kind.EVALUATION, "eval", ["clean_test", "poisoned"])
    state.publish(Kind.SCAN, "scan 1")
    state.publish(Kind.SCAN, "scan 2")
    assert [e.value for e in state.results.all(Kind.SCAN)] == ["scan 1", "scan 2"]  # every scan kept
    assert state.results.latest(Kind.EVALUATION).data == {"clean_test": "/x/clean.h5", "poisoned": "/x/poisoned.h5"}

    state.set_data("poisoned", _data("/y/other.h5"))
    entry = state.results.latest(Kind.EVALUATION)
    assert entry.stale and "poisoned.h5" in entry.stale and state.results.value(Kind.EVALUATION) is None
    assert state.results.value(Kind.SCAN) == "scan 2"  # not measured on the poisoned set
    assert "1 result(s)" in lines[-1]

    state.set_model(_model("b" * 64))
    assert list(state.results.entries()) == [] and "cleared" in lines[-1]
