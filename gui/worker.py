"""Run a core generator job on a QThread and forward what it yields as signals.

The worker is deliberately thin (superqt's GeneratorWorker idea in one small
file): it pulls the next event, emits it, checks the cancel flag, and turns
the generator's return value into ``finished``. Cancelling closes the
generator, so the job's own ``finally`` blocks remove temporary files.
"""

from __future__ import annotations

import traceback
from typing import Any, Callable, Optional

from PySide6.QtCore import QObject, QThread, Signal, Slot

from core.errors import JobCancelled, TrojanScopeError
from core.jobs import CancelToken, Job


class _Worker(QObject):
    event = Signal(object)
    finished = Signal(object)
    failed = Signal(str)
    cancelled = Signal()

    def __init__(self, factory: Callable[[], Job], token: CancelToken) -> None:
        super().__init__()
        self._factory = factory
        self._token = token

    @Slot()
    def run(self) -> None:
        job = None
        try:
            job = self._factory()
            while True:
                if self._token.cancelled:
                    raise JobCancelled()
                try:
                    item = next(job)
                except StopIteration as stop:
                    self.finished.emit(stop.value)
                    return
                self.event.emit(item)
        except JobCancelled:
            self.cancelled.emit()
        except TrojanScopeError as exc:
            self.failed.emit(str(exc))
        except Exception as exc:  # noqa: BLE001 -- a bug: report it, never crash the window
            traceback.print_exc()
            self.failed.emit(f"Internal error ({type(exc).__name__}): {exc}")
        finally:
            if job is not None:
                job.close()


class JobRunner(QObject):
    """Runs one job at a time; panels share one runner through the main window."""

    started = Signal(str)
    event = Signal(object)
    finished = Signal(object)
    failed = Signal(str)
    cancelled = Signal()
    idle = Signal()

    def __init__(self, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self._thread: Optional[QThread] = None
        self._worker: Optional[_Worker] = None
        self._token: Optional[CancelToken] = None
        self._callbacks: tuple = (None, None, None)
        self.name = ""

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def start(
        self,
        name: str,
        factory: Callable[[], Job],
        on_event: Optional[Callable[[Any], None]] = None,
        on_result: Optional[Callable[[Any], None]] = None,
        on_error: Optional[Callable[[str], None]] = None,
    ) -> bool:
        """Start ``factory()`` on a worker thread; False when another job runs."""
        if self.busy:
            return False
        self.name = name
        self._token = CancelToken()
        self._callbacks = (on_event, on_result, on_error)
        thread = QThread()
        worker = _Worker(factory, self._token)
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        # Connect to this object's slots, never to plain callables: a slot of a
        # QObject living on the GUI thread is called there (queued), while a
        # plain function would run on the worker thread and touch widgets.
        worker.event.connect(self._forward_event)
        worker.finished.connect(self._forward_finished)
        worker.failed.connect(self._forward_failed)
        worker.cancelled.connect(self.cancelled)
        for signal in (worker.finished, worker.failed, worker.cancelled):
            signal.connect(thread.quit)
        thread.finished.connect(self._cleanup)
        self._thread, self._worker = thread, worker
        thread.start()
        self.started.emit(name)
        return True

    @Slot(object)
    def _forward_event(self, item: Any) -> None:
        self.event.emit(item)
        if self._callbacks[0]:
            self._callbacks[0](item)

    @Slot(object)
    def _forward_finished(self, result: Any) -> None:
        self.finished.emit(result)
        if self._callbacks[1]:
            self._callbacks[1](result)

    @Slot(str)
    def _forward_failed(self, message: str) -> None:
        self.failed.emit(message)
        if self._callbacks[2]:
            self._callbacks[2](message)

    def cancel(self) -> None:
        if self._token is not None:
            self._token.cancel()

    def wait(self, msecs: int = 60_000) -> bool:
        """Block until the current job's thread ends (tests, shutdown)."""
        return self._thread.wait(msecs) if self._thread is not None else True

    @Slot()
    def _cleanup(self) -> None:
        thread, worker = self._thread, self._worker
        self._thread = self._worker = self._token = None
        if worker is not None:
            worker.deleteLater()
        if thread is not None:
            thread.deleteLater()
        self.idle.emit()
