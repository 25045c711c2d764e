"""MM-BD: the maximum margins of a planted model against their exact values, the statistics against scipy."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import stats

from core.jobs import collect
from core.detect.model_level.mmbd import MMBDSettings, MMBDStep, detect, fit_gamma, mmbd, order_p_value, plan
from tests.planted import CLASSES, PLANTED, W, save_linear_model

FAST = MMBDSettings(starts=2, steps=300, learning_rate=0.05)


def exact_margins() -> dict[int, float]:
    rows = 2 * W  # pixels in a class's two rows
    out = {k: rows * (1.0 + k / 10) for k in range(CLASSES)}
    out[PLANTED] += 60.0
    return out


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from core.intake.models import load_model

    path = tmp_path_factory.mktemp("mmbd") / "planted.keras"
    save_linear_model(path, slope=0.1)
    return load_model(path)


def test_margins_reach_their_exact_maxima_and_the_planted_class_is_flagged(planted):
    events, result = collect(mmbd(planted, None, scale="1", settings=FAST, pixel_max=1.0))
    exact = exact_margins()
    for k in range(CLASSES):
        assert result.margins[k] == pytest.approx(exact[k], rel=1e-3)  # on the logits, not the probabilities
    assert result.flagged_classes == (PLANTED,)
    assert result.verdict == "backdoored"
    assert all(result.p_values[k] > 0.05 for k in range(CLASSES) if k != PLANTED)
    steps = [e for e in events if isinstance(e, MMBDStep)]
    assert steps and steps[-1].step == FAST.steps
    assert max(steps[-1].margins) == pytest.approx(exact[PLANTED], rel=1e-3)


def test_small_batches_reach_the_same_margins(planted):
    """20 images in batches of 3 (the last one topped up): what a 1,283-class model goes through."""
    _events, result = collect(mmbd(planted, None, scale="1", settings=replace(FAST, batch=3),
                                   pixel_max=1.0))
    exact = exact_margins()
    for k in range(CLASSES):
        assert result.margins[k] == pytest.approx(exact[k], rel=1e-3)
    assert result.flagged_classes == (PLANTED,)


def test_many_classes_get_one_start_and_fewer_steps_within_the_work_cap():
    default = MMBDSettings()
    assert plan(default, 10) == (6, 300)  # the zoo's models: as set
    assert plan(default, 100) == (6, 300)  # 180,000 image-steps fit
    starts, steps = plan(default, 1283)  # the CSAW faces: 6 x 300 would be ~2.3 million
    assert starts == 1 and default.min_steps <= steps < 300 and 1283 * steps <= default.image_steps
    assert plan(default, 50_000) == (1, default.min_steps)  # never fewer steps than the margins need


def test_pixel_box_follows_the_stored_range_and_the_scale(planted):
    """Pixels stored 0..255 and divided by 255 reach the same margins as 0..1 used as they are."""
    _events, result = collect(mmbd(planted, None, scale="255", settings=FAST, pixel_max=255.0))
    assert result.margins[PLANTED] == pytest.approx(exact_margins()[PLANTED], rel=1e-3)


def test_cancel_stops_the_job(planted):
    job = mmbd(planted, None, scale="1", settings=MMBDSettings(starts=1, steps=100_000), pixel_max=1.0)
    first = next(job)
    assert first is not None
    job.close()  # what Cancel does; the job writes nothing, so nothing is left behind
    with pytest.raises(StopIteration):
        next(job)


def test_auto_scale_without_clean_data_is_a_clear_error(planted):
    from core.errors import DataError

    with pytest.raises(DataError, match="scale"):
        collect(mmbd(planted, None, scale="auto"))


def test_gamma_fit_equals_scipys_maximum_likelihood_with_location_zero():
    for seed, size in ((0, 9), (1, 50), (2, 400)):
        data = stats.gamma.rvs(2.5, scale=3.0, size=size, random_state=np.random.default_rng(seed))
        shape, scale = fit_gamma(data)
        ref_shape, _loc, ref_scale = stats.gamma.fit(data, floc=0)
        assert shape == pytest.approx(ref_shape, rel=1e-4) and scale == pytest.approx(ref_scale, rel=1e-4)


def test_gamma_fit_recovers_the_parameters_that_drew_the_data():
    data = stats.gamma.rvs(3.0, scale=2.0, size=400, random_state=np.random.default_rng(1))
    shape, scale = fit_gamma(data)
    assert shape == pytest.approx(3.0, rel=0.2) and scale == pytest.approx(2.0, rel=0.2)
    # the likelihood is maximal there: nearby parameters do worse
    best = np.sum(stats.gamma.logpdf(data, shape, scale=scale))
    for ds, dsc in ((1.05, 1), (0.95, 1), (1, 1.05), (1, 0.95)):
        assert np.sum(stats.gamma.logpdf(data, shape * ds, scale=scale * dsc)) < best


def test_order_statistic_p_value_matches_simulation():
    """p = P(max of n null draws >= r), checked by drawing the maxima."""
    shape, scale, n = 4.0, 5.0, 9
    rng = np.random.default_rng(0)
    maxima = stats.gamma.rvs(shape, scale=scale, size=(200_000, n), random_state=rng).max(axis=1)
    for r in (20.0, 35.0, 45.0):
        simulated = float(np.mean(maxima >= r))
        assert order_p_value(r, shape, scale, n) == pytest.approx(simulated, abs=3e-3)


def test_tiny_p_values_do_not_round_to_zero():
    p = order_p_value(400.0, 4.0, 5.0, 9)
    assert 0.0 < p < 1e-20
    assert p == pytest.approx(9 * stats.gamma.sf(400.0, 4.0, scale=5.0), rel=1e-6)  # 1 - (1 - s)^n ~ n s


def test_detect_flags_two_targets_that_would_hide_each_other():
    margins = {c: 30.0 + 1.3 * ((c * 7) % 10) for c in range(10)}
    margins[2], margins[5] = 300.0, 320.0
    found = detect(margins)
    assert found.flagged == (5, 2)
    assert all(found.p_values[c] >= 0.05 for c in margins if c not in (2, 5))


def test_the_papers_raw_p_value_is_anti_conservative_and_calibration_fixes_it():
    """On backdoor-free statistics (gamma draws, 10 classes) count how often each p-value falls below 0.05.

    The paper's order-statistic p-value, with its null fitted to 9 values,
    does so far more often than 5% of the time; the calibrated one about 5%.
    """
    rng = np.random.default_rng(3)
    trials = 150
    raw_hits = cal_hits = 0
    for _ in range(trials):
        margins = {c: float(v) for c, v in enumerate(stats.gamma.rvs(20.0, scale=1.5, size=10, random_state=rng))}
        top = max(margins, key=margins.get)
        found = detect(margins, draws=200)
        raw_hits += found.raw_p_values[top] < 0.05
        cal_hits += bool(found.flagged)
    assert raw_hits / trials > 0.15  # measured: ~0.3
    assert cal_hits / trials < 0.12  # ~5% per test, three tests (one per possible target): measured ~0.065


def test_calibrated_p_value_is_the_share_of_simulated_raw_p_values_as_small():
    margins = {c: 30.0 + 1.3 * ((c * 7) % 10) for c in range(10)}
    margins[4] = 60.0
    found = detect(margins, draws=300)
    from core.detect.model_level.mmbd import fit_gamma, simulated_raw_p

    others = np.array([v for c, v in margins.items() if c != 4])
    shape, _scale = fit_gamma(others)
    sims = simulated_raw_p(shape, 10, 300)
    assert found.p_values[4] == pytest.approx((1 + np.sum(sims <= found.raw_p_values[4])) / 301, abs=0.02)
