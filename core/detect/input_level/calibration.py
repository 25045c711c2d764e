"""Thresholds whose false-rejection rate holds on clean data calibration never saw.

An input-level detector gives every input a score; clean inputs have scores
from some unknown, often skewed distribution (STRIP entropies are bounded
below by 0; scaled-prediction consistency piles up near 1). Fitting a normal
distribution to them and reading its 1% quantile (the STRIP paper's choice)
promised 1% and delivered 2.3-3.1% on held-out clean images (issue 11).

This module makes no assumption about the distribution. With ``n`` clean
calibration scores, a threshold at the k-th most suspicious of them flags a
*new* clean input with probability ``F``, and over calibration draws ``F``
follows Beta(k, n + 1 - k) exactly, whatever the scores' distribution (the
order-statistic fact behind split-conformal prediction; Vovk et al. 2005,
Angelopoulos & Bates 2021). So:

1. :func:`conservative_threshold` picks the *largest* k whose Beta upper
   ``confidence`` quantile is still <= the target rate: the false-rejection
   rate on unseen clean data is then <= the target with probability >=
   ``confidence`` (default 95%) -- the one-sided Clopper-Pearson bound.
2. :func:`estimate_at` reports, for any threshold (also one the analyst drags),
   the expected false-rejection rate with a central 95% interval and the
   one-sided bound, from the count of calibration scores it flags.

Scores are flagged strictly beyond the threshold (ties stay accepted), so a
score distribution with atoms can only make the real rate lower.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np

from core.errors import DataError

DEFAULT_CONFIDENCE = 0.95
INTERVAL = 0.95  # the central interval reported beside the expected rate
TAILS = ("low", "high")  # which end of the score is suspicious


@dataclass(frozen=True)
class FrrEstimate:
    """What a threshold costs on clean inputs: expected rate, interval, bound."""

    expected: float  # mean of Beta(m + 1, n - m): m of n calibration scores flagged
    low: float  # central INTERVAL interval
    high: float
    bound: float  # one-sided upper bound at ``confidence``
    confidence: float
    flagged_in_calibration: int
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "expected": self.expected,
            "interval": [self.low, self.high],
            "bound": self.bound,
            "confidence": self.confidence,
            "flagged_in_calibration": self.flagged_in_calibration,
            "n_calibration": self.n,
        }

    def describe(self) -> str:
        return (f"expected FRR {self.expected:.2%} (95% interval {self.low:.2%}-{self.high:.2%}; "
                f"<= {self.bound:.2%} with {self.confidence:.0%} confidence, n={self.n})")


@dataclass(frozen=True)
class Calibration:
    """A threshold on one score, which tail is flagged, and what it costs."""

    threshold: float
    tail: str
    target_frr: float
    estimate: FrrEstimate
    note: str = ""

    def flags(self, scores: np.ndarray) -> np.ndarray:
        return is_flagged(scores, self.threshold, self.tail)

    def as_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "tail": self.tail, "target_frr": self.target_frr,
                "frr_estimate": self.estimate.as_dict(), "note": self.note}


def is_flagged(scores: np.ndarray, threshold: float, tail: str) -> np.ndarray:
    """Strictly beyond the threshold on the suspicious side."""
    s = np.asarray(scores, np.float64)
    return s < threshold if tail == "low" else s > threshold


def estimate_at(scores: np.ndarray, threshold: float, tail: str = "low", confidence: float = DEFAULT_CONFIDENCE) -> FrrEstimate:
    """False-rejection rate of ``threshold`` on clean inputs, judged from ``scores``.

    With m of n calibration scores flagged, the rate is taken as Beta(m + 1,
    n - m): exact when the threshold sits on the (m + 1)-th order statistic,
    and conservative (a little high) anywhere between two scores.
    """
    from scipy.stats import beta

    s = np.asarray(scores, np.float64)
    n = int(len(s))
    if n < 1:
        raise DataError("cannot estimate a false-rejection rate from no clean scores")
    m = int(np.sum(is_flagged(s, threshold, tail)))
    a, b = m + 1, max(n - m, 1)
    tail_mass = (1.0 - INTERVAL) / 2.0
    return FrrEstimate(
        expected=a / (a + b),
        low=float(beta.ppf(tail_mass, a, b)),
        high=float(beta.ppf(1.0 - tail_mass, a, b)),
        bound=float(beta.ppf(confidence, a, b)),
        confidence=float(confidence),
        flagged_in_calibration=m,
        n=n,
    )


def order_statistic_rank(n: int, target_frr: float, confidence: float = DEFAULT_CONFIDENCE) -> int:
    """Largest k in 1..n with P(Beta(k, n + 1 - k) <= target) >= confidence, or 0 if none.

    P(Beta(k, n + 1 - k) <= a) is P(Binomial(n, a) >= k), computed that way
    (``binom.sf``) because it is exact and vectorises over k.
    """
    from scipy.stats import binom

    k = np.arange(1, n + 1)
    ok = binom.sf(k - 1, n, target_frr) >= confidence
    return int(k[ok].max()) if ok.any() else 0


def min_calibration_size(target_frr: float, confidence: float = DEFAULT_CONFIDENCE) -> int:
    """Clean scores needed before even the most extreme one meets the bound: (1 - a)^n <= 1 - c."""
    return int(np.ceil(np.log(1.0 - confidence) / np.log(1.0 - target_frr)))


def conservative_threshold(
    scores: np.ndarray, target_frr: float, confidence: float = DEFAULT_CONFIDENCE, tail: str = "low"
) -> Calibration:
    """The threshold at the k-th most suspicious clean score, k from :func:`order_statistic_rank`.

    With too few clean scores for the bound (fewer than
    :func:`min_calibration_size`), the most suspicious clean score is used
    anyway (detection stays on) and the note says the bound does not hold.
    """
    if not 0.0 < target_frr < 0.5:
        raise DataError(f"false rejection rate must be between 0 and 0.5; received {target_frr}")
    if not 0.5 <= confidence < 1.0:
        raise DataError(f"confidence must be between 0.5 and 1 (e.g. 0.95); received {confidence}")
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}; received {tail!r}")
    s = np.asarray(scores, np.float64)
    if len(s) < 2 or not np.all(np.isfinite(s)):
        raise DataError(f"calibration needs at least 2 finite clean scores; received {len(s)}")
    ordered = np.sort(s) if tail == "low" else np.sort(s)[::-1]  # most suspicious first
    k = order_statistic_rank(len(s), target_frr, confidence)
    note = ""
    if k == 0:
        k = 1
        need = min_calibration_size(target_frr, confidence)
        note = (f"only {len(s)} clean scores: the FRR bound of {target_frr:.2%} at {confidence:.0%} confidence "
                f"needs at least {need}; the threshold is the most extreme clean score")
    threshold = float(ordered[k - 1])
    return Calibration(threshold, tail, float(target_frr), estimate_at(s, threshold, tail, confidence), note)


__all__ = [
    "Calibration",
    "DEFAULT_CONFIDENCE",
    "FrrEstimate",
    "conservative_threshold",
    "estimate_at",
    "is_flagged",
    "min_calibration_size",
    "order_statistic_rank",
]


class ThresholdedScores:
    """What every score-and-threshold detector profile shares (feature space, SCALE-UP, TeCo, masking).

    A dataclass that mixes this in has ``clean_scores`` (its held-out clean
    scores), ``threshold``, ``frr``, ``confidence``, ``scale``,
    ``model_sha256``, ``num_classes``, ``input_shape``, ``notes`` and class
    attributes ``method`` and ``tail``; moving the threshold re-derives the FRR
    bound from the same scores.
    """

    def shared_metadata(self) -> dict[str, Any]:
        """The saved-profile keys every detector has; each adds its own (core.detect.input_level.scanner reads them back)."""
        return {
            "method": self.method, "scale": self.scale, "threshold": self.threshold, "frr": self.frr,
            "confidence": self.confidence, "frr_estimate": self.frr_estimate().as_dict(), "model_sha256": self.model_sha256,
            "num_classes": self.num_classes, "input_shape": list(self.input_shape), "notes": list(self.notes),
        }

    @property
    def scores(self) -> np.ndarray:
        return self.clean_scores

    def frr_estimate(self, threshold: Optional[float] = None) -> FrrEstimate:
        t = self.threshold if threshold is None else float(threshold)
        return estimate_at(self.clean_scores, t, self.tail, self.confidence)

    def with_threshold(self, threshold: float) -> Any:
        return replace(self, threshold=float(threshold), frr=self.frr_estimate(threshold).bound)
