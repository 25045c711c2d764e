"""``--self-test``: passes end to end on the real engines, and fails loudly when a step is not sane."""

from __future__ import annotations

import io



def test_self_test_passes_end_to_end_and_cleans_up(tmp_path):
    from core import selftest

    out = io.StringIO()
    code = selftest.main(out, workdir=tmp_path)
    lines = out.getvalue().splitlines()
    assert code == 0, out.getvalue()
    steps = [line for line in lines if line.startswith("[")]
    assert len(steps) == len(selftest.STEPS) and all(line.startswith("[ok  ]") for line in steps)
    assert lines[-1].startswith("self-test PASSED: 8/8 steps")
    assert list(tmp_path.iterdir()) == []  # the temporary demo and report are gone


def test_a_failing_step_stops_the_self_test_with_exit_1(tmp_path, monkeypatch):
    from core import selftest
    from core.jobs import collect

    ran = []

    def fine(ctx):
        ran.append("fine")
        yield from ()
        return "all good"

    def insane(ctx):
        yield from ()
        selftest._check(False, "accuracy 0.02 is below chance")

    def never(ctx):
        ran.append("never")
        yield from ()
        return ""

    monkeypatch.setattr(selftest, "STEPS", [("fine", fine), ("insane", insane), ("never", never)])
    events, result = collect(selftest.self_test(workdir=tmp_path))
    assert not result.ok and ran == ["fine"]
    assert [(e.name, e.ok) for e in events if isinstance(e, selftest.StepDone)] == [("fine", True), ("insane", False)]
    assert "accuracy 0.02 is below chance" in result.steps[-1].line()
    out = io.StringIO()
    assert selftest.main(out, workdir=tmp_path) == 1
    assert "self-test FAILED: 1/3 steps" in out.getvalue()
    assert list(tmp_path.iterdir()) == []


def test_a_crash_names_where_it_happened(tmp_path, monkeypatch):
    from core import selftest
    from core.jobs import collect

    def crash(ctx):
        yield from ()
        return {}["missing"]

    monkeypatch.setattr(selftest, "STEPS", [("crash", crash)])
    _, result = collect(selftest.self_test(workdir=tmp_path))
    assert "KeyError" in result.steps[0].detail and "test_selftest.py:" in result.steps[0].detail
