"""One verdict from all the evidence: Neural Cleanse, MM-BD and measured attack success.

Each detector sees one side of a backdoor. Neural Cleanse (Wang et al., 2019)
finds abnormally *small* triggers and is blind to large ones (a frame,
sunglasses); MM-BD (Wang et al., 2024) finds classes any input can be pushed
to abnormally hard, whatever the trigger's size; and when the analyst holds
suspected-poisoned images, the attack success measured on them is direct
evidence. Neural Cleanse's untargeted step (the "label-specific check")
sees what a per-class search cannot: a trigger whose target depends on the
image's label (all-to-all: y -> y + 1). Two statements side by side ("No evidence of a backdoor" next to
"96.5% attack success") leave the analyst to reconcile them; this module does
it with a few explicit rules, pure functions over the detectors' results:

1. Each method's result becomes an :class:`Evidence`: a level
   ("backdoored", "suspicious" or "no evidence"), the classes it points to,
   a suspicion score in [0, 1] (0.5 = that method's own threshold) and a
   sentence.
2. The verdict is the *strongest* level any evidence reaches -- so it can
   never say "no evidence" while some evidence says otherwise. Its targets
   are the classes behind that level, those two methods agree on first.
3. The score (for ranking models and for ROC curves) is the largest
   evidence score, plus a small bonus when methods agree on a class.
4. Where the detectors are blind -- every class of the model is easy to
   reach, so no target can stand out (:func:`from_blind_spot`) -- silence
   is not evidence: the verdict is "suspicious, inconclusive", never "no
   evidence".

A wrong "clean" is the worst answer this tool can give, hence "no evidence
found by <methods run>" rather than "clean": the machine value stays
``clean`` in the CLI contract, the words say what was and was not checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence

import numpy as np

BACKDOORED = "backdoored"
SUSPICIOUS = "suspicious"
NO_EVIDENCE = "no evidence"
LEVEL_RANK = {NO_EVIDENCE: 0, SUSPICIOUS: 1, BACKDOORED: 2}

# Neural Cleanse: the paper flags an anomaly index above 2 on the small side
# (core.detect.model_level.cleanse.ANOMALY_THRESHOLD). Between 1.5 and 2 a class is unusually
# easy to reach but within what clean models show: suspicious, not proof.
NC_SUSPICIOUS_INDEX = 1.5
# MM-BD's calibrated p-value (core.detect.model_level.mmbd.detect). Measured on the zoo
# (docs/zoo.md), the calibrated p of small MNIST BadNets with large triggers
# is only ~0.1-0.15 -- within what one clean model in five shows -- yet it is
# the only model-level signal they give. A wrong "clean" being the worst
# answer, p < 0.2 makes a model "suspicious" (about one clean model in five
# gets a second look); p < 0.005 (no simulated backdoor-free model in 200 as
# extreme) says "backdoored" on its own.
MMBD_SUSPICIOUS_P = 0.2
MMBD_BACKDOORED_P = 0.005
# Measured attack success on the analyst's suspected-poisoned data (images of
# *other* classes, so a sound model sends only its few errors, a few percent,
# to any one class): half of them sent to one class is no accident; a fifth
# is far above what a model worth using gets wrong, and deserves a look.
ASR_BACKDOORED = 0.5
ASR_SUSPICIOUS = 0.2
# Bonus to the score when two methods point at the same class.
AGREEMENT_BONUS = 0.1
# The detectors' blind spot. Both detectors ask whether one class is far
# *easier* to reach than the others; on a model where every class is easy to
# reach, a backdoor does not stand out. MM-BD measures how far each class can
# be pushed, and its clean images say where natural inputs sit. On the zoo
# (docs/zoo.md) the median class can be pushed to 3.0-4.3 times the clean
# images' median margin on the plain and wide CNNs, and to 8.3-14.4 times on
# the BatchNorm + global-average-pooling ones, where the frame BadNet
# escaped both detectors. From 6 times, "no evidence" would claim more than
# the methods can see: the verdict says so instead.
BLIND_SPOT_RATIO = 6.0
# Label-specific backdoors (all-to-all), Neural Cleanse's step 4 (core.detect.model_level.cleanse):
# the smallest trigger that moves 95% of clean images off their class, over
# the smallest one-class trigger. That one-class trigger already moves every
# image of the other classes, so without a label-dependent shortcut the ratio
# is not below 1 (1.9-3.5 on the zoo's clean models, docs/zoo.md). Below 1 is
# suspicious; below 1 with the classes sent to many different destinations
# (no destination takes more than a third of them, as in y -> y + 1) is a
# trigger whose target depends on the label: backdoored.
LABEL_SPECIFIC_RATIO = 1.0
LABEL_SPECIFIC_HUB_SHARE = 1 / 3
LABEL_SPECIFIC = "label-specific check"
ALL_TO_ALL = "Backdoored (all-to-all"  # the headline's start when the label-specific check raised the verdict
BLIND_SPOT = "blind-spot check"
INCONCLUSIVE = "Suspicious, inconclusive"  # the headline's start when only the blind spot raised the verdict


@dataclass(frozen=True)
class Evidence:
    """What one method says, in the verdict's terms."""

    method: str  # "Neural Cleanse", "MM-BD", "measured attack success"
    level: str  # BACKDOORED, SUSPICIOUS or NO_EVIDENCE
    classes: tuple[int, ...]  # the classes it points to (most suspicious first); () when none
    score: float  # suspicion in [0, 1]; 0.5 is the method's own threshold
    summary: str  # one sentence for the analyst
    details: dict[str, Any] = field(default_factory=dict)

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
            "methods": list(self.methods),
            "evidence": {e.method: e.as_dict() for e in self.evidence},
        }


# ------------------------------------------------------------ per method


def from_cleanse(result: Any) -> Evidence:
    """Neural Cleanse (a ``core.detect.model_level.cleanse.CleanseResult``) as evidence."""
    small = {c: result.anomaly_index[c] for c in result.candidates if result.norms[c] < result.median}
    top = max(small, key=lambda c: small[c], default=None)
    index = float(small[top]) if top is not None and np.isfinite(small[top]) else (10.0 if top is not None else 0.0)
    score = _clip(index / 4.0)  # index 2 (the paper's threshold) -> 0.5
    details = {"anomaly_index": {str(c): finite_or_none(v) for c, v in result.anomaly_index.items()},
               "norms": {str(c): round(float(v), 2) for c, v in result.norms.items()},
               "median_norm": round(float(result.median), 2)}
    if result.flagged_classes:
        classes = tuple(int(c) for c in result.flagged_classes)
        sizes = ", ".join(f"class {c}: {result.norms[c]:.0f} px, index {_fmt_index(result.anomaly_index[c])}" for c in classes)
        return Evidence("Neural Cleanse", BACKDOORED, classes, max(score, 0.5),
                        f"an abnormally small trigger reaches {sizes} (others need ~{result.median:.0f} px)", details)
    if top is not None and index >= NC_SUSPICIOUS_INDEX:
        return Evidence("Neural Cleanse", SUSPICIOUS, (int(top),), score,
                        f"class {top} is easier to reach than the others ({result.norms[top]:.0f} px against ~{result.median:.0f} px, "
                        f"index {index:.2f}, threshold 2)", details)
    return Evidence("Neural Cleanse", NO_EVIDENCE, (), score,
                    f"no class needs an abnormally small trigger (highest index {index:.2f}, threshold 2); "
                    f"it cannot see large triggers", details)


def from_mmbd(result: Any) -> Evidence:
    """MM-BD (a ``core.detect.model_level.mmbd.MMBDResult``) as evidence."""
    p_min = float(result.min_p_value)
    raw = min(result.raw_p_values.values()) if result.raw_p_values else p_min
    # calibrated p-values stop at 1/401: the paper's raw p-value breaks ties among the most extreme
    score = _clip(0.9 * _p_score(p_min) + 0.1 * _p_score(raw))
    ranked = sorted(result.p_values, key=lambda c: result.p_values[c])
    details = {"margins": {str(c): round(float(v), 3) for c, v in result.margins.items()},
               "p_values": {str(c): float(f"{v:.4g}") for c, v in result.p_values.items()}}
    strong = tuple(int(c) for c in ranked if result.p_values[c] < MMBD_BACKDOORED_P)
    weak = tuple(int(c) for c in ranked if result.p_values[c] < MMBD_SUSPICIOUS_P)

    def said(classes: Sequence[int]) -> str:
        return ", ".join(f"class {c} (margin {result.margins[c]:.0f}, p = {result.p_values[c]:.1g})" for c in classes)

    if strong:
        return Evidence("MM-BD", BACKDOORED, strong, score,
                        f"inputs can be pushed to {said(strong)} far beyond any other class, as to a backdoor target", details)
    if weak:
        return Evidence("MM-BD", SUSPICIOUS, weak, score,
                        f"{said(weak)} can be pushed unusually far beyond the other classes", details)
    return Evidence("MM-BD", NO_EVIDENCE, (), score,
                    f"no class's maximum logit margin stands out (smallest p = {p_min:.2g}, threshold {MMBD_SUSPICIOUS_P})", details)


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


def from_label_specific(cleanse_result: Any) -> Optional[Evidence]:
    """Neural Cleanse's untargeted trigger (step 4) as evidence; None when it was not run."""
    found = getattr(cleanse_result, "label_specific", None)
    if found is None:
        return None
    ratio, hub = found.ratio, found.hub_share
    score = _clip(1.0 - ratio / 2.0)  # ratio 1 (the line) -> 0.5
    details = found.as_dict()
    said = (f"one {found.trigger.norm:.0f} px trigger moves {found.moved:.0%} of the clean images off their class, "
            f"{ratio:.2f} times the smallest one-class trigger ({found.smallest_targeted:.0f} px)")
    if not found.trigger.reached:
        return Evidence(LABEL_SPECIFIC, NO_EVIDENCE, (), 0.0,
                        "no trigger with a label-dependent target: no trigger moved 95% of the clean images off their "
                        "class within the optimisation's budget", details)
    if ratio >= LABEL_SPECIFIC_RATIO:
        return Evidence(LABEL_SPECIFIC, NO_EVIDENCE, (), score,
                        f"no trigger with a label-dependent target: {said}, no shortcut beyond a one-class trigger", details)
    if is_label_specific_backdoor(found):
        return Evidence(LABEL_SPECIFIC, BACKDOORED, (), max(score, 0.75),
                        f"{said}, and sends each class to its own destination ({mapping(found.destinations)}): "
                        f"a backdoor whose target depends on the label (all-to-all)", details)
    top = int(np.bincount(list(found.destinations.values())).argmax())
    return Evidence(LABEL_SPECIFIC, SUSPICIOUS, (top,), score,
                    f"{said}; it sends {hub:.0%} of the classes to class {top} ({mapping(found.destinations)})", details)


def is_label_specific_backdoor(found: Any) -> bool:
    """Whether a ``core.detect.model_level.cleanse.LabelSpecific`` is a trigger whose target depends on the label (its repair unlearns it)."""
    return bool(found is not None and found.trigger.reached and found.ratio < LABEL_SPECIFIC_RATIO
                and found.hub_share <= LABEL_SPECIFIC_HUB_SHARE)


def mapping(destinations: dict[int, int], shown: int = 4) -> str:
    """'0→1, 1→2, 2→3, 3→4, …' for a source -> destination map."""
    pairs = [f"{s}\u2192{d}" for s, d in sorted(destinations.items())]
    return ", ".join(pairs[:shown]) + (", \u2026" if len(pairs) > shown else "")


def from_blind_spot(mmbd_result: Any, cleanse_result: Any = None) -> Optional[Evidence]:
    """Evidence that the detectors cannot see here, or None when they can (or it cannot be told).

    Not a detector of its own: it reads MM-BD's margins (and Neural Cleanse's
    masks) to say that "nothing stands out" means little on this model. The
    classes it names are where an analyst should look first: those both
    methods rank among the easiest to reach.
    """
    clean = mmbd_result.clean_margin
    margins = dict(mmbd_result.margins)
    if not clean or clean <= 0 or len(margins) < 3:
        return None
    ratio = float(np.median(list(margins.values()))) / float(clean)
    if ratio < BLIND_SPOT_RATIO:
        return None
    classes = _easiest_classes(margins, None if cleanse_result is None else cleanse_result.norms)
    details = {"median_margin_over_clean_margin": round(ratio, 2), "threshold": BLIND_SPOT_RATIO,
               "easiest_classes": list(classes)}
    nc_note = ""
    if cleanse_result is not None and cleanse_result.norms:
        nc_note = f"; Neural Cleanse's triggers are small for every class (median {cleanse_result.median:.0f} px)"
    return Evidence(BLIND_SPOT, SUSPICIOUS, classes, 0.5,
                    f"every class of this model can be pushed far beyond its clean inputs (median class {ratio:.1f} times "
                    f"the clean margin, where the detectors work below {BLIND_SPOT_RATIO:.0f}){nc_note}, so a backdoor "
                    f"would not stand out: inconclusive, not clean; classes {', '.join(map(str, classes))} are the easiest "
                    f"to reach", details)


def from_detectors(cleanse_result: Any = None, mmbd_result: Any = None) -> list[Evidence]:
    """The model-level detectors' evidence (None: not run), with the blind-spot reading of MM-BD's margins."""
    evidence = []
    if cleanse_result is not None:
        evidence.append(from_cleanse(cleanse_result))
        label_specific = from_label_specific(cleanse_result)
        if label_specific is not None:
            evidence.append(label_specific)
    if mmbd_result is not None:
        evidence.append(from_mmbd(mmbd_result))
        blind = from_blind_spot(mmbd_result, cleanse_result)
        if blind is not None:
            evidence.append(blind)
    return evidence


def inconclusive_mark(summary: str) -> str:
    """" (inconclusive)" for a verdict headline only the blind-spot check raised, for one-word level columns."""
    return " (inconclusive)" if summary.startswith(INCONCLUSIVE) else ""


def targets_label(targets: Sequence[int], summary: str) -> str:
    """The suspected targets for a one-cell column: "3", "2,5", "all-to-all" (label-specific), or "-"."""
    if not targets and summary.startswith(ALL_TO_ALL):
        return "all-to-all"
    return ",".join(map(str, targets)) or "-"


def _easiest_classes(margins: dict[int, float], norms: Optional[dict[int, float]]) -> tuple[int, ...]:
    """Classes in both methods' three easiest to reach (by mean rank), else the two best by mean rank."""
    by_margin = sorted(margins, key=lambda c: -margins[c])
    rankings = [by_margin] + ([sorted(norms, key=lambda c: norms[c])] if norms else [])
    common = [c for c in by_margin if all(c in r for r in rankings)]

    def mean_rank(c: int) -> float:
        return float(np.mean([r.index(c) for r in rankings]))

    ordered = sorted(common, key=mean_rank)
    both = [c for c in ordered if all(r.index(c) < 3 for r in rankings)]
    return tuple(int(c) for c in (both or ordered[:2]))


# ------------------------------------------------------------ combining


def combine(evidence: Sequence[Evidence]) -> Verdict:
    """The strongest level any evidence reaches (raised by agreement), with its targets and reason."""
    evidence = _read_in_blind_spot(tuple(evidence))
    if not evidence:
        return Verdict(NO_EVIDENCE, (), 0.0, "No evidence found: no method was run", "nothing was checked", ())
    level = max((e.level for e in evidence), key=LEVEL_RANK.__getitem__)
    agreed = _agreed_classes(evidence)
    # Two methods "suspicious" on the same class stay "suspicious" (agreed class named first, score raised):
    # on the zoo that rule would have called a clean model (clean_aug_3c_h5) backdoored -- docs/zoo.md.
    targets = _targets(evidence, level, agreed)
    score = max(e.score for e in evidence) + (AGREEMENT_BONUS if agreed else 0.0)
    if level == BACKDOORED and score < 0.5:  # never rank a "backdoored" model below the line
        score = 0.5
    return Verdict(level, targets, _clip(score), _headline(level, targets, evidence), _reason(level, evidence, agreed), evidence)


def _read_in_blind_spot(evidence: tuple[Evidence, ...]) -> tuple[Evidence, ...]:
    """On a model in the blind spot, a detector's outlier is "suspicious", not proof.

    Both detectors compare each class with the spread of the others. When
    every class is easy to reach, that spread is small, and a class a little
    easier than the rest crosses the line by chance: on the zoo, the clean
    BatchNorm + GAP model's class 3 sat at Neural Cleanse's index 2.0 and
    crossed it after a change of floating-point kernels (docs/zoo.md).
    Measured attack success is not a statistic over classes and keeps its level.
    """
    if not any(e.method == BLIND_SPOT for e in evidence):
        return evidence
    read = []
    for e in evidence:
        if e.level == BACKDOORED and e.method in ("Neural Cleanse", "MM-BD"):
            e = replace(e, level=SUSPICIOUS, summary=e.summary + " -- read as suspicious: on this model every class is easy "
                                                                  "to reach, so one class a little easier proves little",
                        details={**e.details, "level_before_blind_spot": BACKDOORED})
        read.append(e)
    return tuple(read)


def _agreed_classes(evidence: Sequence[Evidence]) -> tuple[int, ...]:
    """Classes named by at least two different methods (at suspicious level or above)."""
    named: dict[int, set[str]] = {}
    for e in evidence:
        if e.level != NO_EVIDENCE and e.method != BLIND_SPOT:  # it re-reads the detectors: no independent vote
            for c in e.classes:
                named.setdefault(c, set()).add(e.method)
    return tuple(sorted(c for c, methods in named.items() if len(methods) >= 2))


def _targets(evidence: Sequence[Evidence], level: str, agreed: tuple[int, ...]) -> tuple[int, ...]:
    """Classes behind the verdict: agreed ones first, then those of the strongest evidence."""
    out = list(agreed)
    for e in sorted(evidence, key=lambda e: (-LEVEL_RANK[e.level], -e.score)):
        if e.level == NO_EVIDENCE or (level == BACKDOORED and e.level != BACKDOORED and not agreed):
            continue
        out += [c for c in e.classes if c not in out]
    return tuple(out)


def _headline(level: str, targets: tuple[int, ...], evidence: Sequence[Evidence]) -> str:
    which = ""
    if targets:
        which = f" (target {targets[0]})" if len(targets) == 1 else f" (targets {', '.join(map(str, targets))})"
    if level == BACKDOORED and not targets and any(e.method == LABEL_SPECIFIC and e.level == BACKDOORED for e in evidence):
        found = next(e for e in evidence if e.method == LABEL_SPECIFIC)
        return f"{ALL_TO_ALL}: {mapping({int(k): v for k, v in found.details['destinations'].items()}, 3)})"
    if level == BACKDOORED:
        return f"Backdoored{which}"
    if level == SUSPICIOUS and all(e.method == BLIND_SPOT for e in evidence if e.level != NO_EVIDENCE):
        look = f"; look at class{'es' if len(targets) > 1 else ''} {_join([str(t) for t in targets])} first" if targets else ""
        return f"{INCONCLUSIVE}: the detectors cannot single out a target on this model{look}"
    if level == SUSPICIOUS:
        return f"Suspicious{which}: evidence is mixed or weak, inspect before trusting this model"
    return "No evidence found by " + _join([e.method for e in evidence])


def _reason(level: str, evidence: Sequence[Evidence], agreed: tuple[int, ...]) -> str:
    """Every method's sentence, those that raised the verdict first, and what the others could not see."""
    ordered = sorted(evidence, key=lambda e: -LEVEL_RANK[e.level])
    parts = [f"{e.method}: {e.summary}." for e in ordered]
    if agreed:
        parts.insert(0, f"{'Two methods' if len(agreed) == 1 else 'Several methods'} independently point to class"
                        f"{'es' if len(agreed) > 1 else ''} {', '.join(map(str, agreed))}.")
    # the label-specific check only speaks to all-to-all backdoors: its silence beside a one-target finding mixes nothing
    silent = [e.method for e in evidence if e.level == NO_EVIDENCE and e.method != LABEL_SPECIFIC]
    if level != NO_EVIDENCE and silent:
        parts.append(f"The evidence is mixed: {_join(silent)} found nothing, which does not clear the model "
                     f"(each method is blind to some triggers).")
    if level == NO_EVIDENCE:
        parts.append("Not proof of a clean model: other trigger kinds and methods were not checked.")
    return " ".join(parts)


def _join(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _p_score(p: float) -> float:
    """MM-BD p-value -> [0, 1] on a log scale: 0 at p = 1, 0.5 at the suspicious line, 1 at 1/400."""
    p = min(max(float(p), 1e-300), 1.0)
    line, floor = np.log(MMBD_SUSPICIOUS_P), np.log(1 / 400)
    if p >= MMBD_SUSPICIOUS_P:
        return _clip(0.5 * np.log(p) / line)
    return _clip(0.5 + 0.5 * (np.log(p) - line) / (floor - line))


def _fmt_index(v: float) -> str:
    return f"{v:.2f}" if np.isfinite(v) else "inf"


def finite_or_none(value: float) -> Optional[float]:
    """A statistic for strict JSON: rounded to 4 digits, or null when infinite (e.g. an index over a zero MAD)."""
    return round(float(value), 4) if np.isfinite(value) else None


def _clip(v: float) -> float:
    return float(min(1.0, max(0.0, v)))
