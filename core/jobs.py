"""Long analyses as generator jobs.

A job is a plain generator: it ``yield``s small frozen events (progress, a new
curve point, a partial table row) and ``return``s its result. Whoever drives
it -- the GUI's QThread worker, the CLI's ``for`` loop, a test -- decides what
to do with the events, and cancels simply by not asking for the next one
(``generator.close()`` runs the job's ``finally`` blocks, which is where
temporary files are removed). Jobs therefore yield at least every few hundred
milliseconds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Generator, Optional, TypeVar

from core.errors import JobCancelled

R = TypeVar("R")
Job = Generator[Any, None, R]


@dataclass(frozen=True)
class Progress:
    """How far a job has come; ``fraction`` is None when unknown."""

    fraction: Optional[float]
    message: str = ""


class CancelToken:
    """A thread-safe flag the driver sets and the job (or driver) checks."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


def run_job(
    job: Job[R],
    on_event: Optional[Callable[[Any], None]] = None,
    cancel: Optional[CancelToken] = None,
) -> R:
    """Drive ``job`` to completion, forwarding each event; return its result.

    Checks ``cancel`` between events: on cancel the generator is closed (its
    cleanup runs) and :class:`JobCancelled` is raised.
    """
    try:
        while True:
            if cancel is not None and cancel.cancelled:
                raise JobCancelled()
            event = next(job)
            if on_event is not None:
                on_event(event)
    except StopIteration as stop:
        return stop.value
    finally:
        job.close()


def rescaled(job: Job[R], lo: float, hi: float) -> Job[R]:
    """Pass a sub-job's events through, mapping its progress into [lo, hi].

    Lets a job that chains sub-jobs (sweep then fine-tune, cleanse then
    unlearn) report one progress bar that only moves forward.
    """
    try:
        while True:
            event = next(job)
            if isinstance(event, Progress) and event.fraction is not None:
                event = Progress(lo + (hi - lo) * event.fraction, event.message)
            yield event
    except StopIteration as stop:
        return stop.value
    finally:
        job.close()


def collect(job: Job[R]) -> tuple[list[Any], R]:
    """Run ``job`` and return (all events, result); handy in tests."""
    events: list[Any] = []
    result = run_job(job, events.append)
    return events, result
