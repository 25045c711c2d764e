"""One verdict from all the evidence: the model-level detectors, calibrated on clean models, and measured attack success.

Each detector sees one side of a backdoor. Neural Cleanse (Wang et al., 2019)
finds abnormally *small* triggers and misses large ones; MM-BD (Wang et al.,
2024) finds a class any input can be pushed abnormally far towards, whatever
the trigger's size; warp inversion (core.detect.model_level.warp) finds a
class a gentle smooth warp reaches (WaNet); the label-specific check (Neural
Cleanse's untargeted step) finds a trigger whose target depends on the
label (all-to-all). When the analyst holds suspected-poisoned images, the
attack success measured on them is direct evidence.

Each detector's number is judged by what clean models give
(core.detect.model_level.levels, fitted on the zoo's dev half and measured on
its locked test half, docs/zoo.md): its tail probability among clean models,
times the number of detectors (a clean model has that many chances to look
unusual once), is the model's false-alarm probability ``p``. The levels are
cut-offs on ``p`` that about 2 and 10 clean models in 100 fall below, and the
verdict says so in words ("about 2 in 100 clean models get this answer").
So one detector barely past its own old line (Neural Cleanse's index 2-3,
which clean models often reach) no longer makes "backdoored".

1. Each method's result becomes an :class:`Evidence`: a level, the classes
   it points to, a suspicion score in [0, 1] (0.5 at the "backdoored"
   cut-off) and a sentence.
2. The verdict is the *strongest* level any evidence reaches -- it never
   says "no evidence" while some evidence says otherwise. Its targets are the
   classes behind that level, those two methods agree on first.
3. The score (for ranking models and ROC curves) is the largest evidence
   score, plus a small bonus when methods agree on a class.

A wrong "clean" is the worst answer this tool can give, hence "no evidence
found by <methods run>" rather than "clean": the machine value stays
``clean`` in the CLI contract, the words say what was and was not checked.
Pure functions: no TensorFlow here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from core.detect.model_level.levels import FALSE_ALARM_TARGETS, Levels, finite_or_none, levels
from core.detect.model_level.statistics import NAMES, ls_statistic, mmbd_statistic, nc_statistic, twin_statistic, warp_statistic

BACKDOORED = "backdoored"
SUSPICIOUS = "suspicious"
NO_EVIDENCE = "no evidence"
LEVEL_RANK = {NO_EVIDENCE: 0, SUSPICIOUS: 1, BACKDOORED: 2}

# Measured attack success on the analyst's suspected-poisoned data (images of
# *other* classes, so a sound model sends only its few errors, a few percent,
# to any one class): half of them sent to one class is no accident; a fifth
# is far above what a model worth using gets wrong, and deserves a look.
ASR_BACKDOORED = 0.5
ASR_SUSPICIOUS = 0.2
# Bonus to the score when two methods point at the same class.
AGREEMENT_BONUS = 0.1
SUPPORTING_TAIL = 0.05  # a detector rarer than this among clean models supports a raised verdict's targets
# Label-specific backdoors (all-to-all): when the label-specific check raises the verdict and the untargeted
# trigger sends the classes to many different destinations (none takes more than a third of them, as in
# y -> y + 1), the backdoor has no single target: the headline gives its class map.
LABEL_SPECIFIC_HUB_SHARE = 1 / 3
LABEL_SPECIFIC = NAMES["ls"]
ALL_TO_ALL = "Backdoored (all-to-all"  # the headline's start when the label-specific check raised the verdict
__all__ = ["finite_or_none"]  # re-exported for callers of the earlier module


@dataclass(frozen=True)
class Evidence:
    """What one method says, in the verdict's terms."""

    method: str  # "Neural Cleanse", "MM-BD", "warp inversion", "label-specific check", "measured attack success"
    level: str  # BACKDOORED, SUSPICIOUS or NO_EVIDENCE
    classes: tuple[int, ...]  # the classes it points to (most suspicious first); () when none
    score: float  # suspicion in [0, 1]; 0.5 at the "backdoored" cut-off
    summary: str  # one sentence for the analyst
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def p(self) -> Optional[float]:
        """The false-alarm probability behind a calibrated detector's level (None for measured attack success)."""
        return self.details.get("p")

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "level": self.level,
            "classes": list(self.classes),
            "score": round(self.score, 4),
            "summary": self.summary,
            "details": self.details,
        }


@dataclass(frozen=True)
class Verdict:
    """The combined judgement, its reason and the evidence behind it."""

    level: str  # BACKDOORED, SUSPICIOUS or NO_EVIDENCE
    targets: tuple[int, ...]
    score: float
    summary: str  # the headline sentence: "Backdoored (target 0)", "No evidence found by ..."
    reason: str  # why, in plain language, naming agreements and disagreements
    evidence: tuple[Evidence, ...]
    false_alarm: str = ""  # "about 2 in 100 clean models get this answer (95% interval 1-4)"; "" when not from the detectors
    p: Optional[float] = None  # the detectors' combined false-alarm probability

    @property
    def machine_verdict(self) -> str:
        """The CLI contract's value: "backdoored", "suspicious" or "clean" (= no evidence found)."""
        return "clean" if self.level == NO_EVIDENCE else self.level

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(e.method for e in self.evidence)

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.machine_verdict,
            "level": self.level,
            "targets": list(self.targets),
            "score": round(self.score, 4),
            "summary": self.summary,
            "reason": self.reason,
            "false_alarm": self.false_alarm,
            "p": None if self.p is None else float(f"{self.p:.4g}"),
            "methods": list(self.methods),
            "evidence": {e.method: e.as_dict() for e in self.evidence},
        }


# ------------------------------------------------------------ per method


def _calibrated(detector: str, statistic: float, cls: Optional[int], sentence: str, details: dict[str, Any],
                lv: Levels) -> Evidence:
    """A detector's statistic judged against clean models: its level, score and sentence."""
    if detector not in lv.nulls:  # levels fitted before this detector existed: it informs, it does not decide
        details = {**details, "detector": detector, "statistic": round(float(statistic), 4), "class": cls, "clean_tail": None,
                   "p": None}
        return Evidence(NAMES[detector], NO_EVIDENCE, (), 0.0,
                        f"{sentence} (not calibrated on clean models yet: left out of the verdict)", details)
    tail = lv.nulls[detector].tail(statistic)
    p = lv.alone(tail)
    level = lv.level(p)
    rare = f"about {_one_in(tail)} clean models go this far" if tail < 0.5 else "as clean models commonly do"
    details = {**details, "detector": detector, "statistic": round(float(statistic), 4), "class": cls,
               "clean_tail": float(f"{tail:.4g}"), "p": float(f"{p:.4g}")}
    classes = (cls,) if cls is not None and level != NO_EVIDENCE else ()
    return Evidence(NAMES[detector], level, classes, lv.score(p), f"{sentence} ({rare})", details)


def _one_in(tail: float) -> str:
    """0.02 -> '1 in 50'; 3e-7 -> 'fewer than 1 in a million'."""
    if tail < 1e-6:
        return "fewer than 1 in a million"
    n = 1.0 / tail
    return f"1 in {n:,.0f}" if n >= 10 else f"{tail * 100:.0f} in 100"


def from_cleanse(result: Any, lv: Optional[Levels] = None) -> Evidence:
    """Neural Cleanse (a ``core.detect.model_level.cleanse.CleanseResult``): is one trigger abnormally small?"""
    lv = lv or levels()
    statistic, cls = nc_statistic(result.norms)
    details = {"anomaly_index": {str(c): finite_or_none(v) for c, v in result.anomaly_index.items()},
               "norms": {str(c): round(float(v), 2) for c, v in result.norms.items()},
               "median_norm": round(float(result.median), 2)}
    if cls is None:
        sentence = f"no class needs a smaller trigger than the median one (~{result.median:.0f} px)"
    else:
        sentence = (f"class {cls} needs a {result.norms[cls]:.0f} px trigger where the median class needs "
                    f"~{result.median:.0f} px, {statistic:.1f} spreads smaller")
    return _calibrated("nc", statistic, cls, sentence, details, lv)


def from_twin(cleanse_result: Any, twin_result: Any, lv: Optional[Levels] = None) -> Evidence:
    """Neural Cleanse on the suspect against Neural Cleanse on its clean twin: is one class far easier only here?"""
    lv = lv or levels()
    statistic, cls = twin_statistic(cleanse_result.norms, twin_result.norms)
    details = {"twin_norms": {str(c): round(float(v), 2) for c, v in twin_result.norms.items()},
               "twin_median_norm": round(float(twin_result.median), 2)}
    if cls is None:
        sentence = "no class is easier to reach on this model than on a clean twin trained on the clean images"
    else:
        sentence = (f"class {cls} needs a {cleanse_result.norms[cls]:.0f} px trigger here (median {cleanse_result.median:.0f} px) "
                    f"and {twin_result.norms[cls]:.0f} px on a clean twin (median {twin_result.median:.0f} px): "
                    f"{statistic:.1f} spreads easier than the other classes' ratio")
    return _calibrated("twin", statistic, cls, sentence, details, lv)


def from_mmbd(result: Any, lv: Optional[Levels] = None) -> Evidence:
    """MM-BD (a ``core.detect.model_level.mmbd.MMBDResult``): can inputs be pushed abnormally far to one class?"""
    lv = lv or levels()
    statistic, cls = mmbd_statistic(result.margins)
    median = float(np.median(list(result.margins.values())))
    details = {"margins": {str(c): round(float(v), 3) for c, v in result.margins.items()}, "median_margin": round(median, 3),
               "clean_margin": None if result.clean_margin is None else round(float(result.clean_margin), 3)}
    sentence = (f"inputs can be pushed to class {cls} with a logit margin of {result.margins[cls]:.0f} where the median "
                f"class reaches {median:.0f}, {statistic:.1f} spreads beyond (log scale)")
    return _calibrated("mmbd", statistic, cls, sentence, details, lv)


def from_warp(result: Any, lv: Optional[Levels] = None) -> Evidence:
    """Warp inversion (a ``core.detect.model_level.warp.WarpResult``): does a far gentler warp reach one class?"""
    lv = lv or levels()
    statistic, cls = warp_statistic(result.shifts)
    ordered = sorted(result.shifts.values())
    details = {"shifts": {str(c): round(float(v), 3) for c, v in result.shifts.items()}}
    sentence = (f"a smooth warp of {result.shifts[cls]:.2f} px sends clean images to class {cls}; the next easiest class "
                f"needs {ordered[1]:.2f} px ({np.exp(statistic):.1f} times more)")
    return _calibrated("warp", statistic, cls, sentence, details, lv)


def from_label_specific(cleanse_result: Any, lv: Optional[Levels] = None) -> Optional[Evidence]:
    """Neural Cleanse's untargeted trigger (step 4) as evidence; None when it was not run."""
    found = getattr(cleanse_result, "label_specific", None)
    if found is None:
        return None
    lv = lv or levels()
    statistic, _ = ls_statistic(found.ratio, found.trigger.reached)
    details = found.as_dict()
    if not found.trigger.reached:
        sentence = "no trigger moved 95% of the clean images off their class within the optimisation's budget"
    else:
        sentence = (f"one {found.trigger.norm:.0f} px trigger moves {found.moved:.0%} of the clean images off their class, "
                    f"the smallest one-class trigger needs {found.smallest_targeted:.0f} px ({statistic:.2f} times as much)")
    evidence = _calibrated("ls", statistic, None, sentence, details, lv)
    if evidence.level == NO_EVIDENCE or not found.destinations:
        return evidence
    if found.hub_share <= LABEL_SPECIFIC_HUB_SHARE:  # the alarm, and each class sent its own way: all-to-all
        return Evidence(LABEL_SPECIFIC, evidence.level, (), evidence.score,
                        f"{evidence.summary}, and it sends each class to its own destination ({mapping(found.destinations)}): "
                        f"a backdoor whose target depends on the label (all-to-all)", evidence.details)
    hub = int(np.bincount(list(found.destinations.values())).argmax())
    return Evidence(LABEL_SPECIFIC, evidence.level, (hub,), evidence.score,
                    f"{evidence.summary}; it sends {found.hub_share:.0%} of the classes to class {hub} "
                    f"({mapping(found.destinations)})", evidence.details)


def is_label_specific_backdoor(found: Any, lv: Optional[Levels] = None) -> bool:
    """Whether a ``core.detect.model_level.cleanse.LabelSpecific`` is a trigger whose target depends on the label
    (the label-specific check raises an alarm and no destination takes more than a third of the classes): what
    the repair unlearns."""
    if found is None or not found.trigger.reached or found.hub_share > LABEL_SPECIFIC_HUB_SHARE:
        return False
    lv = lv or levels()
    statistic, _ = ls_statistic(found.ratio, found.trigger.reached)
    return lv.level(lv.alone(lv.nulls["ls"].tail(statistic))) != NO_EVIDENCE


def mapping(destinations: dict[int, int], shown: int = 4) -> str:
    """'0→1, 1→2, 2→3, 3→4, …' for a source -> destination map."""
    pairs = [f"{s}\u2192{d}" for s, d in sorted(destinations.items())]
    return ", ".join(pairs[:shown]) + (", \u2026" if len(pairs) > shown else "")


def from_detectors(cleanse_result: Any = None, mmbd_result: Any = None, warp_result: Any = None,
                   lv: Optional[Levels] = None, twin_result: Any = None) -> list[Evidence]:
    """The model-level detectors' evidence (None: not run), each judged against clean models."""
    evidence = []
    if cleanse_result is not None:
        evidence.append(from_cleanse(cleanse_result, lv))
        if twin_result is not None:
            evidence.append(from_twin(cleanse_result, twin_result, lv))
        label_specific = from_label_specific(cleanse_result, lv)
        if label_specific is not None:
            evidence.append(label_specific)
    if mmbd_result is not None:
        evidence.append(from_mmbd(mmbd_result, lv))
    if warp_result is not None:
        evidence.append(from_warp(warp_result, lv))
    return evidence


def from_attack_success(asr: float, n: int, num_classes: int, target: Optional[int] = None,
                        predicted: Optional[np.ndarray] = None, labels: Optional[np.ndarray] = None) -> Evidence:
    """Attack success measured on the analyst's suspected-poisoned images (``core.evaluate``).

    ``target``: the class the analyst named, or the poisoned set's single
    label; otherwise the classes the hits went to are read from ``predicted``
    and ``labels`` (the attacker's labels of each image).
    """
    suspicious_at = ASR_SUSPICIOUS
    classes = _hit_classes(target, predicted, labels)
    details = {"attack_success_rate": round(float(asr), 4), "n_poisoned": int(n), "target": target, "num_classes": int(num_classes)}
    where = f" to class {classes[0]}" if len(classes) == 1 else (f" to classes {', '.join(map(str, classes))}" if classes else "")
    said = f"{asr:.1%} of {n} suspected-poisoned images go{where}"
    if asr >= ASR_BACKDOORED:
        score = 0.75 + 0.25 * _clip((asr - ASR_BACKDOORED) / (1 - ASR_BACKDOORED))
        return Evidence("measured attack success", BACKDOORED, classes, score, f"{said}: the trigger works", details)
    # below "backdoored": the score rises from 0 at 0% to 0.5 at the suspicious line and 0.75 at "backdoored"
    if asr >= suspicious_at:
        score = 0.5 + 0.25 * (asr - suspicious_at) / (ASR_BACKDOORED - suspicious_at)
        return Evidence("measured attack success", SUSPICIOUS, classes, score, f"{said}, far more than a sound model's errors", details)
    score = 0.5 * _clip(asr / suspicious_at)
    return Evidence("measured attack success", NO_EVIDENCE, (), score,
                    f"{said}: no more than a model's ordinary errors, these images do not trigger a backdoor", details)


def _hit_classes(target: Optional[int], predicted: Optional[np.ndarray], labels: Optional[np.ndarray]) -> tuple[int, ...]:
    if target is not None:
        return (int(target),)
    if predicted is None or labels is None or len(predicted) == 0:
        return ()
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    hits = predicted[predicted == labels]
    if len(hits) == 0:
        return ()
    values, counts = np.unique(hits, return_counts=True)
    if len(values) > 3:  # hits spread over many classes (all-to-all): no single target to name
        return ()
    order = np.argsort(-counts, kind="stable")
    return tuple(int(values[i]) for i in order if counts[i] >= 0.1 * len(hits))


def rate_words(false_alarm: str) -> str:
    """'about 2 in 100 clean models get this answer (95% interval 1-5)' -> '~2 in 100 clean models', for narrow columns."""
    if not false_alarm.startswith("about "):
        return ""
    return "~" + false_alarm[len("about "):].split(" get this answer")[0]


def targets_label(targets: Sequence[int], summary: str) -> str:
    """The suspected targets for a one-cell column: "3", "2,5", "all-to-all" (label-specific), or "-"."""
    if not targets and summary.startswith(ALL_TO_ALL):
        return "all-to-all"
    return ",".join(map(str, targets)) or "-"


# ------------------------------------------------------------ combining


def combine(evidence: Sequence[Evidence], lv: Optional[Levels] = None) -> Verdict:
    """The detectors' combined level (Fisher's sum against clean models), raised by measured attack success; its
    targets, its reason and how often clean models get it."""
    evidence = tuple(evidence)
    if not evidence:
        return Verdict(NO_EVIDENCE, (), 0.0, "No evidence found: no method was run", "nothing was checked", ())
    lv = lv or levels()
    tails = {e.details["detector"]: e.details["clean_tail"] for e in evidence
             if e.details.get("detector") in lv.nulls and e.details.get("clean_tail") is not None}
    p = lv.from_tails(tails) if tails else None
    detected = lv.verdict_level(p) if p is not None else NO_EVIDENCE
    measured = [e for e in evidence if e.p is None and "detector" not in e.details]  # measured attack success
    level = max([detected, *(e.level for e in measured)], key=LEVEL_RANK.__getitem__)
    pointing = _pointing(evidence, detected) + [e for e in measured if e.level != NO_EVIDENCE]
    agreed = _agreed_classes(pointing)
    targets = _targets(pointing, level, agreed)
    score = max([lv.score(p, FALSE_ALARM_TARGETS["backdoored"]) if p is not None else 0.0, *(e.score for e in measured)])
    score += AGREEMENT_BONUS if agreed else 0.0
    if level == BACKDOORED and score < 0.5:  # never rank a "backdoored" model below the line
        score = 0.5
    # the calibrated rate in words, when the detectors (not the measured attack success) set the level
    from_detectors_alone = level != NO_EVIDENCE and detected == level
    words = lv.clean_rate_words(level) if from_detectors_alone else ""
    return Verdict(level, targets, _clip(score), _headline(level, targets, pointing, evidence), _reason(level, evidence, pointing, agreed),
                   evidence, words, p)


def _pointing(evidence: Sequence[Evidence], detected: str) -> list[Evidence]:
    """The detectors' evidence behind a raised verdict: those past their own line (at most at the verdict's level),
    then those rarer than 1 in 20 clean models as "suspicious" (several such add up to the verdict), rarest first;
    at least the rarest with a class."""
    if detected == NO_EVIDENCE:
        return []
    calibrated = sorted((e for e in evidence if e.details.get("clean_tail") is not None), key=lambda e: e.details["clean_tail"])
    cap = lambda e: detected if LEVEL_RANK[e.level] > LEVEL_RANK[detected] else e.level  # noqa: E731
    chosen = [dataclasses.replace(e, level=cap(e)) for e in calibrated if e.level != NO_EVIDENCE]
    chosen += [dataclasses.replace(e, level=SUSPICIOUS, classes=_classes_of(e)) for e in calibrated
               if e.level == NO_EVIDENCE and e.details["clean_tail"] < SUPPORTING_TAIL]
    if not any(e.classes for e in chosen):
        rarest = next((e for e in calibrated if _classes_of(e)), None)
        if rarest is not None:
            chosen = [e for e in chosen if e.method != rarest.method]
            chosen.append(dataclasses.replace(rarest, level=cap(rarest) if rarest.level != NO_EVIDENCE else SUSPICIOUS,
                                              classes=_classes_of(rarest)))
    return chosen


def _classes_of(e: Evidence) -> tuple[int, ...]:
    """The classes an evidence points to, also when it is not past its own line."""
    if e.classes:
        return e.classes
    cls = e.details.get("class")
    return (int(cls),) if cls is not None else ()


def _agreed_classes(evidence: Sequence[Evidence]) -> tuple[int, ...]:
    """Classes named by at least two different methods (at suspicious level or above)."""
    named: dict[int, set[str]] = {}
    for e in evidence:
        if e.level != NO_EVIDENCE:
            for c in e.classes:
                named.setdefault(c, set()).add(e.method)
    return tuple(sorted(c for c, methods in named.items() if len(methods) >= 2))


def _targets(evidence: Sequence[Evidence], level: str, agreed: tuple[int, ...]) -> tuple[int, ...]:
    """Classes behind the verdict: agreed ones first, then those of the strongest evidence; when no single evidence
    reaches the verdict's level (several weaker ones add up to it), those of the rarest ones."""
    out = list(agreed)
    for e in sorted(evidence, key=lambda e: (-LEVEL_RANK[e.level], -e.score)):
        if e.level == NO_EVIDENCE or (level == BACKDOORED and e.level != BACKDOORED and not agreed):
            continue
        out += [c for c in e.classes if c not in out]
    if not out and not any(e.level == level for e in evidence):
        for e in evidence:
            out += [c for c in e.classes if c not in out]
    return tuple(out)


def _headline(level: str, targets: tuple[int, ...], pointing: Sequence[Evidence], evidence: Sequence[Evidence]) -> str:
    which = ""
    if targets:
        which = f" (target {targets[0]})" if len(targets) == 1 else f" (targets {', '.join(map(str, targets))})"
    label_specific = next((e for e in pointing if e.method == LABEL_SPECIFIC and not e.classes), None)
    if level != NO_EVIDENCE and not targets and label_specific is not None and "destinations" in label_specific.details:
        mapped = mapping({int(k): v for k, v in label_specific.details["destinations"].items()}, 3)
        if level == BACKDOORED:
            return f"{ALL_TO_ALL}: {mapped})"
        return f"Suspicious (all-to-all: {mapped}): inspect before trusting this model"
    if level == BACKDOORED:
        return f"Backdoored{which}"
    if level == SUSPICIOUS:
        return f"Suspicious{which}: inspect before trusting this model"
    return "No evidence found by " + _join([e.method for e in evidence])


def _reason(level: str, evidence: Sequence[Evidence], pointing: Sequence[Evidence], agreed: tuple[int, ...]) -> str:
    """Every method's sentence, those that raised the verdict first, and what the others could not see."""
    raised = {e.method for e in pointing}
    ordered = [*pointing, *(e for e in evidence if e.method not in raised)]
    parts = [f"{e.method}: {e.summary}." for e in ordered]
    for cls in agreed:
        methods = [e.method for e in pointing if cls in e.classes]
        parts.insert(0, f"{_join(methods)} both point to class {cls}." if len(methods) == 2
                     else f"{_join(methods)} all point to class {cls}.")
    # the label-specific check only speaks to all-to-all backdoors: its silence beside a one-target finding mixes nothing
    silent = [e.method for e in evidence if e.method not in raised and e.level == NO_EVIDENCE and e.method != LABEL_SPECIFIC]
    if level != NO_EVIDENCE and silent:
        parts.append(f"{_join(silent)} found nothing unusual, which does not clear the model "
                     f"(each method is blind to some triggers).")
    if level == NO_EVIDENCE:
        parts.append("Not proof of a clean model: a backdoor these methods cannot see, or one the clean data does not "
                     "exercise, would pass.")
    return " ".join(parts)


def _join(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _clip(v: float) -> float:
    return float(min(1.0, max(0.0, v)))
