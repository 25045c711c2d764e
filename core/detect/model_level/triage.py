"""Triage: rank every model in a folder by how suspicious it is, resumably, on one machine or a Dask cluster.

Analysts receive models in batches, and an audit of a model registry is hundreds of them. Triage runs
the same checks as the ``cleanse`` command (core.detect.model_level.judge: Neural Cleanse, MM-BD, one
combined verdict) on each model file of a folder with the same clean data, and ranks them:
"backdoored" first, then "suspicious", then "no evidence found", each group by its suspicion score.

- Files that cannot be opened safely (not a model, truncated, hostile: a Lambda layer, an HDF5 external
  link...) never stop the batch: they are refused with the reason, as every command skips unreadable
  inputs. The pre-scan runs here, before any model is handed on (core.intake.models.scan_model), so a
  hostile file never reaches a worker. A model whose input shape differs from the clean data gets the data
  converted (size and channels, as core.intake.data does for every analysis) when the analyst allowed it,
  or is refused with both shapes named.
- Every finished model's outcome goes into a results store (core.detect.model_level.triage_store: SQLite)
  the moment it finishes; a run with the same settings takes the models already there instead of judging
  them again (``fresh`` ignores them), so a crash or a cancel loses at most the models in progress.
- The work runs here by default, one model after another; with ``workers`` on a local Dask cluster of that
  many processes, with ``scheduler`` on an existing Dask cluster (core.detect.model_level.triage_cluster).
  Each model is one task; what comes back is JSON (core.detect.model_level.triage_work).
- The ranked table is always built from the store (:func:`stored_table` builds it at any moment, while a
  run is still going), so an interrupted-and-resumed run and an uninterrupted one give the same table.

The clean data is read once, before the first model (core.intake.data.in_memory), and converted to each
model's input shape as it comes.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from core.detect.model_level.cleanse import CleanseSettings
from core.detect.model_level.judge import METHODS
from core.detect.model_level.mmbd import MMBDSettings
from core.detect.model_level.warp import WarpSettings
from core.detect.model_level.triage_store import ResultStore, Stored
from core.detect.model_level.triage_work import TriageRow, TriageSettings, judge_scanned, outcome
from core.detect.model_level.verdict import LEVEL_RANK
from core.errors import DataError, JobCancelled, TrojanScopeError
from core.intake.data import Conversion, DataSource, Skipped, in_memory
from core.intake.models import ScannedModel, file_sha256, scan_model
from core.jobs import Job, Progress, rescaled

__all__ = ["MODEL_SUFFIXES", "TriageResult", "TriageRow", "TriageStatus", "model_files", "rank", "stored_table", "triage"]

MODEL_SUFFIXES = frozenset({".keras", ".h5", ".hdf5"})
TICK_S = 0.2  # the longest a job waits between events while files are hashed or workers compute


@dataclass(frozen=True)
class TriageStatus:
    """Where a triage run stands (yielded after every model, for progress lines and the GUI's headline)."""

    total: int  # model files in the folder
    done: int  # judged or refused, in this run or an earlier one
    failed: int
    remaining: int
    reused: int  # of ``done``, taken from the store without recomputing
    eta_seconds: Optional[float]  # None until a model has been judged in this run

    def line(self) -> str:
        earlier = f" ({self.reused} from earlier runs)" if self.reused else ""
        eta = "" if not self.remaining else f", ETA {duration(self.eta_seconds)}" if self.eta_seconds is not None else ", ETA unknown"
        return f"{self.done}/{self.total} done{earlier}, {self.failed} failed, {self.remaining} remaining{eta}"


@dataclass
class TriageResult:
    rows: list[TriageRow]  # most suspicious first
    skipped: list[Skipped]  # refused: the reason they were not judged
    folder: str
    seconds: float
    details: dict[str, dict[str, Any]] = field(default_factory=dict)  # source -> the full judgement JSON
    failed: list[Skipped] = field(default_factory=list)  # the work died (tried again by the next run)
    pending: list[str] = field(default_factory=list)  # not judged yet (a partial table)
    store: Optional[str] = None  # the results store's path; None: kept in memory
    settings: Optional[str] = None  # the settings id the rows answer
    reused: int = 0  # outcomes taken from the store, not recomputed, in this run
    computed: int = 0  # outcomes this run produced
    mode: str = "in-process"

    @property
    def complete(self) -> bool:
        return not self.pending and not self.failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "results": [r.as_dict() for r in self.rows],
            "skipped": [{**s.as_dict(), "status": "refused"} for s in self.skipped] + [{**s.as_dict(), "status": "failed"} for s in self.failed],
            "models": len(self.rows),
            "seconds": round(self.seconds, 1),
            "failed": len(self.failed),
            "pending": list(self.pending),
            "complete": self.complete,
            "reused": self.reused,
            "computed": self.computed,
            "store": self.store,
            "settings": self.settings,
            "mode": self.mode,
        }


def model_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (recursively, sorted) that could be a model: Keras and HDF5 suffixes."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder: triage expects a folder of model files")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)


def rank(rows: Sequence[TriageRow]) -> list[TriageRow]:
    """Backdoored, then suspicious, then no evidence; within each, the higher score first (ties by path)."""
    return sorted(rows, key=lambda r: (-LEVEL_RANK[r.level], -r.score, r.source))


def duration(seconds: Optional[float]) -> str:
    """'45 s', '12 min', '3 h 20 min'."""
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(int(round(seconds / 60)), 60)
    return f"{hours} h {minutes} min"


# ------------------------------------------------------------------------ the job


def triage(
    folder: str | Path | Sequence[str | Path],
    clean: DataSource,
    scale: str = "auto",
    methods: Sequence[str] = METHODS,
    cleanse_settings: CleanseSettings = CleanseSettings(),
    mmbd_settings: MMBDSettings = MMBDSettings(),
    conversion: Conversion = Conversion(),
    store: Optional[str | Path] = None,
    fresh: bool = False,
    warp_settings: WarpSettings = WarpSettings(),
    workers: int = 0,
    scheduler: Optional[str] = None,
    task: Optional[Callable[..., str]] = None,
) -> Job[TriageResult]:
    """Judge every model file in ``folder`` (or the files listed) on ``clean`` and rank them; refuse what cannot be judged.

    ``store``: the SQLite results store (None: in memory, gone when the job ends). Models whose SHA-256 and
    settings are in it already are not judged again unless ``fresh``. ``workers`` > 0 runs the models on a
    local Dask cluster of that many processes, ``scheduler`` ("tcp://host:port") on an existing cluster;
    ``task`` replaces the function each worker runs (tests). A model whose input the clean data does not fit
    is refused with both shapes named, unless ``conversion`` allows resizing or converting channels. The fit,
    the pixel scale and the pixel range are decided once per model (core.intake.fit.pair).
    """
    run = yield from _prepare(folder, clean, scale, methods, cleanse_settings, mmbd_settings, conversion, store, fresh, warp_settings)
    try:
        todo = run.plan()
        for row in run.stored_rows():
            yield row
        if todo:
            if workers or scheduler:
                from core.detect.model_level.triage_cluster import run_on_cluster

                run.mode = f"cluster at {scheduler}" if scheduler else f"local cluster of {workers} workers"
                run.begin()
                yield from run_on_cluster(run, todo, workers, scheduler, task)
            else:
                run.begin()
                yield from _run_here(run, todo)
        yield Progress(1.0, f"Triage: {run.status().line()}")
        return run.table()
    finally:
        run.close()


def stored_table(
    folder: str | Path | Sequence[str | Path],
    clean: DataSource,
    scale: str = "auto",
    methods: Sequence[str] = METHODS,
    cleanse_settings: CleanseSettings = CleanseSettings(),
    mmbd_settings: MMBDSettings = MMBDSettings(),
    conversion: Conversion = Conversion(),
    store: Optional[str | Path] = None,
    warp_settings: WarpSettings = WarpSettings(),
) -> Job[TriageResult]:
    """The ranked table of what ``store`` holds for these files and settings, judging nothing (partial runs included:
    files not judged yet are ``pending``). Safe while another process writes the store."""
    run = yield from _prepare(folder, clean, scale, methods, cleanse_settings, mmbd_settings, conversion, store, False, warp_settings)
    try:
        run.plan()
        for row in run.stored_rows():
            yield row
        return run.table()
    finally:
        run.close()


@dataclass
class _Entry:
    path: Path
    sha256: Optional[str]  # None: the file could not be read
    reason: str = ""  # why it could not be read


class _Run:
    """One triage run's state: the listing, the store, the counts; records each outcome as it arrives."""

    def __init__(self, files: list[Path], folder: str, clean: DataSource, settings: TriageSettings, db: ResultStore, sid: str,
                 fresh: bool, started: float) -> None:
        self.files, self.folder, self.clean, self.settings = files, folder, clean, settings
        self.db, self.sid, self.fresh, self.started = db, sid, fresh, started
        self.id = uuid.uuid4().hex[:12]
        self.mode = "in-process"
        self.entries: list[_Entry] = []
        self.state: dict[str, str] = {}  # SHA-256 -> "judged", "refused" or "failed", once known (from the store or this run)
        self.reused = self.computed = self.worked = 0
        self.work_started: Optional[float] = None

    # ----------------------------------------------------------------- planning

    def hash_files(self) -> Job[None]:
        last = time.monotonic()
        for i, path in enumerate(self.files):
            try:
                self.entries.append(_Entry(path, file_sha256(path)))
            except OSError as exc:
                self.entries.append(_Entry(path, None, f"cannot read {path}: {exc.strerror or exc}"))
            if time.monotonic() - last > TICK_S:
                last = time.monotonic()
                yield Progress(0.02 * i / len(self.files), f"Triage: reading model file {i + 1}/{len(self.files)}")

    def plan(self) -> list[_Entry]:
        """The entries to judge: not in the store (or ``fresh``), failed earlier, or unusable there; one per SHA-256
        (the same bytes under another name are judged once and shown under both names)."""
        todo, queued = [], set()
        for entry in self.entries:
            if entry.sha256 is None:
                self.db.put(self.sid, outcome("refused", str(entry.path), _unreadable_key(entry.path), 0.0, reason=entry.reason), self.id)
                continue
            if entry.sha256 in self.state or entry.sha256 in queued:
                continue
            stored = None if self.fresh else self.db.get(entry.sha256, self.sid)
            if stored is not None and stored.status in ("judged", "refused") and _usable(stored):
                self.state[entry.sha256] = stored.status
            else:
                todo.append(entry)
                queued.add(entry.sha256)
        self.reused = sum(1 for e in self.entries if e.sha256 in self.state)
        return todo

    def stored_rows(self) -> list[TriageRow]:
        """The judged rows taken from the store for this listing (shown before any new work)."""
        rows = []
        for entry in self.entries:
            if entry.sha256 is not None and self.state.get(entry.sha256) == "judged":
                stored = self.db.get(entry.sha256, self.sid)
                if stored is not None:
                    rows.append(_row(stored, entry.path))
        return rows

    def begin(self) -> None:
        self.db.start_run(self.id, self.sid, self.folder, self.mode)
        self.work_started = time.monotonic()

    # ---------------------------------------------------------------- recording

    def record(self, entry: _Entry, result: dict[str, Any]) -> Optional[TriageRow]:
        """Store one outcome the moment it arrives; the row to show when judged."""
        entry.sha256 = result["sha256"]  # the file may have changed after it was first read: the bytes scanned are the ones judged
        self.db.put(self.sid, result, self.id)
        self.state[result["sha256"]] = result["status"]
        self.computed += 1
        if result["status"] != "refused":
            self.worked += 1
        if result["status"] == "judged":
            return TriageRow.from_dict(result["row"], source=str(entry.path), score=result["score"], seconds=result["seconds"])
        return None

    def status(self) -> TriageStatus:
        done = failed = 0
        for entry in self.entries:
            state = "refused" if entry.sha256 is None else self.state.get(entry.sha256)
            done += state in ("judged", "refused")
            failed += state == "failed"
        remaining = len(self.entries) - done - failed
        eta = None
        if self.worked and self.work_started is not None:
            eta = (time.monotonic() - self.work_started) / self.worked * remaining
        return TriageStatus(len(self.entries), done, failed, remaining, self.reused, eta)

    # -------------------------------------------------------------------- table

    def table(self) -> TriageResult:
        rows, skipped, failed, pending, details = [], [], [], [], {}
        for entry in self.entries:
            if entry.sha256 is None:
                skipped.append(Skipped(str(entry.path), entry.reason))
                continue
            stored = self.db.get(entry.sha256, self.sid)
            if stored is None or not _usable(stored):
                pending.append(str(entry.path))
            elif stored.status == "judged":
                rows.append(_row(stored, entry.path))
                details[str(entry.path)] = stored.judgement or {}
            elif stored.status == "refused":
                skipped.append(Skipped(str(entry.path), stored.reason or "refused"))
            else:
                failed.append(Skipped(str(entry.path), stored.reason or "failed"))
        return TriageResult(rank(rows), skipped, self.folder, time.perf_counter() - self.started, details, failed, pending,
                            None if self.db.path is None else str(self.db.path), self.sid, self.reused, self.computed, self.mode)

    def close(self) -> None:
        self.db.close()


def _prepare(folder: str | Path | Sequence[str | Path], clean: DataSource, scale: str, methods: Sequence[str],
             cleanse_settings: CleanseSettings, mmbd_settings: MMBDSettings, conversion: Conversion,
             store: Optional[str | Path], fresh: bool, warp_settings: WarpSettings) -> Job[_Run]:
    started = time.perf_counter()
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise DataError(f"methods must be among {list(METHODS)}; received {list(methods)}")
    files, where = _listing(folder)
    clean.allow(conversion)
    yield Progress(0.0, f"Triage: reading the clean data once for the {len(files)} model files")
    portable = in_memory(clean, cleanse_settings.max_images)
    settings = TriageSettings(tuple(methods), cleanse_settings, mmbd_settings, scale, conversion, warp_settings)
    db = ResultStore(store)
    try:
        sid = db.register(settings.key(portable))
        run = _Run(files, where, portable, settings, db, sid, fresh, started)
        yield from run.hash_files()
    except BaseException:
        db.close()
        raise
    return run


def _listing(folder: str | Path | Sequence[str | Path]) -> tuple[list[Path], str]:
    if isinstance(folder, (str, Path)):
        where = Path(folder)
        files = model_files(where)
        if not files:
            raise DataError(f"{where} holds no model file (expected {', '.join(sorted(MODEL_SUFFIXES))})")
        return files, str(where)
    files = [Path(f) for f in folder]
    if not files:
        raise DataError("no model file to triage")
    return files, str(files[0].parent)


def _usable(stored: Stored) -> bool:
    if stored.status != "judged":
        return True
    try:
        TriageRow.from_dict(stored.row, score=stored.score, seconds=stored.seconds)
    except (ValueError, TypeError):  # a damaged or foreign row: judge the model again
        return False
    return True


def _row(stored: Stored, path: Path) -> TriageRow:
    return TriageRow.from_dict(stored.row, source=str(path), score=stored.score, seconds=stored.seconds)


def _unreadable_key(path: Path) -> str:
    return "unreadable:" + hashlib.sha256(str(path).encode()).hexdigest()


# ----------------------------------------------------------------- in this process


def _run_here(run: _Run, todo: list[_Entry]) -> Job[None]:
    """One model after another in this process: pre-scan, load, judge, store."""
    for i, entry in enumerate(todo):
        lo, hi = 0.02 + 0.98 * i / len(todo), 0.02 + 0.98 * (i + 1) / len(todo)
        line = run.status().line()
        yield Progress(lo, f"Triage: {line}: opening {entry.path.name}")
        started = time.perf_counter()
        scanned: Optional[ScannedModel] = None
        try:
            scanned = scan_model(entry.path)
            result = yield from _labelled(rescaled(judge_scanned(scanned, run.clean, run.settings), lo, hi), f"[{line}] {entry.path.name}: ")
        except TrojanScopeError as exc:  # unreadable, hostile, or data that cannot fit this model
            result = outcome("refused", str(entry.path), scanned.sha256 if scanned else str(entry.sha256), time.perf_counter() - started,
                             reason=str(exc))
        except JobCancelled:
            raise
        except Exception as exc:  # noqa: BLE001 -- one model's failure must not end an audit of hundreds: stored as failed, with why
            result = outcome("failed", str(entry.path), scanned.sha256 if scanned else str(entry.sha256), time.perf_counter() - started,
                             reason=f"internal error ({type(exc).__name__}): {str(exc).splitlines()[0] if str(exc) else ''}")
        row = run.record(entry, result)
        if row is not None:
            yield row
        yield run.status()


def _labelled(job: Job[Any], prefix: str) -> Job[Any]:
    """A sub-job's progress messages, each prefixed (the run's status line and the model's name)."""
    try:
        while True:
            event = next(job)
            if isinstance(event, Progress):
                event = Progress(event.fraction, prefix + event.message)
            yield event
    except StopIteration as stop:
        return stop.value
    finally:
        job.close()
