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
says how rare its value is among clean models.

The model's verdict combines the detectors by Fisher's sum of -log(tail): two
detectors each moderately unusual for a clean model add up, one detector
barely past its own line does not make "backdoored" on its own. The sum
itself is judged against the same clean models (its own null: the detectors
are not independent, so Fisher's chi-square would be wrong), which gives one
false-alarm probability for the model, ``p``; the verdict's levels are
``p`` < 2% ("backdoored") and < 10% ("suspicious"), the rates of
:data:`FALSE_ALARM_TARGETS`. When not every detector ran, the smallest tail
is corrected for the number that did (Sidak: 1 - (1 - t)^k). Each detector's
own line, shown beside its evidence, is its tail corrected the same way for
all D detectors (a clean model gets D chances to look unusual). The rates
measured on the clean dev models (each left out of its own fit), with their
intervals, are stored beside the levels and shown to the analyst.

The fitted numbers live in ``levels.json`` beside this module, written by
``python bench/fit_levels.py`` from the dev half only; the test half measures
them (docs/zoo.md). Pure numpy/scipy: no TensorFlow here.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

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
    # The share of clean dev models at each answer, each judged by levels fitted without it, with its exact 95%
    # interval, and the target rate (the figures the analyst reads beside a verdict).
    expected: dict[str, dict[str, float]] = field(default_factory=dict)
    measured_dev: dict[str, dict[str, Any]] = field(default_factory=dict)  # k of n clean dev models at each answer
    fitted_on: str = ""
    combined_null: Optional[Null] = None  # Fisher's sum of -log(tail) over every detector, on the clean models

    @property
    def detectors(self) -> tuple[str, ...]:
        return tuple(self.nulls)

    def combined(self, statistics: dict[str, Optional[float]]) -> tuple[float, dict[str, float]]:
        """(the model's false-alarm probability, each detector's tail probability); detectors not run are left out."""
        tails = {d: self.nulls[d].tail(v) for d, v in statistics.items() if v is not None and d in self.nulls}
        return self.from_tails(tails), tails

    def from_tails(self, tails: dict[str, float]) -> float:
        """The model's false-alarm probability from its detectors' tails: Fisher's sum judged against clean models
        when every fitted detector ran, else the smallest tail with Sidak's correction for the detectors that ran."""
        if not tails:
            return 1.0
        if self.combined_null is not None and set(tails) == set(self.nulls):
            return self.combined_null.tail(fisher_sum(tails.values()))
        return float(1.0 - (1.0 - min(tails.values())) ** len(tails))

    def verdict_level(self, p: float) -> str:
        """The verdict's level for the model's combined false-alarm probability (:meth:`from_tails`)."""
        if p < FALSE_ALARM_TARGETS["backdoored"]:
            return "backdoored"
        if p < FALSE_ALARM_TARGETS["suspicious"]:
            return "suspicious"
        return "no evidence"

    def alone(self, tail: float) -> float:
        """One detector's own false-alarm probability: its tail with D chances (Bonferroni), for :meth:`level`."""
        return min(1.0, len(self.nulls) * tail)

    def level(self, p: float) -> str:
        """One detector's own level for :meth:`alone`'s probability."""
        if p < self.backdoored_p:
            return "backdoored"
        if p < self.suspicious_p:
            return "suspicious"
        return "no evidence"

    def score(self, p: float, cut: Optional[float] = None) -> float:
        """p -> [0, 1] for ranking: 0 at p = 1, 0.5 at the "backdoored" cut-off (``cut``; default a detector's own), 1 at its square."""
        cut = self.backdoored_p if cut is None else cut
        return float(min(1.0, max(0.0, math.log(max(p, P_FLOOR)) / (2 * math.log(cut)))))

    def clean_rate_words(self, level: str) -> str:
        """'about 4 in 100 clean models get this answer (95% interval 0.1-22)'; '' when not fitted."""
        e = self.expected.get(level)
        if not e:
            return ""
        stronger = " or a stronger one" if level == "suspicious" else ""
        return (f"about {_per_hundred(e['rate'])} in 100 clean models get this answer{stronger} "
                f"(95% interval {_per_hundred(e['low'])}-{_per_hundred(e['high'])})")

    def as_dict(self) -> dict[str, Any]:
        return {"nulls": {d: asdict(n) for d, n in self.nulls.items()}, "backdoored_p": self.backdoored_p,
                "suspicious_p": self.suspicious_p, "expected": self.expected, "measured_dev": self.measured_dev,
                "fitted_on": self.fitted_on, "combined_null": None if self.combined_null is None else asdict(self.combined_null)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Levels":
        combined = data.get("combined_null")
        return cls({d: Null(**n) for d, n in data["nulls"].items()}, float(data["backdoored_p"]), float(data["suspicious_p"]),
                   dict(data.get("expected", {})), dict(data.get("measured_dev", {})), str(data.get("fitted_on", "")),
                   None if combined is None else Null(**combined))


def fisher_sum(tails: Iterable[float]) -> float:
    """Fisher's combination: the sum of -log(tail) (0 for a model as ordinary as the median clean one on every count)."""
    return float(sum(-math.log(max(t, P_FLOOR)) for t in tails))


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
        fitted_on: str = "") -> Levels:
    """Nulls from clean models' statistics, the null of their Fisher sum, and each detector's own cut-offs.

    The verdict's cut-offs are the target rates themselves on the combined p. What they give is measured on
    the clean models, each judged by the levels fitted on the others (leave-one-out: no model judges itself),
    and that measured share with its exact 95% interval is what the analyst reads beside a verdict
    (``expected``; the share at "suspicious" counts every alarm, "backdoored" included).
    """
    lv = _fit_once(clean_statistics, targets, fitted_on)
    n = len(clean_statistics)
    left_out = []
    for i in range(n):
        others = _fit_once([s for j, s in enumerate(clean_statistics) if j != i], targets, fitted_on)
        left_out.append(others.verdict_level(others.combined(clean_statistics[i])[0]))
    measured = {level: Rate.of(sum(_at_least(a, level) for a in left_out), n) for level in targets}
    expected = {level: {"rate": r.rate, "low": r.low, "high": r.high, "target": float(targets[level])} for level, r in measured.items()}
    return Levels(lv.nulls, lv.backdoored_p, lv.suspicious_p, expected, {k: asdict(r) for k, r in measured.items()}, fitted_on,
                  lv.combined_null)


def _at_least(answer: str, level: str) -> bool:
    """Whether an answer is ``level`` or stronger ("suspicious" counts "backdoored" too: the rate of any alarm)."""
    order = ("no evidence", "suspicious", "backdoored")
    return order.index(answer) >= order.index(level)


def _fit_once(clean_statistics: Sequence[dict[str, Optional[float]]], targets: dict[str, float], fitted_on: str) -> Levels:
    detectors = sorted({d for s in clean_statistics for d, v in s.items() if v is not None})
    nulls = {d: Null.fit(d, [s[d] for s in clean_statistics if s.get(d) is not None]) for d in detectors}
    cuts = {level: _cut_for_rate(len(detectors), rate) for level, rate in targets.items()}
    base = Levels(nulls, cuts["backdoored"], cuts["suspicious"], fitted_on=fitted_on)
    sums = [fisher_sum(base.combined(s)[1].values()) for s in clean_statistics if all(s.get(d) is not None for d in detectors)]
    combined = Null.fit("combined", sums) if len(sums) >= 3 else None
    return Levels(nulls, cuts["backdoored"], cuts["suspicious"], fitted_on=fitted_on, combined_null=combined)


def _cut_for_rate(detectors: int, rate: float) -> float:
    """The cut-off c on min(1, D x min tail) that a clean model (D independent uniform tails) falls below with ``rate``.

    P(D x min U < c) = 1 - (1 - c / D)^D = rate  =>  c = D x (1 - (1 - rate)^(1/D)).
    """
    return float(detectors * (1.0 - (1.0 - rate) ** (1.0 / detectors)))


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
