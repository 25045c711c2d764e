"""The combined verdict's rules (core.detect.model_level.verdict), one test per rule, on hand-made detector results.

The rules are tested with hand-built levels (every null log(1 + s) ~ N(0, 0.5^2), four detectors), so each tail
probability is a normal quantile a reader can check: a statistic s gives z = 2 log(1 + s), p = 4 x P(Z > z).
The cut-offs are those of a 2% / 10% clean false-alarm rate over four detectors: 0.0201517 and 0.1040416.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.detect.model_level.cleanse import CleanseResult, LabelSpecific, ReversedTrigger, anomaly_indices, flag_classes
from core.detect.model_level.levels import Levels, Null, _cut_for_rate, levels
from core.detect.model_level.mmbd import MMBDResult, detect
from core.detect.model_level.verdict import (
    BACKDOORED,
    NO_EVIDENCE,
    SUSPICIOUS,
    Evidence,
    combine,
    from_attack_success,
    from_cleanse,
    from_detectors,
    from_label_specific,
    from_mmbd,
    from_warp,
    is_label_specific_backdoor,
)
from core.detect.model_level.warp import WarpResult

LV = Levels({d: Null(d, 0.0, 0.5, 30) for d in ("nc", "mmbd", "warp", "ls")}, _cut_for_rate(4, 0.02), _cut_for_rate(4, 0.10),
            expected={"backdoored": {"rate": 0.02, "low": 0.01, "high": 0.05}, "suspicious": {"rate": 0.10, "low": 0.06, "high": 0.2}})


def p_of(statistic: float) -> float:
    """The false-alarm probability of one detector's statistic under LV, by hand: 4 x P(Z > 2 log(1 + s))."""
    return min(1.0, 4 * 0.5 * math.erfc(2 * math.log1p(statistic) / math.sqrt(2)))


def at(z: float) -> float:
    """The statistic at z spreads under LV: 2 log(1 + s) = z."""
    return math.expm1(z / 2)


def cleanse_result(norms: dict[int, float]) -> CleanseResult:
    """A Neural Cleanse result built from mask norms with the module's own statistics."""
    indices, median, mad = anomaly_indices(norms)
    flagged = flag_classes(norms, indices, median)
    return CleanseResult(
        verdict="backdoored" if flagged else "clean", flagged_classes=flagged, anomaly_index=indices, norms=norms,
        candidates=sorted(norms), screened_out=[], screening={}, triggers={}, median=median, mad=mad,
        threshold_norm=median - 2 * mad, num_classes=len(norms), scale="255", n_images=100, seconds=1.0,
    )


def mmbd_result(margins: dict[int, float]) -> MMBDResult:
    found = detect(margins)
    return MMBDResult(found.flagged, margins, found.p_values, found.null_shape, found.null_scale, len(margins), "255", 1.0,
                      raw_p_values=found.raw_p_values)


def warp_result(shifts: dict[int, float]) -> WarpResult:
    return WarpResult(shifts, {c: True for c in shifts}, {c: 0.0 for c in shifts}, float(np.median(list(shifts.values()))),
                      None, len(shifts), 1.0)


def with_label_specific(norms: dict[int, float], untargeted: float, destinations: dict[int, int],
                        reached: bool = True) -> CleanseResult:
    """A Neural Cleanse result whose step 4 found an untargeted trigger of ``untargeted`` px."""
    result = cleanse_result(norms)
    trigger = ReversedTrigger(-1, np.zeros((2, 2)), np.zeros((2, 2, 1)), untargeted, 0.95, reached, 10)
    result.label_specific = LabelSpecific(trigger, min(norms.values()), 0.95, destinations, {k: 0.9 for k in destinations})
    return result


# Natural-looking statistics: no class stands out. Norms 60-87 px (median 73.5, 1.4826 x MAD = 11.1):
# the smallest lies 1.2 spreads below; margins 30-43.5 on a log scale; warps 2.0-2.9 px, the two smallest 2.0 and 2.1.
CALM_NORMS = {c: 60.0 + 3.0 * ((c * 7) % 10) for c in range(10)}
CALM_MARGINS = {c: 30.0 + 1.5 * ((c * 3) % 10) for c in range(10)}
CALM_SHIFTS = {c: 2.0 + 0.1 * c for c in range(10)}
SHIFT = {k: (k + 1) % 10 for k in range(10)}  # y -> y + 1
HUB = {k: (8 if k != 8 else 3) for k in range(10)}  # natural confusions: most classes fall to one hub class


def test_calm_detectors_say_no_evidence_and_name_every_method():
    verdict = combine(from_detectors(with_label_specific(CALM_NORMS, 150.0, HUB), mmbd_result(CALM_MARGINS),
                                     warp_result(CALM_SHIFTS), lv=LV), lv=LV)
    assert verdict.level == NO_EVIDENCE and verdict.machine_verdict == "clean" and verdict.targets == ()
    assert verdict.summary == "No evidence found by Neural Cleanse, label-specific check, MM-BD and warp inversion"
    assert "Not proof of a clean model" in verdict.reason and verdict.false_alarm == ""


def test_a_statistic_far_beyond_clean_models_is_backdoored_with_its_class():
    norms = {**CALM_NORMS, 7: 10.0}
    evidence = from_cleanse(cleanse_result(norms), LV)
    # median 72, 1.4826 x MAD 11.1195: class 7 lies (72 - 10) / 11.1195 = 5.5758 spreads below
    indices, median, mad = anomaly_indices(norms)
    assert evidence.details["statistic"] == pytest.approx((median - 10.0) / mad, abs=1e-4)
    assert evidence.p == pytest.approx(p_of((median - 10.0) / mad), rel=1e-3)
    verdict = combine([evidence, from_mmbd(mmbd_result(CALM_MARGINS), LV)], lv=LV)
    assert verdict.level == BACKDOORED and verdict.targets == (7,) and verdict.summary == "Backdoored (target 7)"
    assert verdict.false_alarm == "about 2 in 100 clean models get this answer (95% interval 1-5)"
    assert "MM-BD found nothing unusual" in verdict.reason  # the silent method is named, not hidden


def test_levels_follow_the_cut_offs_on_the_combined_probability():
    # z = 2: p = 4 x 0.02275 = 0.091: between the cut-offs (0.0202, 0.104) -> suspicious
    assert p_of(at(2.0)) == pytest.approx(0.0910, abs=1e-4)
    warp = from_warp(warp_result({**CALM_SHIFTS, 3: 2.0 / math.exp(at(2.0))}), LV)  # the gap log(2.0 / s3) is the statistic: class 0 is next
    assert warp.level == SUSPICIOUS and warp.classes == (3,) and warp.p == pytest.approx(0.0910, abs=1e-3)
    # z = 3: p = 4 x 0.00135 = 0.0054 -> backdoored
    warp = from_warp(warp_result({**CALM_SHIFTS, 3: 2.0 / math.exp(at(3.0))}), LV)
    assert warp.level == BACKDOORED and warp.p == pytest.approx(0.0054, abs=1e-4)
    # z = 1.5: p = 4 x 0.0668 = 0.267 -> no evidence, no class named
    warp = from_warp(warp_result({**CALM_SHIFTS, 3: 2.0 / math.exp(at(1.5))}), LV)
    assert warp.level == NO_EVIDENCE and warp.classes == ()


def test_one_detector_barely_past_neural_cleanses_old_line_is_never_backdoored_with_the_shipped_levels():
    """Issue 22: Neural Cleanse's index 2-3 with the others silent was 'backdoored'; clean models reach it."""
    lv = levels()
    for index in (2.0, 2.5, 3.0):
        norms = dict(CALM_NORMS)
        indices, median, mad = anomaly_indices(norms)
        norms[0] = median - index * mad  # class 0 exactly ``index`` spreads below the median
        evidence = from_cleanse(cleanse_result(norms), lv)
        assert evidence.level != BACKDOORED, (index, evidence.p)


def test_large_margin_is_caught_by_mmbd_when_neural_cleanse_is_silent():
    margins = {**CALM_MARGINS, 0: 400.0}
    nc = from_cleanse(cleanse_result(CALM_NORMS), LV)
    assert nc.level == NO_EVIDENCE
    verdict = combine([nc, from_mmbd(mmbd_result(margins), LV)], lv=LV)
    assert verdict.level == BACKDOORED and verdict.targets == (0,)


def test_two_methods_on_the_same_class_name_it_first_and_say_which_agree():
    nc = from_cleanse(cleanse_result({**CALM_NORMS, 5: 35.0}), LV)
    mm = from_mmbd(mmbd_result({**CALM_MARGINS, 5: 80.0, 2: 95.0}), LV)
    assert nc.classes == (5,) and nc.level != NO_EVIDENCE
    verdict = combine([nc, mm], lv=LV)
    assert verdict.targets[0] in (5, 2)
    if 5 in mm.classes:
        assert verdict.reason.startswith("Neural Cleanse and MM-BD both point to class 5.")
        assert verdict.score == pytest.approx(min(1.0, max(nc.score, mm.score) + 0.1))


def test_never_no_evidence_while_any_evidence_says_otherwise():
    quiet = from_cleanse(cleanse_result(CALM_NORMS), LV)
    for level in (SUSPICIOUS, BACKDOORED):
        other = Evidence("X", level, (1,), 0.6, "says so")
        assert combine([quiet, other], lv=LV).level == level


def test_backdoored_verdict_never_scores_below_the_line():
    verdict = combine([Evidence("X", BACKDOORED, (1,), 0.2, "weak score")], lv=LV)
    assert verdict.level == BACKDOORED and verdict.score >= 0.5


def test_measured_attack_success_overrules_silent_detectors_and_is_not_a_clean_model_rate():
    verdict = combine([from_cleanse(cleanse_result(CALM_NORMS), LV), from_attack_success(0.96, 900, 10, target=0)], lv=LV)
    assert verdict.level == BACKDOORED and verdict.targets == (0,)
    assert verdict.false_alarm == ""  # the level came from measured attack success, not from a statistic of clean models


@pytest.mark.parametrize("rate", [0.2, 0.35])
def test_attack_success_far_above_a_models_errors_is_at_least_suspicious(rate):
    assert from_attack_success(rate, 100, 10, target=3).level == SUSPICIOUS


def test_attack_success_like_ordinary_errors_is_no_evidence():
    assert from_attack_success(0.03, 900, 10, target=3).level == NO_EVIDENCE


def test_attack_success_names_the_classes_hit_when_no_target_given():
    predicted = np.array([2] * 80 + [5] * 15 + [1] * 5)
    labels = np.array([2] * 80 + [5] * 15 + [7] * 5)
    assert from_attack_success(0.95, 100, 10, predicted=predicted, labels=labels).classes == (2, 5)


def test_all_to_all_hits_spread_over_classes_name_no_single_target():
    labels = np.arange(100) % 10
    assert from_attack_success(0.9, 100, 10, predicted=labels.copy(), labels=labels).classes == ()


def test_label_specific_trigger_with_a_permutation_is_an_all_to_all_backdoor():
    nc = with_label_specific(CALM_NORMS, 3.0, SHIFT)  # smallest one-class trigger 60 px: statistic 60 / 3 = 20
    evidence = from_label_specific(nc, LV)
    assert evidence.details["statistic"] == pytest.approx(20.0)
    assert evidence.level == BACKDOORED and evidence.classes == ()  # no single target to name
    assert "0\u21921, 1\u21922" in evidence.summary and "all-to-all" in evidence.summary
    verdict = combine(from_detectors(nc, mmbd_result(CALM_MARGINS), lv=LV), lv=LV)
    assert verdict.level == BACKDOORED and verdict.targets == ()
    assert verdict.summary.startswith("Backdoored (all-to-all: 0\u21921, 1\u21922, 2\u21923")
    assert is_label_specific_backdoor(nc.label_specific, LV)


def test_label_specific_alarm_into_a_hub_class_names_the_hub():
    evidence = from_label_specific(with_label_specific(CALM_NORMS, 3.0, HUB), LV)
    assert evidence.level == BACKDOORED and evidence.classes == (8,)
    assert not is_label_specific_backdoor(with_label_specific(CALM_NORMS, 3.0, HUB).label_specific, LV)


@pytest.mark.parametrize("untargeted, reached", [(150.0, True), (3.0, False)])
def test_no_label_specific_shortcut_is_no_evidence(untargeted, reached):
    # the untargeted trigger 2.5 x the smallest one-class trigger (as on clean models), or never reached
    evidence = from_label_specific(with_label_specific(CALM_NORMS, untargeted, SHIFT, reached), LV)
    assert evidence.level == NO_EVIDENCE and evidence.classes == ()


def test_targets_label_names_an_all_to_all_verdict_which_has_no_single_target():
    from core.detect.model_level.verdict import targets_label

    verdict = combine(from_detectors(with_label_specific(CALM_NORMS, 3.0, SHIFT), lv=LV), lv=LV)
    assert targets_label(verdict.targets, verdict.summary) == "all-to-all"
    assert targets_label((2, 5), "Backdoored (targets 2, 5)") == "2,5"
    assert targets_label((), "No evidence found by Neural Cleanse") == "-"


def test_label_specific_silence_beside_a_one_target_finding_is_not_called_mixed():
    nc = with_label_specific({**CALM_NORMS, 7: 10.0}, 150.0, HUB)
    verdict = combine(from_detectors(nc, lv=LV), lv=LV)
    assert verdict.level == BACKDOORED and verdict.targets == (7,)
    assert "found nothing unusual" not in verdict.reason  # the all-to-all check had nothing to find
    assert "MM-BD found nothing unusual" in combine(from_detectors(nc, mmbd_result(CALM_MARGINS), lv=LV), lv=LV).reason


def test_label_specific_not_run_adds_no_evidence():
    assert from_label_specific(cleanse_result(CALM_NORMS), LV) is None
    assert [e.method for e in from_detectors(cleanse_result(CALM_NORMS), lv=LV)] == ["Neural Cleanse"]


def test_as_dict_carries_each_methods_evidence_and_the_false_alarm_words():
    nc = from_cleanse(cleanse_result({**CALM_NORMS, 7: 10.0}), LV)
    d = combine([nc, from_attack_success(0.9, 10, 10, target=7)], lv=LV).as_dict()
    assert d["verdict"] == "backdoored" and d["targets"] == [7]
    assert set(d["evidence"]) == {"Neural Cleanse", "measured attack success"}
    assert d["evidence"]["Neural Cleanse"]["details"]["p"] == pytest.approx(nc.p, rel=1e-3)
    # the verdict's p: Neural Cleanse alone among the calibrated detectors, its tail uncorrected (one ran)
    assert d["p"] == pytest.approx(nc.details["clean_tail"], rel=1e-3) and "false_alarm" in d


def test_no_method_run_is_no_evidence_and_says_so():
    verdict = combine([], lv=LV)
    assert verdict.level == NO_EVIDENCE and "no method" in verdict.summary


# --------------------------------------------------------------------- CLI


def test_cli_cleanse_weighs_measured_attack_success_into_the_verdict(demo_bundle, capsys):
    """The demo BadNet with its poisoned test set: the measured 7s make the verdict backdoored, target 7."""
    import json

    import cli

    code = cli.main(["cleanse", "--model", str(demo_bundle.model), "--clean", str(demo_bundle.clean_valid),
                     "--methods", "mmbd", "--poisoned", str(demo_bundle.poisoned_test), "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {"verdict", "flagged_classes", "anomaly_index", "norms", "candidates", "seconds",
            "summary", "targets", "score", "evidence", "false_alarm"} <= set(out)
    assert out["verdict"] == "backdoored" and out["targets"][0] == 7 and out["flagged_classes"] == out["targets"]
    measured = out["evidence"]["measured attack success"]
    assert measured["level"] == "backdoored" and measured["details"]["attack_success_rate"] >= 0.5
    assert out["summary"].startswith("Backdoored (target 7")
    assert set(out["evidence"]) == {"MM-BD", "measured attack success"}


def test_cli_cleanse_refuses_a_target_without_poisoned_data(demo_bundle, capsys):
    import cli

    code = cli.main(["cleanse", "--model", str(demo_bundle.model), "--clean", str(demo_bundle.clean_valid), "--target", "7", "--json"])
    assert code == 2 and "--poisoned" in capsys.readouterr().err


# ------------------------------------------------------------ the combined level (Fisher's sum against clean models)

LVF = Levels(LV.nulls, LV.backdoored_p, LV.suspicious_p, LV.expected, combined_null=Null("combined", 1.668, 0.523, 23))


def with_tail(detector: str, tail: float, cls: int):
    """Evidence whose statistic lies at ``tail`` under LVF's N(0, 0.5^2) null of log(1 + s)."""
    from scipy.stats import norm

    from core.detect.model_level.verdict import _calibrated

    return _calibrated(detector, math.expm1(0.5 * norm.isf(tail)), cls, "by hand", {}, LVF)


def test_one_detector_barely_past_its_own_line_does_not_make_the_model_backdoored():
    # Neural Cleanse at tail 0.025: its own Bonferroni p 4 x 0.025 = 0.1 is under its "suspicious" line 0.104;
    # the others at the median clean model (tail 0.5). Fisher: S = -ln 0.025 + 3 ln 2 = 3.6889 + 2.0794 = 5.7683,
    # log1p(S) = 1.9122, z = (1.9122 - 1.668) / 0.523 = 0.467, p = 0.320: no evidence
    evidence = [with_tail("nc", 0.025, 7), with_tail("mmbd", 0.5, 3), with_tail("warp", 0.5, 2), with_tail("ls", 0.5, 1)]
    assert evidence[0].level == SUSPICIOUS
    verdict = combine(evidence, lv=LVF)
    assert verdict.p == pytest.approx(0.320, abs=0.002) and verdict.level == NO_EVIDENCE and verdict.targets == ()


def test_two_detectors_unusual_together_make_suspicious_and_name_the_rarest_class():
    # tails 0.01 (nc, class 7) and 0.02 (MM-BD, class 7), two at 0.5: S = 4.6052 + 3.9120 + 1.3863 = 9.9035,
    # log1p(S) = 2.3890, z = (2.3890 - 1.668) / 0.523 = 1.3786, p = 0.0840: suspicious (2% < p < 10%)
    evidence = [with_tail("nc", 0.01, 7), with_tail("mmbd", 0.02, 7), with_tail("warp", 0.5, 2), with_tail("ls", 0.5, 1)]
    verdict = combine(evidence, lv=LVF)
    assert verdict.p == pytest.approx(0.0840, abs=0.001) and verdict.level == SUSPICIOUS and verdict.targets == (7,)
    assert verdict.false_alarm.startswith("about 10 in 100 clean models get this answer or a stronger one")
    # no class agreement, one detector far out: backdoored with its class
    far = combine([with_tail("nc", 1e-6, 4), with_tail("mmbd", 0.5, 3), with_tail("warp", 0.5, 2), with_tail("ls", 0.5, 1)], lv=LVF)
    assert far.level == BACKDOORED and far.targets == (4,)
