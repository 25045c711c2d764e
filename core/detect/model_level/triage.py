"""Triage: rank every model in a folder by how suspicious it is.

Analysts receive models in batches. Triage runs the same checks as the
``cleanse`` command (core.detect.model_level.judge: Neural Cleanse, MM-BD, one combined verdict)
on each model file of a folder with the same clean data, and ranks them:
"backdoored" first, then "suspicious", then "no evidence found", each group
by its suspicion score. Files that cannot be opened safely (not a model,
truncated, hostile: a Lambda layer, an HDF5 external link...) never stop the
batch: they are skipped with the reason, as every command skips unreadable
inputs. A model whose input shape differs from the clean data gets the data
converted (size and channels, as core.intake.data does for every analysis) or, when
that cannot be done, is skipped with the reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from core.detect.model_level.cleanse import CleanseSettings
from core.intake.data import Conversion, DataSource, Skipped, load_arrays
from core.errors import DataError, TrojanScopeError
from core.intake.fit import pair
from core.jobs import Job, Progress, rescaled
from core.detect.model_level.judge import METHODS, judge
from core.detect.model_level.mmbd import MMBDSettings
from core.intake.models import load_model
from core.detect.model_level.verdict import LEVEL_RANK

MODEL_SUFFIXES = frozenset({".keras", ".h5", ".hdf5"})


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
        }


@dataclass
class TriageResult:
    rows: list[TriageRow]  # most suspicious first
    skipped: list[Skipped]
    folder: str
    seconds: float
    details: dict[str, dict[str, Any]] = field(default_factory=dict)  # source -> the full judgement JSON

    def as_dict(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "results": [r.as_dict() for r in self.rows],
            "skipped": [s.as_dict() for s in self.skipped],
            "models": len(self.rows),
            "seconds": round(self.seconds, 1),
        }


def model_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (recursively, sorted) that could be a model: Keras and HDF5 suffixes."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder: triage expects a folder of model files")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)


def rank(rows: Sequence[TriageRow]) -> list[TriageRow]:
    """Backdoored, then suspicious, then no evidence; within each, the higher score first (ties by path)."""
    return sorted(rows, key=lambda r: (-LEVEL_RANK[r.level], -r.score, r.source))


def triage(
    folder: str | Path,
    clean: DataSource,
    scale: str = "auto",
    methods: Sequence[str] = METHODS,
    cleanse_settings: CleanseSettings = CleanseSettings(),
    mmbd_settings: MMBDSettings = MMBDSettings(),
    conversion: Conversion = Conversion(),
) -> Job[TriageResult]:
    """Judge every model file in ``folder`` on ``clean`` and rank them; skip what cannot be judged.

    A model whose input the clean data does not fit is skipped with both shapes named, unless ``conversion``
    allows resizing or converting channels. The fit, the pixel scale and the pixel range are decided once per
    model, on the clean images read once (core.intake.fit.pair), and handed to every detector.
    """
    clean.allow(conversion)
    started = time.perf_counter()
    folder = Path(folder)
    files = model_files(folder)
    if not files:
        raise DataError(f"{folder} holds no model file (expected {', '.join(sorted(MODEL_SUFFIXES))})")
    rows: list[TriageRow] = []
    skipped: list[Skipped] = []
    details: dict[str, dict[str, Any]] = {}
    for i, path in enumerate(files):
        lo, hi = i / len(files), (i + 1) / len(files)
        yield Progress(lo, f"Triage {i + 1}/{len(files)}: opening {path.name}")
        try:
            loaded = load_model(path)
            converted = tuple(clean.conversions(loaded.input_shape))  # refuses data that does not fit, unless allowed
            arrays = load_arrays(clean, loaded.input_shape, limit=cleanse_settings.max_images)
            if len(arrays.x) < 2:
                raise DataError(f"the clean data gave {len(arrays.x)} readable images in this model's input shape")
            pairing = pair(loaded, arrays, scale)
            one_started = time.perf_counter()
            judgement = yield from rescaled(
                judge(loaded, arrays, pairing.scale, methods=methods, cleanse_settings=cleanse_settings, mmbd_settings=mmbd_settings,
                      pixel_max=pairing.pixel_max),
                lo, hi,
            )
        except TrojanScopeError as exc:  # unreadable, hostile, or data that cannot fit this model
            skipped.append(Skipped(str(path), str(exc)))
            continue
        v = judgement.verdict
        row = TriageRow(str(path), v.machine_verdict, v.level, v.score, v.targets, v.summary,
                        time.perf_counter() - one_started, loaded.num_classes, tuple(loaded.input_shape), pairing.scale, converted)
        rows.append(row)
        details[str(path)] = judgement.as_dict()
        yield row
    return TriageResult(rank(rows), skipped, str(folder), time.perf_counter() - started, details)
