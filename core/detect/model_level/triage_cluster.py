"""Triage on a Dask cluster (dask.distributed): each model one task, results stored as they arrive.

``triage(..., workers=N)`` starts a ``LocalCluster`` of N worker processes on this machine (one task at a
time each, TensorFlow's threads split between them); ``triage(..., scheduler="tcp://host:port")`` sends
the models to an existing cluster whose workers run the same TrojanScope (docs/scale.md).

What crosses the wire, and why it is safe to receive:

- to the workers: the clean data, once per worker, as a worker plugin (:class:`CleanData`: the scheduler
  hands it to every worker, also to one that joins or restarts later); for each model its bytes -- only
  after the isolated pre-scan passed them here (core.intake.models.scan_model): a hostile file is refused
  on this machine and never becomes a task -- and the settings as a dict of plain values.
- back from the workers: one JSON text per model (core.detect.model_level.triage_work's outcome format),
  parsed with ``json`` and checked field by field (``parse_outcome``). The client is created with
  ``deserializers=["msgpack"]``, so a task result that is anything but plain data (a pickle) is refused by
  Dask itself before TrojanScope sees it. Dask's own protocol messages (task errors such as
  ``KilledWorker``, cluster state) are Dask's business.

A worker that dies (killed, out of memory, a crash in native code) while judging a model: the scheduler
reports it at once (``allowed-failures`` 0 on a local cluster; an existing cluster applies its own) and
the model is submitted once more; when that worker dies too, the model is stored as failed with the
reason, and the run goes on. At most two tasks per worker thread are in flight, so the bytes held
in memory stay bounded however many models there are.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional

import dask
from distributed import Client, Future, KilledWorker, LocalCluster, get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from core.detect.model_level.triage_work import TriageSettings, configure_threads, judge_scanned, outcome, parse_outcome, worker_name
from core.errors import TrojanScopeError
from core.intake.data import DataSource
from core.intake.models import ScannedModel, scan_model
from core.jobs import Job, Progress, run_job

ATTEMPTS = 2  # a model whose worker died is submitted once more, then stored as failed
IN_FLIGHT_PER_THREAD = 2  # tasks submitted ahead per worker thread: workers never wait, memory stays bounded
TICK_S = 0.2
# Set for this process once a cluster is used: the scheduler gives up on a task at its first dead worker (we
# resubmit it once ourselves), queues tasks on the scheduler rather than on busy workers (a task waiting on a
# worker would die with it), and worker processes may start children (the isolated pre-scan, in a frozen build).
CLUSTER_CONFIG = {"distributed.scheduler.allowed-failures": 0, "distributed.scheduler.worker-saturation": 1.0,
                  "distributed.worker.daemon": False}


class CleanData(WorkerPlugin):
    """The clean data, held by every worker for every model of the run."""

    def __init__(self, clean: DataSource) -> None:
        self.clean = clean


def judge_task(data: bytes, source: str, sha256: str, kind: str, keras_version: Optional[str], settings: dict, plugin: str) -> str:
    """What a worker runs for one model: scan the bytes again (isolated, as any file), judge, answer JSON text."""
    started = time.perf_counter()
    try:
        configure_threads()
        clean = get_worker().plugins[plugin].clean
        scanned = ScannedModel(source, data, kind, keras_version, sha256)
        result = run_job(judge_scanned(scanned, clean, TriageSettings.from_dict(settings), rescan=True, worker=worker_name()))
    except TrojanScopeError as exc:
        result = outcome("refused", source, sha256, time.perf_counter() - started, worker=worker_name(), reason=str(exc))
    except Exception as exc:  # noqa: BLE001 -- answered as a failure with the reason; a raised exception would travel pickled
        first = str(exc).splitlines()[0] if str(exc) else ""
        result = outcome("failed", source, sha256, time.perf_counter() - started, worker=worker_name(),
                         reason=f"internal error on worker {worker_name()} ({type(exc).__name__}): {first}")
    return json.dumps(result, allow_nan=False)


@dataclass
class _Attempt:
    entry: Any  # core.detect.model_level.triage._Entry
    scanned: ScannedModel
    attempts: int
    submitted: float


def run_on_cluster(run: Any, todo: list, workers: int, scheduler: Optional[str], task: Optional[Callable[..., str]] = None) -> Job[None]:
    """Judge ``todo`` (core.detect.model_level.triage's entries) on a cluster, recording each outcome in ``run`` as it arrives."""
    fn = task or judge_task
    settings = run.settings.as_dict()
    plugin = f"trojanscope-clean-{run.id}"
    where = f"the Dask cluster at {scheduler}" if scheduler else f"a local Dask cluster of {workers} worker processes"
    yield Progress(0.02, f"Triage: starting {where}" if not scheduler else f"Triage: connecting to {where}")
    cluster, client = _connect(workers, scheduler)
    inflight: dict[Future, _Attempt] = {}
    try:
        client.register_plugin(CleanData(run.clean), name=plugin)
        queue = deque(todo)
        threads, threads_checked = _threads(client), time.monotonic()
        total = len(todo)
        while queue or inflight:
            if time.monotonic() - threads_checked > 5.0:
                threads, threads_checked = _threads(client), time.monotonic()
            while queue and len(inflight) < IN_FLIGHT_PER_THREAD * max(threads, 1):
                entry = queue.popleft()
                started = time.perf_counter()
                try:
                    scanned = scan_model(entry.path)  # here, before any worker sees the file
                except TrojanScopeError as exc:
                    run.record(entry, outcome("refused", str(entry.path), str(entry.sha256), time.perf_counter() - started, reason=str(exc)))
                    yield run.status()
                    continue
                inflight[_submit(client, fn, scanned, settings, plugin)] = _Attempt(entry, scanned, 1, time.monotonic())
                yield _progress(run, total, queue, inflight, threads)
            finished = [f for f in inflight if f.done()]
            for future in finished:
                attempt = inflight.pop(future)
                result = _collect(future, attempt)
                if result is None:  # its worker died: once more
                    inflight[_submit(client, fn, attempt.scanned, settings, plugin)] = _Attempt(
                        attempt.entry, attempt.scanned, attempt.attempts + 1, time.monotonic())
                    continue
                row = run.record(attempt.entry, result)
                if row is not None:
                    yield row
                yield run.status()
            if not finished:
                time.sleep(TICK_S)
            yield _progress(run, total, queue, inflight, threads)
    finally:
        for future in inflight:
            future.cancel()
        with contextlib.suppress(Exception):  # closing down: the cluster may already be gone
            client.unregister_worker_plugin(plugin)
        client.close()
        if cluster is not None:
            cluster.close()


def _connect(workers: int, scheduler: Optional[str]) -> tuple[Optional[LocalCluster], Client]:
    dask.config.set(CLUSTER_CONFIG)
    if scheduler:
        try:
            return None, Client(scheduler, timeout=20, deserializers=["msgpack"])
        except (OSError, TimeoutError, ValueError) as exc:
            raise TrojanScopeError(f"cannot reach the Dask scheduler at {scheduler} ({exc}): is the cluster running, and is "
                                   "this its address?", fixed_by=("scheduler",)) from None
    threads = max(1, (os.cpu_count() or 1) // workers)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.CRITICAL,
                           env={"TROJANSCOPE_TF_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)})
    try:
        return cluster, Client(cluster, deserializers=["msgpack"])
    except BaseException:
        cluster.close()
        raise


def _submit(client: Client, fn: Callable[..., str], scanned: ScannedModel, settings: dict, plugin: str) -> Future:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*large graph.*", category=UserWarning)  # a model's bytes travel with its task
        return client.submit(fn, scanned.data, scanned.path, scanned.sha256, scanned.kind, scanned.keras_version, settings, plugin,
                             pure=False, retries=0)


def _collect(future: Future, attempt: _Attempt) -> Optional[dict[str, Any]]:
    """The outcome of a finished task; None when its worker died and it may be tried once more."""
    path, sha = str(attempt.entry.path), attempt.scanned.sha256
    spent = time.monotonic() - attempt.submitted
    if future.status == "finished":
        try:
            result = parse_outcome(future.result(), path, sha)
        except (ValueError, TypeError) as exc:  # TypeError: Dask refused a result that was not plain data
            return outcome("failed", path, sha, spent, reason=f"the worker's answer was refused: {exc}", attempts=attempt.attempts)
        result["attempts"] = attempt.attempts
        return result
    if future.status == "error":
        exc = future.exception()
        if isinstance(exc, KilledWorker):
            if attempt.attempts < ATTEMPTS:
                return None
            return outcome("failed", path, sha, spent, attempts=attempt.attempts,
                           reason=f"the worker judging it died {attempt.attempts} times (killed, out of memory, or a crash)")
        return outcome("failed", path, sha, spent, attempts=attempt.attempts,
                       reason=f"the Dask task failed ({type(exc).__name__}: {' '.join(str(exc).split())[:300]})")
    if attempt.attempts < ATTEMPTS:  # cancelled by the cluster (its scheduler restarted, the data was lost)
        return None
    return outcome("failed", path, sha, spent, attempts=attempt.attempts, reason=f"the cluster dropped the task ({future.status})")


def _threads(client: Client) -> int:
    try:
        return sum(client.nthreads().values())
    except (OSError, TimeoutError):
        return 1


def _progress(run: Any, total: int, queue: deque, inflight: dict, threads: int) -> Progress:
    finished = total - len(queue) - len(inflight)
    return Progress(0.02 + 0.98 * finished / max(total, 1),
                    f"Triage: {run.status().line()} ({len(inflight)} in progress or queued on {threads} worker thread(s))")
