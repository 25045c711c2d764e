"""Honest calibration: the false-rejection rate holds on clean data calibration never saw."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from core.detect.input_level import calibration
from core.errors import DataError

# A skewed, bounded-below score like STRIP's entropies: most mass high, a long thin left tail.
SKEWED = stats.beta(8, 2)
N_CAL, TARGET, DRAWS = 900, 0.01, 2000


def _thresholds(draws: int, method: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty(draws)
    for i in range(draws):
        s = SKEWED.rvs(N_CAL, random_state=rng)
        if method == "conservative":
            out[i] = calibration.conservative_threshold(s, TARGET).threshold
        else:  # the old STRIP rule: normal fit, its 1% quantile
            out[i] = stats.norm.ppf(TARGET, *stats.norm.fit(s))
    return out


def test_rank_is_the_largest_meeting_the_binomial_bound_checked_by_hand():
    n, a, c = 900, 0.01, 0.95
    k = calibration.order_statistic_rank(n, a, c)
    # independent: P(at least k of n clean scores fall below the true a-quantile) = 1 - binom.cdf(k - 1)
    assert 1 - stats.binom.cdf(k - 1, n, a) >= c
    assert 1 - stats.binom.cdf(k, n, a) < c  # k + 1 would break it
    assert calibration.order_statistic_rank(100, 0.01) == 0  # too few for any rank
    assert calibration.min_calibration_size(0.01, 0.95) == 299  # (0.99)^299 < 0.05 < (0.99)^298
    assert 0.99**299 <= 0.05 < 0.99**298


def test_held_out_frr_stays_under_target_in_95_percent_of_draws_on_a_skewed_distribution():
    true_frr = SKEWED.cdf(_thresholds(DRAWS, "conservative"))  # the exact rate on unlimited unseen clean data
    k = calibration.order_statistic_rank(N_CAL, TARGET)
    promised = stats.binom.sf(k - 1, N_CAL, TARGET)  # exact coverage of this rank, >= 0.95
    covered = np.mean(true_frr <= TARGET)
    se = np.sqrt(promised * (1 - promised) / DRAWS)
    assert promised >= 0.95 and covered >= promised - 3 * se and covered >= 0.94
    # and it is not absurdly conservative: the median real rate is well above zero
    assert 0.3 * TARGET < np.median(true_frr) < TARGET


def test_the_normal_fit_it_replaces_fails_the_same_test():
    true_frr = SKEWED.cdf(_thresholds(300, "normal"))
    assert np.mean(true_frr <= TARGET) < 0.5  # the skew puts far more than 1% below the fitted quantile


def test_expected_frr_interval_covers_the_real_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(3)
    hits = 0
    for _ in range(500):
        s = SKEWED.rvs(N_CAL, random_state=rng)
        t = float(np.quantile(s, 0.03))  # an analyst's dragged threshold
        est = calibration.estimate_at(s, t)
        hits += est.low <= SKEWED.cdf(t) <= est.high
    assert 0.92 <= hits / 500 <= 0.995


def test_high_tail_mirrors_low_tail_and_ties_are_never_flagged():
    s = np.random.default_rng(0).normal(size=1000)
    lo = calibration.conservative_threshold(s, 0.02)
    hi = calibration.conservative_threshold(-s, 0.02, tail="high")
    assert hi.threshold == -lo.threshold
    np.testing.assert_array_equal(lo.flags(s), hi.flags(-s))
    assert lo.estimate.flagged_in_calibration == int(np.sum(s < lo.threshold))
    ties = np.ones(500)
    cal = calibration.conservative_threshold(ties, 0.02)
    assert not cal.flags(ties).any()


def test_too_few_scores_still_flag_but_say_the_bound_fails_and_bad_input_is_refused():
    cal = calibration.conservative_threshold(np.arange(50.0), 0.01)
    assert cal.threshold == 0.0 and "299" in cal.note and cal.estimate.bound > 0.01
    with pytest.raises(DataError, match="between 0 and 0.5"):
        calibration.conservative_threshold(np.arange(50.0), 0.7)
    with pytest.raises(DataError, match="at least 2"):
        calibration.conservative_threshold(np.array([1.0]), 0.01)
