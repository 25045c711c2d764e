"""Clean accuracy and attack success rate: the two numbers every verdict rests on.

Attack success rate (ASR) is the fraction of suspected-poisoned inputs the
model classifies as the attacker's target. The target comes from the analyst
(``target``) or, as in the CSAW course's poisoned files, from the labels
stored with the poisoned set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from core.intake.data import DataSource, Skipped, check_labels
from core.intake.fit import choose_scale
from core.errors import DataError
from core.intake.inference import predict_proba, scale_factor
from core.jobs import Job, Progress
from core.intake.models import LoadedModel

SAMPLE_IMAGES = 24


@dataclass
class Predictions:
    predicted: np.ndarray  # (N,) class per readable item
    confidence: np.ndarray  # (N,) probability of that class
    y: Optional[np.ndarray]
    sources: list[str]
    indices: np.ndarray
    skipped: list[Skipped]
    samples: Optional[np.ndarray] = None  # the first few images, for the GUI grid


@dataclass
class EvalResult:
    clean_accuracy: Optional[float]
    attack_success_rate: Optional[float]
    n_clean: int
    n_poisoned: int
    scale: str
    target: Optional[int]
    skipped: list[Skipped] = field(default_factory=list)
    scale_note: str = ""
    clean_samples: Optional[Predictions] = None
    poisoned_samples: Optional[Predictions] = None
    clean_source: str = ""  # the data set each figure was measured on (issue 13: name it beside the figure)
    poisoned_source: str = ""

    @property
    def clean_measured_on(self) -> str:
        return f"all {self.n_clean} readable images of {self.clean_source}" if self.clean_source else ""

    @property
    def poisoned_measured_on(self) -> str:
        return f"all {self.n_poisoned} readable images of {self.poisoned_source}" if self.poisoned_source else ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "clean_accuracy": self.clean_accuracy,
            "attack_success_rate": self.attack_success_rate,
            "n_clean": self.n_clean,
            "n_poisoned": self.n_poisoned,
            "scale": self.scale,
            "target": self.target,
            "skipped": [s.as_dict() for s in self.skipped],
            "clean_accuracy_measured_on": self.clean_measured_on or None,
            "attack_success_measured_on": self.poisoned_measured_on or None,
            "scale_note": self.scale_note,
        }


def predict_source(
    loaded: LoadedModel, source: DataSource, scale: str, batch_size: int = 256, what: str = "Predicting"
) -> Job[Predictions]:
    """Stream a source through the model; yields progress after each batch."""
    factor = scale_factor(scale)
    preds, confs, ys, sources, indices, skipped, samples = [], [], [], [], [], [], []
    done = 0
    for batch in source.batches(loaded.input_shape, batch_size):
        skipped.extend(batch.skipped)
        if len(batch.x):
            if batch.y is not None:
                check_labels(batch.y, loaded.num_classes, str(source.path))
                ys.append(batch.y)
            probs = predict_proba(loaded, batch.x * factor, batch_size)
            preds.append(probs.argmax(axis=1))
            confs.append(probs.max(axis=1))
            sources.extend(batch.sources)
            indices.append(batch.indices)
            if sum(len(s) for s in samples) < SAMPLE_IMAGES:
                samples.append(batch.x[:SAMPLE_IMAGES])
        done += len(batch.x) + len(batch.skipped)
        yield Progress(done / max(source.count, 1), f"{what} {source.path.name}: {done}/{source.count}")
    if not preds:
        raise DataError(f"{source.path}: none of its {source.count} items could be read")
    return Predictions(
        predicted=np.concatenate(preds),
        confidence=np.concatenate(confs),
        y=np.concatenate(ys) if ys else None,
        sources=sources,
        indices=np.concatenate(indices),
        skipped=skipped,
        samples=np.concatenate(samples)[:SAMPLE_IMAGES],
    )


def evaluate(
    loaded: LoadedModel,
    clean: Optional[DataSource],
    poisoned: Optional[DataSource] = None,
    target: Optional[int] = None,
    scale: str = "auto",
    batch_size: int = 256,
) -> Job[EvalResult]:
    """Measure clean accuracy and, with a poisoned set, attack success rate."""
    if clean is None and poisoned is None:
        raise DataError("nothing to evaluate: give clean data, poisoned data or both")
    if clean is not None and not clean.labelled:
        raise DataError(f"{clean.path}: clean data must be labelled to measure accuracy")
    if target is not None and not 0 <= target < loaded.num_classes:
        raise DataError(f"target class {target} is out of range for a {loaded.num_classes}-class model")
    yield Progress(None, "Choosing the input scale")
    scale, note = choose_scale(loaded, clean, scale)
    yield Progress(0.0, note)
    result = EvalResult(None, None, 0, 0, scale, target, scale_note=note)
    if clean is not None:
        preds = yield from predict_source(loaded, clean, scale, batch_size, "Evaluating clean")
        result.clean_accuracy = float(np.mean(preds.predicted == preds.y))
        result.n_clean = len(preds.predicted)
        result.clean_source = str(clean.path)
        result.skipped.extend(preds.skipped)
        result.clean_samples = preds
    if poisoned is not None:
        preds = yield from predict_source(loaded, poisoned, scale, batch_size, "Evaluating poisoned")
        result.attack_success_rate = attack_success_rate(preds.predicted, preds.y, target, str(poisoned.path))
        if target is None and preds.y is not None and len(np.unique(preds.y)) == 1:
            result.target = int(preds.y[0])
        result.n_poisoned = len(preds.predicted)
        result.poisoned_source = str(poisoned.path)
        result.skipped.extend(preds.skipped)
        result.poisoned_samples = preds
    return result


def attack_success_rate(predicted: np.ndarray, labels: Optional[np.ndarray], target: Optional[int], source: str = "poisoned data") -> float:
    """Fraction of poisoned inputs classified as the target (given, else each one's label)."""
    if target is not None:
        return float(np.mean(predicted == target))
    if labels is None:
        raise DataError(f"{source} has no labels: give the attacker's target class", fixed_by=("target",))
    return float(np.mean(predicted == labels))
