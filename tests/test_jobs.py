"""The generator job protocol: events, results, cancel with cleanup, atomic outputs."""

from __future__ import annotations

import pytest

from core.intake.atomic import atomic_path, refuse_overwriting
from core.errors import JobCancelled, TrojanScopeError
from core.jobs import CancelToken, Progress, collect, run_job


def _job(log, out):
    try:
        with atomic_path(out) as tmp:
            for i in range(5):
                tmp.write_text(str(i))
                yield Progress(i / 5, f"step {i}")
        return "done"
    finally:
        log.append("cleaned")


def test_run_job_returns_the_result_and_forwards_events(tmp_path):
    log = []
    events, result = collect(_job(log, tmp_path / "out.txt"))
    assert result == "done"
    assert [e.message for e in events] == [f"step {i}" for i in range(5)]
    assert (tmp_path / "out.txt").read_text() == "4"
    assert log == ["cleaned"]


def test_cancel_runs_cleanup_and_leaves_no_output(tmp_path):
    log, token = [], CancelToken()

    def on_event(event):
        if event.message == "step 2":
            token.cancel()

    with pytest.raises(JobCancelled):
        run_job(_job(log, tmp_path / "out.txt"), on_event, token)
    assert log == ["cleaned"]
    assert list(tmp_path.iterdir()) == []


def test_outputs_never_replace_inputs(tmp_path):
    src = tmp_path / "model.keras"
    src.write_text("original")
    with pytest.raises(TrojanScopeError, match="refusing to write over the input"):
        refuse_overwriting(tmp_path / "." / "model.keras", src)
