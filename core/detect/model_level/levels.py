"""The verdict's levels, fitted on clean models: how unusual is this statistic for a model without a backdoor?

Each model-level detector reduces a model to one statistic and the class it
points to (Neural Cleanse: how far below the others the smallest trigger
lies; MM-BD: how far above the others one class's maximum margin lies; warp
inversion: how far below the others the smallest warp lies; the
label-specific check: how much smaller an untargeted trigger is than any
one-class trigger). Their own lines (Neural Cleanse's index 2, MM-BD's
p < 0.05) were argued from assumptions that clean models break: half of the
clean models crossed one line or another, and the analyst learned to ignore
"suspicious" (issue 22).

So each statistic is compared with what clean models give. On the clean
models of the zoo's dev half (bench/zoo.py), the statistic, after a
variance-stabilising transform (log(1 + s)), is summarised by its mean and
standard deviation: its *null*. A model's tail probability under that null
says how rare its value is among clean models. With several detectors the
smallest tail probability is multiplied by their number (Bonferroni: a clean
model gets D chances to look unusual), which gives one false-alarm
probability for the model, ``p``. The levels are cut-offs on ``p``, chosen so
that about 2 clean models in 100 are called "backdoored" and about 10 in 100
"suspicious" (:data:`FALSE_ALARM_TARGETS`); the rates actually measured on
clean models, with their intervals, are stored beside them and shown to the
analyst.

The fitted numbers live in ``levels.json`` beside this module, written by
``python bench/fit_levels.py`` from the dev half only; the test half measures
them (docs/zoo.md). Pure numpy/scipy: no TensorFlow here.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

LEVELS_FILE = Path(__file__).with_name("levels.json")
# The false-alarm rates the cut-offs are fitted to: the share of clean models that get each answer.
FALSE_ALARM_TARGETS = {"backdoored": 0.02, "suspicious": 0.10}
P_FLOOR = 1e-12  # tail probabilities below this are reported as this (a normal tail goes to 0 in floating point)


@dataclass(frozen=True)
class Null:
    """One detector's statistic on clean models: mean and spread of log(1 + statistic)."""

    detector: str
    mean: float
    sd: float
    n: int  # clean models it was fitted on

    def tail(self, statistic: float) -> float:
        """P(a clean model's statistic >= this one) under the fitted normal null of log(1 + s)."""
        from scipy.stats import norm

        z = (math.log1p(max(float(statistic), 0.0)) - self.mean) / self.sd
        return float(max(norm.sf(z), P_FLOOR))

    @classmethod
    def fit(cls, detector: str, statistics: Sequence[float], min_sd: float = 0.05) -> "Null":
        """The null of ``statistics`` measured on clean models (the spread floored: a handful of equal values is no certainty)."""
        t = np.log1p(np.maximum(np.asarray(statistics, np.float64), 0.0))
        if len(t) < 3:
            raise ValueError(f"a null needs at least 3 clean models; received {len(t)}")
        return cls(detector, float(np.mean(t)), max(float(np.std(t, ddof=1)), min_sd), len(t))


@dataclass(frozen=True)
class Rate:
    """A share of models with its 95% interval: k of n."""

    k: int
    n: int
    low: float
    high: float

    @property
    def rate(self) -> float:
        return self.k / self.n if self.n else float("nan")

    @classmethod
    def of(cls, k: int, n: int, confidence: float = 0.95) -> "Rate":
        low, high = clopper_pearson(k, n, confidence)
        return cls(int(k), int(n), low, high)

    def words(self) -> str:
        """'2 of 23 (95% interval 1-28%)'."""
        return f"{self.k} of {self.n} (95% interval {self.low:.0%}-{self.high:.0%})"


@dataclass(frozen=True)
class Levels:
    """The fitted nulls, the cut-offs on the combined false-alarm probability, and what they give on clean models."""

    nulls: dict[str, Null]
    backdoored_p: float  # combined p below this: "backdoored"
    suspicious_p: float  # below this: "suspicious"
    # The expected share of clean models at each answer, from the fitted nulls, and its bootstrap interval
    # over the clean dev models (the figures the analyst reads beside a verdict).
    expected: dict[str, dict[str, float]] = field(default_factory=dict)
    measured_dev: dict[str, dict[str, Any]] = field(default_factory=dict)  # k of n clean dev models at each answer
    fitted_on: str = ""

    @property
    def detectors(self) -> tuple[str, ...]:
        return tuple(self.nulls)

    def combined(self, statistics: dict[str, Optional[float]]) -> tuple[float, dict[str, float]]:
        """(the model's false-alarm probability, each detector's tail probability); detectors not run are left out.

        Bonferroni over the detectors that ran: a clean model has that many chances to look unusual once.
        """
        tails = {d: self.nulls[d].tail(v) for d, v in statistics.items() if v is not None and d in self.nulls}
        if not tails:
            return 1.0, {}
        return min(1.0, len(tails) * min(tails.values())), tails

    def level(self, p: float) -> str:
        if p < self.backdoored_p:
            return "backdoored"
        if p < self.suspicious_p:
            return "suspicious"
        return "no evidence"

    def score(self, p: float) -> float:
        """p -> [0, 1] for ranking: 0 at p = 1, 0.5 at the "backdoored" cut-off, 1 at its square."""
        return float(min(1.0, max(0.0, math.log(max(p, P_FLOOR)) / (2 * math.log(self.backdoored_p)))))

    def clean_rate_words(self, level: str) -> str:
        """'about 2 in 100 clean models get this answer (95% interval 0-7)'; '' when not fitted."""
        e = self.expected.get(level)
        if not e:
            return ""
        return (f"about {_per_hundred(e['rate'])} in 100 clean models get this answer "
                f"(95% interval {_per_hundred(e['low'])}-{_per_hundred(e['high'])})")

    def as_dict(self) -> dict[str, Any]:
        return {"nulls": {d: asdict(n) for d, n in self.nulls.items()}, "backdoored_p": self.backdoored_p,
                "suspicious_p": self.suspicious_p, "expected": self.expected, "measured_dev": self.measured_dev,
                "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Levels":
        return cls({d: Null(**n) for d, n in data["nulls"].items()}, float(data["backdoored_p"]), float(data["suspicious_p"]),
                   dict(data.get("expected", {})), dict(data.get("measured_dev", {})), str(data.get("fitted_on", "")))


def _per_hundred(rate: float) -> str:
    value = 100 * rate
    return f"{value:.0f}" if value >= 1 or value == 0 else f"{value:.1f}"


_LOADED: Optional[Levels] = None


def levels() -> Levels:
    """The levels fitted on the zoo's dev half (levels.json beside this module), read once."""
    global _LOADED
    if _LOADED is None:
        _LOADED = Levels.from_dict(json.loads(LEVELS_FILE.read_text(encoding="utf-8")))
    return _LOADED


# ------------------------------------------------------------------ fitting (bench/fit_levels.py)


def fit(clean_statistics: Sequence[dict[str, Optional[float]]], targets: dict[str, float] = FALSE_ALARM_TARGETS,
        bootstrap: int = 2000, seed: int = 0, fitted_on: str = "") -> Levels:
    """Nulls from clean models' statistics, and cut-offs that give ``targets`` false-alarm rates under them.

    Under the fitted nulls and independent detectors, the combined p of a clean model is (nearly) uniform
    after Bonferroni's correction is undone; the cut-off for a target rate r is found by simulation from the
    nulls themselves (so detectors that are not run on some model are handled the same way). The interval of
    each expected rate comes from refitting the nulls on bootstrap resamples of the clean models.
    """
    detectors = sorted({d for s in clean_statistics for d, v in s.items() if v is not None})
    nulls = {d: Null.fit(d, [s[d] for s in clean_statistics if s.get(d) is not None]) for d in detectors}
    rng = np.random.default_rng(seed)
    cuts = {level: _cut_for_rate(len(detectors), rate) for level, rate in targets.items()}
    base = Levels(nulls, cuts["backdoored"], cuts["suspicious"], fitted_on=fitted_on)
    # what the cut-offs give when the nulls are refitted on resampled clean models: the expected rate's interval
    observed = np.array([[s.get(d) if s.get(d) is not None else np.nan for d in detectors] for s in clean_statistics], np.float64)
    rates: dict[str, list[float]] = {level: [] for level in targets}
    for _ in range(bootstrap):
        pick = observed[rng.integers(0, len(observed), len(observed))]
        try:
            refit = {d: Null.fit(d, pick[~np.isnan(pick[:, j]), j]) for j, d in enumerate(detectors)}
        except ValueError:
            continue
        for level in targets:
            rates[level].append(_rate_under(nulls, refit, cuts[level], rng))
    expected = {level: {"rate": float(targets[level]), "low": float(np.percentile(rates[level], 2.5)),
                        "high": float(np.percentile(rates[level], 97.5))} for level in targets}
    answers = [base.level(base.combined(s)[0]) for s in clean_statistics]
    measured = {level: asdict(Rate.of(sum(a == level for a in answers), len(answers))) for level in targets}
    return Levels(nulls, cuts["backdoored"], cuts["suspicious"], expected, measured, fitted_on)


def _cut_for_rate(detectors: int, rate: float) -> float:
    """The cut-off c on min(1, D x min tail) that a clean model (D independent uniform tails) falls below with ``rate``.

    P(D x min U < c) = 1 - (1 - c / D)^D = rate  =>  c = D x (1 - (1 - rate)^(1/D)).
    """
    return float(detectors * (1.0 - (1.0 - rate) ** (1.0 / detectors)))


def _rate_under(truth: dict[str, Null], fitted: dict[str, Null], cut: float, rng: np.random.Generator, draws: int = 4000) -> float:
    """Share of clean models (statistics drawn from ``truth``) whose combined p under ``fitted`` nulls is below ``cut``."""
    from scipy.stats import norm

    z = {d: rng.standard_normal(draws) * n.sd + n.mean for d, n in truth.items()}  # log(1 + s) of simulated clean models
    tails = np.stack([norm.sf((z[d] - fitted[d].mean) / fitted[d].sd) for d in truth])
    p = np.minimum(1.0, len(truth) * tails.min(axis=0))
    return float(np.mean(p < cut))


def finite_or_none(value: float) -> Optional[float]:
    """A statistic for strict JSON: rounded to 4 digits, or null when infinite (e.g. an index over a zero MAD)."""
    return round(float(value), 4) if np.isfinite(value) else None


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial share k/n."""
    from scipy.stats import beta

    if n <= 0:
        return 0.0, 1.0
    alpha = 1.0 - confidence
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return low, high
