"""The triage results store: one SQLite row per model file and settings, written as each model finishes.

An audit of a model registry is hundreds of models and hours of work; a crash, a closed laptop or a
cancelled job must not lose what was finished. So triage (core.detect.model_level.triage) writes each
model's outcome here the moment it arrives -- verdict, score, evidence, timings, the file's SHA-256 --
and a later run with the same settings takes those rows instead of judging the models again.

What a row is keyed by: the SHA-256 of the model file's bytes (a renamed or copied file is the same
model; an edited one is another) and a settings id, the SHA-256 of the settings' canonical JSON (methods,
detector settings, scale, allowed conversions, a fingerprint of the clean data and of the detectors'
code: a change to any of them means the old verdicts do not answer the new question).

Statuses: ``judged`` (a verdict), ``refused`` (the file was not judged, with the reason: hostile, not a
model, data that does not fit...; the same bytes would be refused again), ``failed`` (the work died:
a worker killed twice, an internal error; tried again on the next run). The verdict itself is stored
generically, as the JSON of ``TriageRow.as_dict()`` and ``Judgement.as_dict()``, so fields the verdict
gains later flow through without a schema change.

SQLite in WAL mode (readers never block the writer: the GUI or ``triage --table-only`` can read a
store while a run writes it) with ``synchronous=FULL`` (a committed row survives a power cut); each
outcome is one transaction, so a killed process leaves whole rows or none. Standard library only.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from core.errors import TrojanScopeError

SCHEMA_VERSION = 1
STATUSES = ("judged", "refused", "failed")
STORE_SUFFIX = ".sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (
    id TEXT PRIMARY KEY,                -- SHA-256 of the canonical settings JSON
    json TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    sha256 TEXT NOT NULL,               -- of the model file's bytes
    settings TEXT NOT NULL REFERENCES settings(id),
    status TEXT NOT NULL CHECK (status IN ('judged', 'refused', 'failed')),
    source TEXT NOT NULL,               -- the file's path when it was judged
    verdict TEXT, level TEXT, score REAL, -- copies of the row's, for queries (NULL unless judged)
    seconds REAL,                        -- the judgement's own time (judged), else the time spent
    reason TEXT,                         -- why it was refused or failed
    row TEXT,                            -- TriageRow.as_dict() JSON (judged)
    judgement TEXT,                      -- Judgement.as_dict() JSON: verdict, reason, every method's evidence
    attempts INTEGER NOT NULL DEFAULT 1,
    worker TEXT,                         -- where it ran ("in-process", or the Dask worker's address)
    run TEXT NOT NULL,                   -- the run that wrote it
    finished REAL NOT NULL,              -- UNIX time
    PRIMARY KEY (sha256, settings)
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    settings TEXT NOT NULL,
    folder TEXT NOT NULL,
    mode TEXT NOT NULL,                  -- "in-process", "local cluster of N workers", "cluster at ADDRESS"
    started REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Stored:
    """One stored outcome (a row of ``results``)."""

    sha256: str
    status: str
    source: str
    score: Optional[float]
    seconds: Optional[float]
    reason: Optional[str]
    row: Optional[dict[str, Any]]
    judgement: Optional[dict[str, Any]]
    attempts: int
    worker: Optional[str]
    run: str
    finished: float


def settings_id(settings: dict[str, Any]) -> str:
    """The SHA-256 of the settings' canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(canonical(settings).encode()).hexdigest()


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def default_store(folder: str | Path, data_dir: str | Path) -> Path:
    """Where a folder's results live unless the analyst names a store: ``DATA/triage/<name>-<hash of its path>.sqlite``.

    One store per models folder, in the user data folder (never inside the models' folder, which may be
    read-only or shared): running the same triage again, in the CLI or the GUI, finds it.
    """
    resolved = str(Path(folder).resolve())
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(resolved).name)[:40] or "models"
    return Path(data_dir) / "triage" / f"{name}-{hashlib.sha256(resolved.encode()).hexdigest()[:12]}{STORE_SUFFIX}"


class ResultStore:
    """The SQLite store; ``path`` None keeps it in memory (a run that should leave nothing behind)."""

    def __init__(self, path: Optional[str | Path]) -> None:
        self.path = None if path is None else Path(path)
        if self.path is not None:
            if self.path.is_dir():
                raise TrojanScopeError(f"the results store {self.path} is a folder: name a file (.sqlite)", fixed_by=("store",))
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # check_same_thread off: the GUI's job may be closed (cancelled) from another thread than it ran on
            self.db = sqlite3.connect(":memory:" if self.path is None else str(self.path), timeout=60.0,
                                      isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout = 60000")
            if self.path is not None:
                self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = FULL")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise TrojanScopeError(f"the results store {self.path} was written by a newer TrojanScope (schema {version}): "
                                       "name another store or update TrojanScope", fixed_by=("store",))
            self.db.executescript(_SCHEMA)
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise TrojanScopeError(f"cannot use {self.path} as a results store ({exc}): not a TrojanScope store, or damaged",
                                   fixed_by=("store",)) from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ settings and runs

    def register(self, settings: dict[str, Any]) -> str:
        """Record the settings (once) and return their id."""
        sid = settings_id(settings)
        self.db.execute("INSERT OR IGNORE INTO settings (id, json, created) VALUES (?, ?, ?)", (sid, canonical(settings), time.time()))
        return sid

    def settings(self, sid: str) -> Optional[dict[str, Any]]:
        found = self.db.execute("SELECT json FROM settings WHERE id = ?", (sid,)).fetchone()
        return None if found is None else json.loads(found[0])

    def start_run(self, run: str, sid: str, folder: str, mode: str) -> None:
        self.db.execute("INSERT INTO runs (id, settings, folder, mode, started) VALUES (?, ?, ?, ?, ?)", (run, sid, folder, mode, time.time()))

    # ------------------------------------------------------------------ outcomes

    def put(self, sid: str, outcome: dict[str, Any], run: str) -> None:
        """Write one model's outcome (``core.detect.model_level.triage_work`` format) in one transaction, replacing any older one."""
        status = outcome["status"]
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        row = outcome.get("row")
        judgement = outcome.get("judgement")
        self.db.execute(
            "INSERT OR REPLACE INTO results (sha256, settings, status, source, verdict, level, score, seconds, reason, row, judgement,"
            " attempts, worker, run, finished) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (outcome["sha256"], sid, status, outcome["source"],
             None if row is None else row.get("verdict"), None if row is None else row.get("level"), outcome.get("score"),
             outcome.get("seconds"), outcome.get("reason"), None if row is None else canonical(row),
             None if judgement is None else canonical(judgement), int(outcome.get("attempts", 1)), outcome.get("worker"), run, time.time()),
        )

    def get(self, sha256: str, sid: str) -> Optional[Stored]:
        found = self.db.execute(_SELECT + " WHERE sha256 = ? AND settings = ?", (sha256, sid)).fetchone()
        return None if found is None else _stored(found)

    def all(self, sid: str) -> list[Stored]:
        return [_stored(r) for r in self.db.execute(_SELECT + " WHERE settings = ? ORDER BY finished", (sid,))]

    def counts(self, sid: str) -> dict[str, int]:
        return dict(self.db.execute("SELECT status, COUNT(*) FROM results WHERE settings = ? GROUP BY status", (sid,)).fetchall())


_SELECT = "SELECT sha256, status, source, score, seconds, reason, row, judgement, attempts, worker, run, finished FROM results"


def _stored(r: tuple) -> Stored:
    return Stored(r[0], r[1], r[2], r[3], r[4], r[5], None if r[6] is None else json.loads(r[6]),
                  None if r[7] is None else json.loads(r[7]), r[8], r[9], r[10], r[11])
