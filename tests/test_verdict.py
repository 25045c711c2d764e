"""The combined verdict's rules (core.detect.model_level.verdict), one test per rule, on hand-made detector results."""

from __future__ import annotations

import numpy as np
import pytest

from core.detect.model_level.cleanse import CleanseResult, LabelSpecific, ReversedTrigger, anomaly_indices, flag_classes
from core.detect.model_level.mmbd import MMBDResult, detect
from core.detect.model_level.verdict import (
    BACKDOORED,
    NO_EVIDENCE,
    SUSPICIOUS,
    Evidence,
    combine,
    from_attack_success,
    from_blind_spot,
    from_cleanse,
    from_detectors,
    from_label_specific,
    from_mmbd,
)


def cleanse_result(norms: dict[int, float]) -> CleanseResult:
    """A Neural Cleanse result built from mask norms with the module's own statistics."""
    indices, median, mad = anomaly_indices(norms)
    flagged = flag_classes(norms, indices, median)
    return CleanseResult(
        verdict="backdoored" if flagged else "clean", flagged_classes=flagged, anomaly_index=indices, norms=norms,
        candidates=sorted(norms), screened_out=[], screening={}, triggers={}, median=median, mad=mad,
        threshold_norm=median - 2 * mad, num_classes=len(norms), scale="255", n_images=100, seconds=1.0,
    )


def mmbd_result(margins: dict[int, float], clean_margin: float | None = None) -> MMBDResult:
    found = detect(margins)
    return MMBDResult(found.flagged, margins, found.p_values, found.null_shape, found.null_scale, len(margins), "255", 1.0,
                      raw_p_values=found.raw_p_values, clean_margin=clean_margin)


# Natural-looking statistics: no class stands out.
CALM_NORMS = {c: 60.0 + 3.0 * ((c * 7) % 10) for c in range(10)}
CALM_MARGINS = {c: 30.0 + 1.5 * ((c * 3) % 10) for c in range(10)}


def test_small_trigger_flagged_by_neural_cleanse_is_backdoored_with_its_class():
    norms = {**CALM_NORMS, 7: 10.0}
    verdict = combine([from_cleanse(cleanse_result(norms)), from_mmbd(mmbd_result(CALM_MARGINS))])
    assert verdict.level == BACKDOORED
    assert verdict.targets == (7,)
    assert verdict.machine_verdict == "backdoored"
    assert "Neural Cleanse" in verdict.reason and "mixed" in verdict.reason  # MM-BD saw nothing: said so


def test_large_trigger_missed_by_neural_cleanse_is_caught_by_mmbd():
    margins = {**CALM_MARGINS, 0: 400.0}
    nc = from_cleanse(cleanse_result(CALM_NORMS))
    assert nc.level == NO_EVIDENCE
    verdict = combine([nc, from_mmbd(mmbd_result(margins))])
    assert verdict.level == BACKDOORED and verdict.targets == (0,)
    assert verdict.summary == "Backdoored (target 0)"


def test_nothing_found_says_which_methods_found_nothing_and_machine_value_clean():
    verdict = combine([from_cleanse(cleanse_result(CALM_NORMS)), from_mmbd(mmbd_result(CALM_MARGINS))])
    assert verdict.level == NO_EVIDENCE
    assert verdict.machine_verdict == "clean"
    assert verdict.summary == "No evidence found by Neural Cleanse and MM-BD"
    assert verdict.targets == ()
    assert verdict.score < 0.5


def test_measured_attack_success_overrules_detectors_that_found_nothing():
    asr = from_attack_success(0.965, 900, 10, target=0)
    verdict = combine([from_cleanse(cleanse_result(CALM_NORMS)), from_mmbd(mmbd_result(CALM_MARGINS)), asr])
    assert verdict.level == BACKDOORED
    assert verdict.targets == (0,)
    assert "96.5%" in verdict.reason and "mixed" in verdict.reason


@pytest.mark.parametrize("rate", [0.25, 0.35, 0.49])
def test_attack_success_far_above_a_models_errors_is_at_least_suspicious(rate):
    verdict = combine([from_cleanse(cleanse_result(CALM_NORMS)), from_attack_success(rate, 500, 10, target=3)])
    assert verdict.level == SUSPICIOUS
    assert verdict.targets == (3,)
    assert verdict.machine_verdict == "suspicious"


def test_attack_success_like_ordinary_errors_is_no_evidence():
    e = from_attack_success(0.05, 500, 10, target=3)
    assert e.level == NO_EVIDENCE and e.score < 0.5


def test_attack_success_score_rises_with_the_rate():
    scores = [from_attack_success(r, 500, 10, target=1).score for r in (0.0, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0)]
    assert scores == sorted(scores)
    assert scores[-1] == 1.0


def test_attack_success_names_the_classes_hit_when_no_target_given():
    labels = np.array([2] * 50 + [5] * 50)
    predicted = np.array([2] * 48 + [0] * 2 + [5] * 45 + [1] * 5)
    e = from_attack_success(float(np.mean(predicted == labels)), 100, 10, predicted=predicted, labels=labels)
    assert e.level == BACKDOORED
    assert e.classes == (2, 5)


def test_all_to_all_hits_spread_over_classes_name_no_single_target():
    labels = np.repeat(np.arange(10), 10)
    e = from_attack_success(1.0, 100, 10, predicted=labels.copy(), labels=labels)
    assert e.level == BACKDOORED and e.classes == ()
    verdict = combine([e])
    assert verdict.summary == "Backdoored"


def test_two_methods_suspicious_on_the_same_class_stay_suspicious_naming_it_first():
    a = Evidence("A", SUSPICIOUS, (4,), 0.55, "a")
    b = Evidence("B", SUSPICIOUS, (6, 4), 0.6, "b")
    verdict = combine([a, b])
    assert verdict.level == SUSPICIOUS and verdict.targets[0] == 4
    assert "independently point to class 4" in verdict.reason
    assert verdict.score == pytest.approx(0.7)  # the strongest score plus the agreement bonus


def test_suspicious_on_different_classes_stays_suspicious_naming_both():
    verdict = combine([Evidence("A", SUSPICIOUS, (4,), 0.55, "a"), Evidence("B", SUSPICIOUS, (6,), 0.6, "b")])
    assert verdict.level == SUSPICIOUS
    assert set(verdict.targets) == {4, 6}
    assert verdict.targets[0] == 6  # the stronger evidence first


@pytest.mark.parametrize("levels", [(NO_EVIDENCE, SUSPICIOUS), (SUSPICIOUS, NO_EVIDENCE, NO_EVIDENCE), (NO_EVIDENCE, BACKDOORED)])
def test_never_no_evidence_while_any_evidence_says_otherwise(levels):
    evidence = [Evidence(f"M{i}", lvl, (i,) if lvl != NO_EVIDENCE else (), 0.6 if lvl != NO_EVIDENCE else 0.1, "x")
                for i, lvl in enumerate(levels)]
    verdict = combine(evidence)
    assert verdict.level != NO_EVIDENCE
    assert verdict.machine_verdict != "clean"
    strongest = max(levels, key=[NO_EVIDENCE, SUSPICIOUS, BACKDOORED].index)
    assert verdict.level == strongest


def test_backdoored_verdict_never_scores_below_the_line():
    verdict = combine([Evidence("A", BACKDOORED, (1,), 0.2, "a")])
    assert verdict.score >= 0.5


def test_neural_cleanse_between_1_5_and_2_is_suspicious():
    # index of class 3 = (median - norm) / (1.4826 * MAD): choose the norm for an index of 1.75
    norms = {c: 50.0 + 2.0 * c for c in range(10)}  # median 59, MAD 5 -> scaled 7.413
    norms[0] = 59.0 - 1.75 * 1.4826 * 5.0
    indices, median, mad = anomaly_indices(norms)
    assert 1.5 < indices[0] < 2.0
    e = from_cleanse(cleanse_result(norms))
    assert e.level == SUSPICIOUS and e.classes == (0,)


def test_mmbd_levels_follow_the_p_value_thresholds():
    strong = from_mmbd(mmbd_result({**CALM_MARGINS, 2: 500.0}))
    assert strong.level == BACKDOORED and strong.classes == (2,)
    calm = from_mmbd(mmbd_result(CALM_MARGINS))
    assert calm.level == NO_EVIDENCE and calm.score < 0.5


# A BatchNorm + global-average-pooling model (shape of the zoo's frame BadNet): every class is easy to reach,
# margins 40-100 against a clean margin of 5.5, masks ~30 px; class 3 is second easiest by both, class 8 is not small.
BLIND_MARGINS = {0: 72.8, 1: 23.0, 2: 61.4, 3: 98.8, 4: 77.1, 5: 82.5, 6: 56.4, 7: 51.7, 8: 100.3, 9: 43.2}
BLIND_NORMS = {0: 29.4, 1: 124.3, 2: 23.3, 3: 18.8, 4: 24.8, 5: 16.6, 6: 36.7, 7: 34.7, 8: 28.7, 9: 42.8}


def test_blind_spot_needs_every_class_far_beyond_the_clean_margin():
    assert from_blind_spot(mmbd_result(CALM_MARGINS, clean_margin=9.0)) is None  # median 36.75 / 9 = 4.1 < 6
    assert from_blind_spot(mmbd_result(CALM_MARGINS)) is None  # no clean data: cannot be told
    e = from_blind_spot(mmbd_result(CALM_MARGINS, clean_margin=5.0))  # 7.35 times
    assert e is not None and e.level == SUSPICIOUS
    assert e.details["median_margin_over_clean_margin"] == pytest.approx(36.75 / 5.0)


def test_blind_spot_names_the_classes_both_methods_find_easiest():
    e = from_blind_spot(mmbd_result(BLIND_MARGINS, clean_margin=5.5), cleanse_result(BLIND_NORMS))
    # margins rank 8, 3, 5 first; masks rank 5, 3, 2 first: both put 3 and 5 in their three easiest
    assert set(e.classes) == {3, 5}
    alone = from_blind_spot(mmbd_result(BLIND_MARGINS, clean_margin=5.5))
    assert alone.classes == (8, 3, 5)  # MM-BD alone: its three easiest


def test_silent_detectors_on_a_blind_model_give_an_inconclusive_suspicious_verdict():
    nc, mm = cleanse_result(BLIND_NORMS), mmbd_result(BLIND_MARGINS, clean_margin=5.5)
    evidence = [from_cleanse(nc), from_mmbd(mm)]
    assert [e.level for e in evidence] == [NO_EVIDENCE, NO_EVIDENCE]
    verdict = combine(evidence + [from_blind_spot(mm, nc)])
    assert verdict.level == SUSPICIOUS and verdict.machine_verdict == "suspicious"
    assert verdict.summary.startswith("Suspicious, inconclusive") and "classes" in verdict.summary
    assert "not clean" in verdict.reason


def test_blind_spot_is_no_second_vote_for_a_class():
    nc = Evidence("Neural Cleanse", SUSPICIOUS, (3,), 0.45, "x")
    blind = from_blind_spot(mmbd_result(BLIND_MARGINS, clean_margin=5.5), cleanse_result(BLIND_NORMS))
    verdict = combine([nc, blind])
    assert "independently" not in verdict.reason  # it re-reads the detectors' numbers
    assert verdict.score == pytest.approx(0.5)  # no agreement bonus
    attack = combine([from_attack_success(0.9, 100, 10, target=7), blind])
    assert attack.level == BACKDOORED and attack.targets == (7,)


def test_in_the_blind_spot_a_single_detectors_outlier_is_suspicious_but_attack_success_stays_proof():
    blind = from_blind_spot(mmbd_result(BLIND_MARGINS, clean_margin=5.5), cleanse_result(BLIND_NORMS))
    nc = Evidence("Neural Cleanse", BACKDOORED, (3,), 0.52, "an abnormally small trigger reaches class 3")
    verdict = combine([nc, blind])
    assert verdict.level == SUSPICIOUS and verdict.targets[0] == 3
    assert "read as suspicious" in verdict.evidence[0].summary
    assert verdict.evidence[0].details["level_before_blind_spot"] == BACKDOORED
    assert combine([nc]).level == BACKDOORED  # the same evidence without the blind spot
    measured = from_attack_success(0.97, 900, 10, target=3)
    assert combine([nc, blind, measured]).level == BACKDOORED


def with_label_specific(norms: dict[int, float], untargeted: float, destinations: dict[int, int],
                        reached: bool = True) -> CleanseResult:
    """A Neural Cleanse result whose step 4 found an untargeted trigger of ``untargeted`` px."""
    result = cleanse_result(norms)
    trigger = ReversedTrigger(-1, np.zeros((2, 2)), np.zeros((2, 2, 1)), untargeted, 0.95, reached, 10)
    result.label_specific = LabelSpecific(trigger, min(norms.values()), 0.95, destinations, {k: 0.9 for k in destinations})
    return result


SHIFT = {k: (k + 1) % 10 for k in range(10)}  # y -> y + 1
HUB = {k: (8 if k != 8 else 3) for k in range(10)}  # natural confusions: most classes fall to one hub class


def test_label_specific_trigger_far_below_every_one_class_trigger_with_a_permutation_is_backdoored():
    nc = with_label_specific(CALM_NORMS, 10.0, SHIFT)  # smallest one-class trigger 60 px
    evidence = from_label_specific(nc)
    assert evidence.level == BACKDOORED and evidence.classes == ()  # no single target to name
    assert "0\u21921, 1\u21922" in evidence.summary and "all-to-all" in evidence.summary
    verdict = combine(from_detectors(nc, mmbd_result(CALM_MARGINS)))
    assert verdict.level == BACKDOORED and verdict.targets == ()
    assert verdict.summary.startswith("Backdoored (all-to-all: 0\u21921, 1\u21922, 2\u21923")
    assert verdict.score > 0.75


def test_label_specific_ratio_below_one_into_a_hub_class_is_only_suspicious():
    evidence = from_label_specific(with_label_specific(CALM_NORMS, 50.0, HUB))
    assert evidence.level == SUSPICIOUS and evidence.classes == (8,)
    assert 0.5 < evidence.score < 0.75


@pytest.mark.parametrize("untargeted, destinations, reached", [(60.0, SHIFT, True), (150.0, HUB, True), (10.0, SHIFT, False)])
def test_no_label_specific_shortcut_is_no_evidence(untargeted, destinations, reached):
    # as large as the smallest one-class trigger (the line), the zoo's clean models (2-3.5x), or never reached
    evidence = from_label_specific(with_label_specific(CALM_NORMS, untargeted, destinations, reached))
    assert evidence.level == NO_EVIDENCE
    assert evidence.score <= 0.5


def test_label_specific_check_keeps_its_level_in_the_blind_spot():
    # it compares two triggers of the same model, not one class with the spread of the others
    nc = with_label_specific(BLIND_NORMS, 2.0, SHIFT)
    verdict = combine(from_detectors(nc, mmbd_result(BLIND_MARGINS, clean_margin=5.5)))
    assert any(e.method == "blind-spot check" for e in verdict.evidence)
    assert verdict.level == BACKDOORED and verdict.summary.startswith("Backdoored (all-to-all")


def test_targets_label_names_an_all_to_all_verdict_which_has_no_single_target():
    from core.detect.model_level.verdict import targets_label

    verdict = combine(from_detectors(with_label_specific(CALM_NORMS, 10.0, SHIFT)))
    assert targets_label(verdict.targets, verdict.summary) == "all-to-all"
    assert targets_label((2, 5), "Backdoored (targets 2, 5)") == "2,5"
    assert targets_label((), "No evidence found by Neural Cleanse") == "-"


def test_label_specific_silence_beside_a_one_target_finding_is_not_called_mixed():
    nc = with_label_specific({**CALM_NORMS, 7: 10.0}, 150.0, HUB)
    verdict = combine(from_detectors(nc))
    assert verdict.level == BACKDOORED and verdict.targets == (7,)
    assert "mixed" not in verdict.reason  # Neural Cleanse found the target; the all-to-all check had nothing to find
    assert "mixed" in combine(from_detectors(nc, mmbd_result(CALM_MARGINS))).reason  # MM-BD's silence still is


def test_label_specific_not_run_adds_no_evidence():
    assert from_label_specific(cleanse_result(CALM_NORMS)) is None
    assert [e.method for e in from_detectors(cleanse_result(CALM_NORMS))] == ["Neural Cleanse"]


def test_as_dict_carries_each_methods_evidence():
    d = combine([from_cleanse(cleanse_result(CALM_NORMS)), from_attack_success(0.9, 10, 10, target=1)]).as_dict()
    assert d["verdict"] == "backdoored" and d["targets"] == [1]
    assert set(d["evidence"]) == {"Neural Cleanse", "measured attack success"}
    assert d["evidence"]["measured attack success"]["details"]["attack_success_rate"] == 0.9


def test_no_method_run_is_no_evidence_and_says_so():
    verdict = combine([])
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
            "summary", "targets", "score", "evidence"} <= set(out)
    assert out["verdict"] == "backdoored" and out["targets"][0] == 7 and out["flagged_classes"] == out["targets"]
    measured = out["evidence"]["measured attack success"]
    assert measured["level"] == "backdoored" and measured["details"]["attack_success_rate"] >= 0.5
    assert out["summary"].startswith("Backdoored (target 7")
    assert set(out["evidence"]) == {"MM-BD", "measured attack success"}


def test_cli_cleanse_refuses_a_target_without_poisoned_data(demo_bundle, capsys):
    import cli

    code = cli.main(["cleanse", "--model", str(demo_bundle.model), "--clean", str(demo_bundle.clean_valid), "--target", "7", "--json"])
    assert code == 2 and "--poisoned" in capsys.readouterr().err
