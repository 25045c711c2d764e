"""The one GUI job controller: run a core generator job on a QThread, report how it ended.

Every panel starts its work through ``window.start_job`` (which calls
:meth:`JobController.start`), so every job ends the same way: exactly one of
``done(result)``, ``cancelled()`` or ``failed(exception)`` -- the exception
object itself, so callers test its type instead of matching message text --
followed by ``ended(outcome)`` and ``idle()``. A panel's live curves
(:class:`gui.live_curve.LiveCurves`) are handed to the controller with the job:
their redraw timer starts with it and is stopped, after a last redraw, on every
ending, so a cancel or an error can never leave a timer running.

The worker is superqt's GeneratorWorker idea in a few lines: pull the next
event, check the cancel flag, and turn the generator's return value into
``done``. Events are coalesced on the worker and crossed to the GUI thread at
most every :data:`COALESCE_S` seconds as one list, so a job that yields
thousands of small events costs the GUI thread tens of wake-ups, not thousands.
Cancelling closes the generator, so the job's own ``finally`` blocks remove
temporary files.
"""

from __future__ import annotations

import gc
import sys
import time
import traceback
from typing import Any, Callable, Iterable, Optional

from PySide6.QtCore import QObject, QThread, QTimer, Signal, Slot

from core.errors import JobCancelled, TrojanScopeError
from core.jobs import CancelToken, Job

COALESCE_S = 0.03  # events cross to the GUI thread at most ~33 times a second
DONE, CANCELLED, FAILED = "done", "cancelled", "failed"
BACKGROUND_NICE = 5  # the worker's threads yield the CPU to the GUI thread (CFS weight about 1:3)
# How long a thread holding the GIL keeps it when another asks (Python's default: 5 ms). A
# redraw takes and gives back the GIL dozens of times; against a worker that is
# tracing a TensorFlow graph in Python each take waited the full interval, and the
# waits added up to 140-160 ms gaps (bench/bench_gui_stalls.py --why, Neural Cleanse).
GIL_SWITCH_INTERVAL_S = 0.001


def lower_background_priority() -> int:
    """Give every thread of this process but the GUI thread a lower CPU priority; returns how many.

    TensorFlow releases the GIL while it computes, but its thread pool then
    takes every core, and on a 2-core laptop the GUI thread waited 0.5-6 s for
    a time slice (bench/bench_gui_stalls.py: the late beats found the GUI
    thread idle in Qt's event loop while the worker sat in
    ``execute.quick_execute``). With the worker's threads at nice 5 the
    scheduler runs the GUI thread first whenever it has work (nice 5: a third of its weight each), and the
    analyses lose almost nothing, since the GUI needs little CPU. Threads
    created later by these inherit their priority. Linux only (elsewhere a
    no-op); threads already at a lower priority stay there.
    """
    import os
    import threading

    if not hasattr(os, "setpriority") or not os.path.isdir("/proc/self/task"):
        return 0
    gui = threading.main_thread().native_id
    changed = 0
    for name in os.listdir("/proc/self/task"):
        tid = int(name)
        if tid == gui:
            continue
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < BACKGROUND_NICE:
                os.setpriority(os.PRIO_PROCESS, tid, BACKGROUND_NICE)
                changed += 1
        except OSError:  # the thread ended meanwhile, or we may not: leave it
            pass
    return changed


_modules_at_freeze = 0


def freeze_imported_objects() -> bool:
    """Exempt what the imports so far created from the cyclic garbage collector's full passes; True if it froze.

    Python's full collection walks every tracked object while holding the GIL.
    After TensorFlow, Keras and matplotlib are imported that is over a million
    objects, and a full pass that a worker's allocations happened to trigger
    stalled the GUI thread for 300-400 ms (bench/bench_gui_stalls.py --why:
    report export, "GIL/CPU starved" with the worker in ``_weakrefset._remove``).
    ``gc.freeze`` moves the objects alive now (modules, classes, functions:
    alive for the whole session anyway) out of the collector's sight. It runs
    only when many modules arrived since the last freeze -- a few times a
    session -- because cyclic garbage alive at a freeze is never collected.
    """
    global _modules_at_freeze
    if len(sys.modules) < _modules_at_freeze + 50:
        return False
    gc.freeze()
    _modules_at_freeze = len(sys.modules)
    return True


def describe_error(exc: BaseException) -> str:
    """The one line shown to the analyst: our own errors as they are, bugs named as bugs."""
    if isinstance(exc, TrojanScopeError):
        return str(exc)
    return f"Internal error ({type(exc).__name__}): {exc}"


class _Worker(QObject):
    events = Signal(list)
    done = Signal(object)
    failed = Signal(object)
    cancelled = Signal()

    def __init__(self, factory: Callable[[], Job], token: CancelToken) -> None:
        super().__init__()
        self._factory = factory
        self._token = token

    @Slot()
    def run(self) -> None:
        job = None
        pending: list[Any] = []
        last = time.monotonic()
        try:
            lower_background_priority()
            freeze_imported_objects()  # TensorFlow imported by the start-up preload thread, not by a job
            job = self._factory()
            while True:
                if self._token.cancelled:
                    raise JobCancelled()
                try:
                    item = next(job)
                except StopIteration as stop:
                    self._flush(pending)
                    self.done.emit(stop.value)
                    return
                pending.append(item)
                now = time.monotonic()
                if now - last >= COALESCE_S:
                    self._flush(pending)
                    last = now
        except JobCancelled:
            self._flush(pending)
            self.cancelled.emit()
        except Exception as exc:  # noqa: BLE001 -- every error reaches the window, typed
            if not isinstance(exc, TrojanScopeError):
                traceback.print_exc()  # a bug: keep the trace for the developer, never crash the window
            self._flush(pending)
            self.failed.emit(exc)
        finally:
            if job is not None:
                job.close()
            freeze_imported_objects()  # a job that imported TensorFlow or matplotlib: the next job's passes skip them

    def _flush(self, pending: list[Any]) -> None:
        if pending:
            self.events.emit(list(pending))
            pending.clear()


class _Callbacks:
    """What one job's starter asked to be told (all optional)."""

    def __init__(self, on_event: Any, on_result: Any, on_error: Any, on_cancel: Any, on_end: Any, live: Iterable[Any]) -> None:
        self.on_event, self.on_result, self.on_error = on_event, on_result, on_error
        self.on_cancel, self.on_end, self.live = on_cancel, on_end, list(live)


class JobController(QObject):
    """Runs one job at a time for every panel; one ending per job, live curves stopped on each."""

    started = Signal(str)
    event = Signal(object)
    done = Signal(object)
    failed = Signal(object)  # the exception (TrojanScopeError: the analyst's input; anything else: a bug)
    cancelled = Signal()
    ended = Signal(str)  # DONE, CANCELLED or FAILED
    idle = Signal()

    def __init__(self, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        self._thread: Optional[QThread] = None
        self._worker: Optional[_Worker] = None
        self._token: Optional[CancelToken] = None
        self._callbacks: Optional[_Callbacks] = None
        self._winding_down: list[tuple[QThread, _Worker]] = []  # ended jobs whose threads are still quitting
        self.name = ""
        self.last_outcome = ""

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def start(
        self,
        name: str,
        factory: Callable[[], Job],
        on_result: Optional[Callable[[Any], None]] = None,
        on_event: Optional[Callable[[Any], None]] = None,
        on_error: Optional[Callable[[BaseException], None]] = None,
        on_cancel: Optional[Callable[[], None]] = None,
        on_end: Optional[Callable[[str], None]] = None,
        live: Iterable[Any] = (),
    ) -> bool:
        """Start ``factory()`` on a worker thread; False (and nothing started) when another job runs.

        ``live``: :class:`gui.live_curve.LiveCurves` to redraw while the job
        runs; their timers stop on every ending, before the callbacks run.
        """
        if self.busy:
            return False
        self.name = name
        self._token = CancelToken()
        self._callbacks = _Callbacks(on_event, on_result, on_error, on_cancel, on_end, live)
        thread = QThread()
        worker = _Worker(factory, self._token)
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        # Connect to this object's slots, never to plain callables: a slot of a
        # QObject living on the GUI thread is called there (queued), while a
        # plain function would run on the worker thread and touch widgets.
        worker.events.connect(self._forward_events)
        worker.done.connect(self._forward_done)
        worker.failed.connect(self._forward_failed)
        worker.cancelled.connect(self._forward_cancelled)
        for signal in (worker.done, worker.failed, worker.cancelled):
            signal.connect(thread.quit)
        thread.finished.connect(self._cleanup)
        self._thread, self._worker = thread, worker
        for curves in self._callbacks.live:
            curves.start()
        # The worker starts after the event loop's next pass, so the window first repaints what the
        # click changed (cleared plots, "running" headline): a repaint competing for the GIL with a
        # worker tracing a TensorFlow graph took twice its time (bench/bench_gui_stalls.py --why).
        QTimer.singleShot(0, thread.start)
        self.started.emit(name)
        return True

    def cancel(self) -> None:
        if self._token is not None:
            self._token.cancel()

    def wait(self, msecs: int = 60_000) -> bool:
        """Block until the current job's thread (and any still quitting) ends (tests, shutdown)."""
        threads = [t for t, _w in self._winding_down] + ([self._thread] if self._thread is not None else [])
        return all(t.wait(msecs) for t in threads)

    # ------------------------------------------------------------ endings

    @Slot(list)
    def _forward_events(self, items: list) -> None:
        callbacks = self._callbacks
        for item in items:
            self.event.emit(item)
            if callbacks is not None and callbacks.on_event:
                callbacks.on_event(item)

    def _end(self, outcome: str) -> Optional[_Callbacks]:
        """The job is over: free the controller at once, so an ending callback may start the next job."""
        callbacks, self._callbacks = self._callbacks, None
        self.last_outcome = outcome
        if self._thread is not None:
            self._winding_down.append((self._thread, self._worker))
        self._thread = self._worker = self._token = None
        if callbacks is not None:
            for curves in callbacks.live:
                curves.stop()
        return callbacks

    @Slot(object)
    def _forward_done(self, result: Any) -> None:
        callbacks = self._end(DONE)
        self.done.emit(result)
        if callbacks is not None and callbacks.on_result:
            callbacks.on_result(result)
        self._ended(callbacks, DONE)

    @Slot(object)
    def _forward_failed(self, exc: BaseException) -> None:
        callbacks = self._end(FAILED)
        self.failed.emit(exc)
        if callbacks is not None and callbacks.on_error:
            callbacks.on_error(exc)
        self._ended(callbacks, FAILED)

    @Slot()
    def _forward_cancelled(self) -> None:
        callbacks = self._end(CANCELLED)
        self.cancelled.emit()
        if callbacks is not None and callbacks.on_cancel:
            callbacks.on_cancel()
        self._ended(callbacks, CANCELLED)

    def _ended(self, callbacks: Optional[_Callbacks], outcome: str) -> None:
        if callbacks is not None and callbacks.on_end:
            callbacks.on_end(outcome)
        self.ended.emit(outcome)
        if not self.busy:  # no callback chained another job
            self.idle.emit()

    @Slot()
    def _cleanup(self) -> None:
        """A quitting thread has finished: delete it and its worker."""
        for pair in [p for p in self._winding_down if p[0].isFinished()]:
            self._winding_down.remove(pair)
            thread, worker = pair
            worker.deleteLater()
            thread.deleteLater()
