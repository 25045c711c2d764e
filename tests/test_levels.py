"""The verdict's calibration (core.detect.model_level.levels) against hand-computed quantiles (issue 22)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.detect.model_level.levels import (
    FALSE_ALARM_TARGETS,
    Levels,
    Null,
    Rate,
    _cut_for_rate,
    clopper_pearson,
    fit,
    levels,
)


def test_null_is_the_mean_and_spread_of_log_one_plus_s():
    null = Null.fit("nc", [0.0, 1.0, 3.0])
    # log1p: 0, ln 2 = 0.693147, ln 4 = 1.386294; mean ln 2; sample sd (n - 1) = ln 2
    assert null.mean == pytest.approx(math.log(2)) and null.sd == pytest.approx(math.log(2)) and null.n == 3
    # a statistic one spread above the mean: log1p(s) = 2 ln 2, s = 3; the normal upper tail at z = 1 is 0.158655
    assert null.tail(3.0) == pytest.approx(0.158655, abs=1e-6)
    # at the mean (s = 1): one half; far below: almost 1
    assert null.tail(1.0) == pytest.approx(0.5) and null.tail(0.0) > 0.84


def test_a_null_needs_three_clean_models_and_keeps_a_minimum_spread():
    with pytest.raises(ValueError, match="at least 3"):
        Null.fit("nc", [1.0, 2.0])
    assert Null.fit("ls", [0.5, 0.5, 0.5]).sd == 0.05  # equal values: no certainty from three models


def test_cut_off_for_a_rate_under_bonferroni():
    # P(min(1, D x min U) < c) = 1 - (1 - c / D)^D; for D = 4 and 2%: c = 4 (1 - 0.98^(1/4))
    assert _cut_for_rate(4, 0.02) == pytest.approx(4 * (1 - 0.98 ** 0.25))
    assert _cut_for_rate(4, 0.02) == pytest.approx(0.0201517, abs=1e-6)
    assert _cut_for_rate(1, 0.10) == pytest.approx(0.10)  # one detector: the rate itself


def test_fitted_levels_give_about_the_target_rates_on_models_drawn_from_the_nulls():
    """Clean models simulated from the fitted nulls (independent detectors): about 2% and 10% of them get the
    verdict's alarms. The combined null is a log-normal fitted to 40 Fisher sums, so the rates are approximate,
    and inside the interval of the rate the levels measured leaving each clean model out of its own fit."""
    rng = np.random.default_rng(1)
    clean = [{d: float(np.expm1(abs(rng.normal(1.0, 0.3)))) for d in ("nc", "mmbd", "warp")} for _ in range(40)]
    lv = fit(clean)
    draws = {d: np.expm1(rng.normal(n.mean, n.sd, 20000)) for d, n in lv.nulls.items()}
    answers = [lv.verdict_level(lv.combined({d: float(draws[d][i]) for d in draws})[0]) for i in range(20000)]
    backdoored = np.mean([a == "backdoored" for a in answers])
    alarms = np.mean([a != "no evidence" for a in answers])
    assert backdoored == pytest.approx(FALSE_ALARM_TARGETS["backdoored"], abs=0.01)
    assert alarms == pytest.approx(FALSE_ALARM_TARGETS["suspicious"], abs=0.025)
    assert lv.expected["backdoored"]["low"] <= backdoored <= lv.expected["backdoored"]["high"]
    assert lv.expected["suspicious"]["low"] <= alarms <= lv.expected["suspicious"]["high"]
    # each clean model judged by the levels fitted without it: counted, with its exact (Clopper-Pearson) interval
    k = lv.measured_dev["suspicious"]["k"]
    assert lv.measured_dev["suspicious"]["n"] == 40 and lv.expected["suspicious"]["rate"] == pytest.approx(k / 40)
    assert (lv.expected["suspicious"]["low"], lv.expected["suspicious"]["high"]) == pytest.approx(clopper_pearson(k, 40))


def test_combined_p_is_fishers_sum_against_clean_models_when_every_detector_ran():
    lv = Levels({"nc": Null("nc", 0.0, 1.0, 10), "mmbd": Null("mmbd", 0.0, 1.0, 10)}, 0.02, 0.1,
                combined_null=Null("combined", math.log(3.0), 0.5, 10))
    # both ran: S = -ln 0.1 - ln 0.2 = 3.912023; log1p(S) = 1.591686; z = (1.591686 - ln 3) / 0.5 = 0.986147 -> 0.162030
    assert lv.from_tails({"nc": 0.1, "mmbd": 0.2}) == pytest.approx(0.162030, abs=1e-6)
    # one detector not run: the smallest tail with Sidak's correction for the ones that ran
    p, tails = lv.combined({"nc": math.expm1(2.0), "mmbd": None})  # z = 2 on nc
    assert tails == {"nc": pytest.approx(0.0227501, abs=1e-6)} and p == pytest.approx(0.0227501, abs=1e-6)
    no_combined = Levels(lv.nulls, 0.02, 0.1)
    p, _ = no_combined.combined({"nc": math.expm1(2.0), "mmbd": 0.0})  # both ran, no combined null fitted
    assert p == pytest.approx(1 - (1 - 0.0227501) ** 2, abs=1e-6)  # 0.044983
    assert lv.verdict_level(0.019) == "backdoored" and lv.verdict_level(0.05) == "suspicious"
    assert lv.verdict_level(0.2) == "no evidence"
    # one detector's own line: Bonferroni over the two detectors, at its own cut-offs
    assert lv.alone(0.0227501) == pytest.approx(0.0455002) and lv.level(0.019) == "backdoored"
    assert lv.score(0.02) == pytest.approx(0.5) and lv.score(0.0004) == pytest.approx(1.0) and lv.score(1.0) == 0.0


def test_clopper_pearson_closed_forms_at_the_ends():
    # k = 0: upper = 1 - (alpha / 2)^(1 / n); k = n: lower = (alpha / 2)^(1 / n)
    low, high = clopper_pearson(0, 16)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 16))
    low, high = clopper_pearson(16, 16)
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 16))
    assert Rate.of(0, 16).words() == "0 of 16 (95% interval 0%-21%)"


def test_the_shipped_levels_were_fitted_on_the_dev_half_for_the_stated_rates():
    lv = levels()
    assert "dev half" in lv.fitted_on
    assert set(lv.nulls) == {"nc", "twin", "mmbd", "warp", "ls"} and lv.combined_null is not None
    assert lv.backdoored_p == pytest.approx(_cut_for_rate(len(lv.nulls), FALSE_ALARM_TARGETS["backdoored"]))
    assert lv.suspicious_p == pytest.approx(_cut_for_rate(len(lv.nulls), FALSE_ALARM_TARGETS["suspicious"]))
    assert all(n.n >= 20 for n in lv.nulls.values()) and lv.combined_null.n >= 20  # every clean model of the dev half
    assert "in 100 clean models get this answer" in lv.clean_rate_words("backdoored")
