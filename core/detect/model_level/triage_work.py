"""One model's triage: judge a pre-scanned model file, and the JSON that carries the outcome back.

Triage (core.detect.model_level.triage) runs this for each model, in its own process or on a Dask worker
(core.detect.model_level.triage_cluster). Either way the outcome is the same plain JSON text:

    {"format": "trojanscope-triage-outcome", "version": 1, "engine": ..., "status": "judged" | "refused" | "failed",
     "source": path, "sha256": ..., "seconds": ..., "attempts": 1, "worker": ..., "score": ..., "row": {...} | null,
     "judgement": {...} | null, "reason": "..." | null}

``row`` is ``TriageRow.as_dict()`` and ``judgement`` ``Judgement.as_dict()`` (the verdict, its reason and every
method's evidence): stored as they come, so what the verdict gains later flows through. The text is
parsed with ``json`` and checked field by field on arrival (:func:`parse_outcome`) -- nothing a worker
sends is unpickled -- and ``engine``, a fingerprint of the detectors' code, must match the client's: a
worker running another TrojanScope would judge with other rules.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import marshal
import os
import socket
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Optional

import numpy as np

from core.detect.model_level.cleanse import CleanseSettings
from core.detect.model_level.judge import METHODS, judge
from core.detect.model_level.mmbd import MMBDSettings
from core.detect.model_level.warp import WarpSettings
from core.errors import DataError
from core.intake.data import ArraySource, Conversion, DataSource, DecodedImages, load_arrays
from core.intake.fit import pair
from core.intake.models import ScannedModel, load_scanned
from core.jobs import Job

OUTCOME_FORMAT = "trojanscope-triage-outcome"
OUTCOME_VERSION = 1
MAX_OUTCOME_CHARS = 32 << 20  # a verdict's JSON is kilobytes; anything near this is not ours
STATUSES = ("judged", "refused", "failed")
# The code whose change makes stored verdicts answer another question (the engine fingerprint).
ENGINE_MODULES = ("core.detect.model_level.cleanse", "core.detect.model_level.mmbd", "core.detect.model_level.warp",
                  "core.detect.model_level.statistics", "core.detect.model_level.levels", "core.detect.model_level.verdict",
                  "core.detect.model_level.judge", "core.detect.model_level.triage_work", "core.intake.fit", "core.intake.inference")


@dataclass(frozen=True)
class TriageRow:
    """One judged model (also yielded as soon as it is judged, for live tables)."""

    source: str  # the model file's path
    verdict: str  # "backdoored", "suspicious" or "clean" (no evidence found)
    level: str
    score: float
    targets: tuple[int, ...]
    summary: str
    seconds: float
    num_classes: int
    input_shape: tuple[int, int, int]
    scale: str
    conversions: tuple[str, ...] = ()  # what the clean data needed to fit this model (allowed by the analyst)
    false_alarm: str = ""  # "about 2 in 100 clean models get this answer (...)": the verdict's calibrated rate in words

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "verdict": self.verdict,
            "score": round(self.score, 4),
            "targets": list(self.targets),
            "summary": self.summary,
            "seconds": round(self.seconds, 1),
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "scale": self.scale,
            "conversions": list(self.conversions),
            "level": self.level,
            "false_alarm": self.false_alarm,
        }

    @classmethod
    def from_dict(cls, d: Any, source: Optional[str] = None, score: Optional[float] = None, seconds: Optional[float] = None) -> "TriageRow":
        """Rebuild a row from its JSON (a store, a worker), checking every field's type; ValueError otherwise.

        ``source``, ``score`` and ``seconds`` override the JSON's (the file's current path; the unrounded numbers).
        """
        if not isinstance(d, dict):
            raise ValueError("a triage row must be a JSON object")
        verdict, summary, scale = _str(d, "verdict"), _str(d, "summary"), _str(d, "scale")
        level = d.get("level", "no evidence" if verdict == "clean" else verdict)
        if level not in ("backdoored", "suspicious", "no evidence"):
            raise ValueError(f"unknown level {level!r}")
        targets, shape, conversions = d.get("targets"), d.get("input_shape"), d.get("conversions", [])
        if not (isinstance(targets, list) and all(_is_int(t) for t in targets)):
            raise ValueError("targets must be a list of class numbers")
        if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(n) for n in shape)):
            raise ValueError("input_shape must be three whole numbers")
        if not (isinstance(conversions, list) and all(isinstance(c, str) for c in conversions)):
            raise ValueError("conversions must be a list of strings")
        num_classes = d.get("num_classes")
        if not _is_int(num_classes):
            raise ValueError("num_classes must be a whole number")
        false_alarm = d.get("false_alarm", "")
        if not isinstance(false_alarm, str):
            raise ValueError("false_alarm must be a string")
        return cls(
            source if source is not None else _str(d, "source"), verdict, level,
            _number(score if score is not None else d.get("score"), "score"), tuple(int(t) for t in targets), summary,
            _number(seconds if seconds is not None else d.get("seconds"), "seconds"), int(num_classes),
            (int(shape[0]), int(shape[1]), int(shape[2])), scale, tuple(conversions), false_alarm,
        )


@dataclass(frozen=True)
class TriageSettings:
    """Everything that decides a model's verdict besides the model: a stored outcome answers only these."""

    methods: tuple[str, ...] = METHODS
    cleanse: CleanseSettings = CleanseSettings()
    mmbd: MMBDSettings = MMBDSettings()
    scale: str = "auto"
    conversion: Conversion = Conversion()
    warp: WarpSettings = WarpSettings()

    def as_dict(self) -> dict[str, Any]:
        return {"methods": list(self.methods), "cleanse": asdict(self.cleanse), "mmbd": asdict(self.mmbd), "warp": asdict(self.warp),
                "scale": self.scale, "conversion": asdict(self.conversion)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TriageSettings":
        return cls(tuple(d["methods"]), CleanseSettings(**d["cleanse"]), MMBDSettings(**d["mmbd"]), d["scale"], Conversion(**d["conversion"]),
                   WarpSettings(**d["warp"]))

    def key(self, clean: DataSource) -> dict[str, Any]:
        """What a store's settings id is computed from: these settings, the clean data's fingerprint and the engine's."""
        return {**self.as_dict(), "clean": clean_fingerprint(clean), "engine": engine_fingerprint()}


# ------------------------------------------------------------------ fingerprints


@lru_cache(maxsize=1)
def engine_fingerprint() -> str:
    """SHA-256 of the detectors' and verdict's code (their source, or compiled code in a frozen build) and levels.json."""
    digest = hashlib.sha256()
    for name in ENGINE_MODULES:
        spec = importlib.util.find_spec(name)
        origin = getattr(spec, "origin", None)
        try:
            with open(origin, "rb") as handle:  # the module's own source
                digest.update(handle.read())
        except (OSError, TypeError):  # frozen: no source files, hash the code object instead
            digest.update(marshal.dumps(spec.loader.get_code(name)))
        digest.update(name.encode())
    from core.detect.model_level.levels import LEVELS_FILE

    try:  # the verdict's fitted levels are data beside their module
        digest.update(LEVELS_FILE.read_bytes())
    except OSError:
        digest.update(b"no levels file")
    return digest.hexdigest()[:16]


def clean_fingerprint(clean: DataSource) -> str:
    """SHA-256 of the clean images and labels as held in memory (:func:`core.intake.data.in_memory`)."""
    digest = hashlib.sha256(f"{clean.kind}:{clean.count}:{clean.labelled}".encode())
    if isinstance(clean, ArraySource):
        parts = [np.asarray(clean.x)] + ([] if clean.y is None else [np.asarray(clean.y)])
    elif isinstance(clean, DecodedImages):
        parts = list(clean.images) + ([] if clean.labels is None else [np.asarray(clean.labels, np.int64)])
    else:
        raise DataError(f"{clean.path}: read the clean data into memory first")
    for array in parts:
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------- the work


def judge_scanned(scanned: ScannedModel, clean: DataSource, settings: TriageSettings, rescan: bool = False,
                  worker: str = "in-process") -> Job[dict[str, Any]]:
    """Load ``scanned`` (scanning it again first when ``rescan``), fit the clean data, judge it; the judged outcome.

    Raises what loading and fitting raise (TrojanScopeError: the caller stores the file as refused).
    """
    started = time.perf_counter()
    loaded = load_scanned(scanned, rescan=rescan)
    converted = tuple(clean.conversions(loaded.input_shape))  # refuses data that does not fit, unless allowed
    arrays = load_arrays(clean, loaded.input_shape, limit=settings.cleanse.max_images)
    if len(arrays.x) < 2:
        raise DataError(f"the clean data gave {len(arrays.x)} readable images in this model's input shape")
    pairing = pair(loaded, arrays, settings.scale)
    one_started = time.perf_counter()
    judgement = yield from judge(loaded, arrays, pairing.scale, methods=settings.methods, cleanse_settings=settings.cleanse,
                                 mmbd_settings=settings.mmbd, pixel_max=pairing.pixel_max, warp_settings=settings.warp)
    v = judgement.verdict
    row = TriageRow(scanned.path, v.machine_verdict, v.level, v.score, v.targets, v.summary, time.perf_counter() - one_started,
                    loaded.num_classes, tuple(loaded.input_shape), pairing.scale, converted, v.false_alarm)
    return outcome("judged", scanned.path, scanned.sha256, time.perf_counter() - started, worker=worker, score=float(v.score),
                   row=row.as_dict(), judgement=plain_json(judgement.as_dict()), judge_seconds=row.seconds)


def outcome(status: str, source: str, sha256: str, seconds: float, worker: str = "in-process", reason: Optional[str] = None,
            score: Optional[float] = None, row: Optional[dict] = None, judgement: Optional[dict] = None, attempts: int = 1,
            judge_seconds: Optional[float] = None) -> dict[str, Any]:
    """An outcome in the wire format (module docstring); ``seconds`` is the judgement's own time when judged."""
    return {"format": OUTCOME_FORMAT, "version": OUTCOME_VERSION, "engine": engine_fingerprint(), "status": status,
            "source": source, "sha256": sha256, "seconds": round(judge_seconds if judge_seconds is not None else seconds, 3),
            "attempts": attempts, "worker": worker, "score": score, "row": row, "judgement": judgement, "reason": reason}


def parse_outcome(text: Any, source: str, sha256: str) -> dict[str, Any]:
    """A worker's answer, checked: JSON text in the outcome format, for this file and this engine; ValueError otherwise."""
    if not isinstance(text, str) or len(text) > MAX_OUTCOME_CHARS:
        raise ValueError(f"the worker's answer is {type(text).__name__}, not a TrojanScope result")
    value = json.loads(text)
    if not isinstance(value, dict) or value.get("format") != OUTCOME_FORMAT or value.get("version") != OUTCOME_VERSION:
        raise ValueError("the worker's answer is not a TrojanScope triage result")
    if value.get("engine") != engine_fingerprint():
        raise ValueError(f"the worker runs other detectors (engine {value.get('engine')!r}, here {engine_fingerprint()!r}): "
                         "install the same TrojanScope on every worker")
    if value.get("source") != source or value.get("sha256") != sha256:
        raise ValueError("the worker answered for another file")
    status = value.get("status")
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    for key in ("worker", "reason"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise ValueError(f"{key} must be text")
    _number(value.get("seconds"), "seconds")
    if not _is_int(value.get("attempts")):
        raise ValueError("attempts must be a whole number")
    if status == "judged":
        score = _number(value.get("score"), "score")
        TriageRow.from_dict(value.get("row"), score=score)
        if not isinstance(value.get("judgement"), dict):
            raise ValueError("a judged result carries its judgement")
    elif not value.get("reason"):
        raise ValueError(f"a {status} result carries its reason")
    return value


# -------------------------------------------------------------------- helpers


_threads_set = False


def configure_threads() -> None:
    """On a worker: TensorFlow's thread pools sized as the cluster asked (``TROJANSCOPE_TF_THREADS``), before its first op."""
    global _threads_set
    wanted = os.environ.get("TROJANSCOPE_TF_THREADS")
    if _threads_set or not wanted:
        return
    from core.intake.tf_env import tf

    try:
        tf().config.threading.set_intra_op_parallelism_threads(int(wanted))
        tf().config.threading.set_inter_op_parallelism_threads(max(1, min(2, int(wanted))))
    except RuntimeError:  # TensorFlow already started its pools in this process: keep them
        pass
    _threads_set = True


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def plain_json(value: Any) -> Any:
    """JSON-safe: NumPy scalars and arrays unwrapped, NaN and infinities as null, tuples as lists."""
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain_json(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _str(d: dict, key: str) -> str:
    value = d.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{key} must be text")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number")
    return float(value)
