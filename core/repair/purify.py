"""Purification: give a flagged input its true label back instead of the N+1 reject class.

The input-level scanners (:mod:`core.detect.input_level.scanner`) say *that* an input carries a trigger; the
guarded classifier then answers N. An analyst who must keep a backdoored model running until a clean one exists
needs the input's true class. Februus (Doan et al., ACSAC 2020) showed the way for triggers that sit in a
region: find the region, cut it out, fill the hole from its surroundings (image inpainting) and classify again.
The course project TrojanScope grew from proposed the same ("More method": Grad-CAM's region, inpainted; or
occlusion until the decision changes back).

Where the trigger is, best evidence first:

- **the shared trigger**: the pixels that the flagged inputs the model sends to the same class share exactly
  (at least :data:`SHARE` of at least :data:`MIN_SHARED` of them, within one 8-bit level) while at most
  :data:`RARE` of the clean images have that value there. A trigger stamped at a fixed place (a sticker, two
  bars, a frame) is the same in every triggered input, pixel for pixel; clean images of one class hardly share
  such pixels (measured on 50 random draws of MNIST digits of each class: at most 6 px for 20 images of a class,
  1 px for 50, none for 100). Spread over more than :data:`IMAGE_WIDE` of the image (a blended pattern, a
  sinusoid), it is not a region;
- **the reversed trigger**: the verdict's reversed mask of the class (Neural Cleanse's, above half its peak):
  a sparse subset of the real trigger (39 of a two-bar trigger's 84 px on the zoo), so filled with a margin;
- **salient boxes**: occlusion at several patch sizes, smallest first (:func:`core.inspect.trigger.salient_boxes`,
  passed in by the caller): a sticker at a random place is never where the reversed one was.

A fill is a guess, so an answer is given only when independent pieces of evidence agree (the rule, in order):

0. **Confirmed.** Every clean reference network gives the model's answer p: what the input shows is p (a clean
   image the scanners doubted), and nothing is cut out of it. Not when the input carries the trigger the flagged
   inputs sent to p share (at least :data:`SHARE` of its pixels at their value): the references can be fooled
   by a trigger's noise itself (on a BatchNorm + global-average-pooling twin, a blended pattern read as the
   target: 45% attack success after purification until this check). On the zoo, all five back the target on 0-0.8% of
   the triggered inputs sent to it, and on 74-98% of the clean images of the target (filling a two-bar trigger's
   rows out of a clean 0 changed its class: 1.9 points of clean accuracy when every clean image was purified).
1. **A region filled.** Each region of the model's answer p (shared, then reversed) is cut out and filled
   twice, by Telea's and by the Navier-Stokes inpainting (OpenCV). The new answer a is accepted when both fills
   move the model off p *to the same class* and the clean reference networks (the twins of
   :mod:`core.detect.input_level.reference`, trained from scratch on clean images: they carry no backdoor),
   shown the filled image, agree; without them, the two fills' agreement is the only check.
2. **Kept.** The input carries no shared trigger, no trigger region, filled, moves the model off p, and either
   the clean reference networks give p themselves (the input was flagged, but what it shows *is* p: a clean
   image the scanners doubted), or p is not a suspected class: neither a target the verdict names nor a class
   whose flagged inputs share a trigger, so no backdoor known sends inputs there (when neither names a class,
   every class is suspected). Rejecting such inputs cost 3 points of clean accuracy on the zoo's patch BadNet
   when every clean image was purified: the references, trained on a few hundred images, disagree with the
   model on 5% of clean digits.
3. **Salient boxes**, as in 1, when p is a suspected class and the inputs sent to p
   share no trigger (where they do, it is the better region, and where it is image-wide a box finds only
   strokes); a box over more than :data:`MAX_BOX` of the image holds the object, not a sticker, and is not cut out.
4. **Clean reference.** A trigger that covers the whole image (a blend, a warp, a sinusoid) leaves no region
   to cut out: when *every* clean reference network gives the same class other than p (they are the only
   evidence left), it is the answer; they are shown the first filled image, when a region was filled (a two-bar
   trigger confuses them less once cut out). Not when a fill gave another class they contradicted: the evidence
   disagrees.
5. **Cannot purify**, with the reason: never a silent guess. The guarded classifier then answers N, as without
   purification.

Everything the rule needs comes from what the scan profile already holds (the masking detector's regions, the
reference detector's weights, STRIP's clean overlay images), a reversed-triggers file, or the flagged inputs
themselves: nothing is trained again.

Top-down: :func:`evidence_from` gathers the evidence; :func:`shared_triggers` reads the flagged inputs;
:func:`purify_images` applies the rule to images in memory; :func:`scan_and_purify` is the job that scans a data
source, then purifies its flagged inputs.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from core.detect.input_level import masking
from core.detect.input_level import reference
from core.detect.input_level import scanner
from core.intake.data import DataSource, Skipped
from core.intake.inference import predict_proba, scale_factor
from core.intake.models import LoadedModel
from core.jobs import Job, Progress

Box = tuple[int, int, int, int]  # row0, col0, row1, col1 (exclusive ends)
# (images (N, H, W, C) as stored, the class to explain for each, which search: 0, 1, ...) -> the candidate boxes of each image
# from that search (smallest first), or None when there is no such search
Locate = Callable[[np.ndarray, np.ndarray, int], Optional[list[list[Box]]]]

FILLS = ("telea", "ns")
FILL_NAMES = {"telea": "Telea", "ns": "Navier-Stokes"}
DEFAULT_RADIUS = 3  # px of neighbourhood the inpainting reads round each filled pixel
DEFAULT_MARGIN = 1  # px added round the reversed trigger and the boxes before they are filled: both are tight
CHUNK = 32  # flagged inputs purified between two progress events (each may need a salient-box search)
MIN_SHARED = 20  # flagged inputs sent to one class before what they share is read as its trigger
SHARE = 0.7  # of them that must share a pixel's value: a target's clean images flagged too dilute it (on the zoo's patch
# BadNet, 16 of the 115 flagged inputs sent to the target were clean: 86% shared the sticker)
RARE = 0.2  # of the clean images that may have that value there
IMAGE_WIDE = 1 / 3  # of the image a shared trigger may cover before it counts as image-wide (no region to cut out)
MAX_BOX = 0.1  # of the image a salient box may cover: a larger one holds the object (on the zoo's warp BadNet, 12 of 43
# boxes above it gave the true class, against 239 of 249 below it on the random-position sticker BadNet)

# Methods (the JSON's machine values) and how the panel and the CLI name them.
NOT_FLAGGED, KEPT, SHARED, TRIGGER, BOX, REFERENCE, CANNOT = (
    "not_flagged", "kept", "shared_trigger", "reversed_trigger", "salient_box", "reference", "cannot_purify")
METHOD_LABELS = {NOT_FLAGGED: "not flagged", KEPT: "kept (the model's answer stands)", SHARED: "shared trigger inpainted",
                 TRIGGER: "reversed trigger inpainted", BOX: "salient box inpainted", REFERENCE: "clean reference's answer",
                 CANNOT: "cannot purify"}
REGION_WORDS = {SHARED: "the trigger the flagged inputs share", TRIGGER: "the reversed trigger", BOX: "a salient box"}


@dataclass(frozen=True)
class PurifySettings:
    fills: tuple[str, ...] = FILLS  # every fill must give the same answer
    radius: int = DEFAULT_RADIUS
    margin: int = DEFAULT_MARGIN
    chunk: int = CHUNK
    min_shared: int = MIN_SHARED

    def __post_init__(self) -> None:
        from core.errors import DataError

        if not self.fills or any(f not in FILLS for f in self.fills):
            raise DataError(f"inpainting fills must be among {', '.join(FILLS)}; received {list(self.fills)}")
        if self.radius < 1 or self.margin < 0 or self.chunk < 1 or self.min_shared < 2:
            raise DataError(f"purification needs an inpainting radius >= 1 px, a margin >= 0 px, chunks of >= 1 input and >= 2 "
                            f"flagged inputs to read a shared trigger from; received {self.radius}, {self.margin}, {self.chunk} "
                            f"and {self.min_shared}")


@dataclass(frozen=True)
class SharedTrigger:
    """What the flagged inputs the model sends to one class share: the pixels of a trigger stamped at a fixed place."""

    cls: int
    region: np.ndarray  # (H, W) bool
    n: int  # flagged inputs it was read from
    image_wide: bool  # covers more than IMAGE_WIDE of the image: not a region to cut out
    value: Optional[np.ndarray] = None  # (H, W, C) the shared pixel values, in 8-bit levels

    def carried_by(self, x: np.ndarray, pixel_max: float = 255.0) -> np.ndarray:
        """(N,) whether each image carries the trigger: :data:`SHARE` of the region's pixels at the shared value."""
        q = np.rint(np.asarray(x, np.float32) * (255.0 / float(pixel_max)))
        same = np.all(np.abs(q - self.value[None]) <= 1, axis=-1)[:, self.region]
        return same.mean(axis=1) >= SHARE


@dataclass
class Evidence:
    """What purification knows about the backdoor of one model."""

    scale: str
    num_classes: int
    input_shape: tuple[int, int, int]
    pixel_max: float = 255.0
    regions: dict[int, np.ndarray] = field(default_factory=dict)  # suspected class -> (H, W) bool: its reversed trigger
    twins: list[Any] = field(default_factory=list)  # reference.Network: clean reference networks (empty: none)
    locate: Optional[Locate] = None  # the salient-box finder (None: no box search)
    clean: Optional[np.ndarray] = None  # clean images (N, H, W, C): what clean data has at each pixel
    shared: dict[int, SharedTrigger] = field(default_factory=dict)  # read from the flagged inputs (shared_triggers)
    targets: tuple[int, ...] = ()  # the verdict's suspected targets (empty: unknown)

    def suspect(self, cls: int) -> bool:
        """A class a backdoor is known to send inputs to: a target of the verdict, or one whose flagged inputs share a
        trigger; every class when neither names one."""
        return (not self.targets and not self.shared) or int(cls) in self.targets or int(cls) in self.shared

    def describe(self) -> str:
        parts = [f"the reversed trigger of class{'es' if len(self.regions) > 1 else ''} "
                 + ", ".join(f"{c} ({int(r.sum())} px)" for c, r in sorted(self.regions.items()))] if self.regions else []
        for c, t in sorted(self.shared.items()):
            parts.append(f"the trigger the {t.n} flagged inputs sent to {c} share "
                         + ("(image-wide)" if t.image_wide else f"({int(t.region.sum())} px)"))
        if self.locate is not None:
            parts.append("salient boxes (occlusion)")
        if self.twins:
            parts.append(f"{len(self.twins)} clean reference networks")
        return "purification evidence: " + (", ".join(parts) if parts else "none")


def evidence_from(loaded: LoadedModel, profile: Optional[scanner.ScanProfile] = None, triggers: Optional[masking.Triggers] = None,
                  locate: Optional[Locate] = None, scale: Optional[str] = None) -> Evidence:
    """The evidence a scan profile holds (its masking detector's regions, its reference detector's networks, STRIP's
    clean overlays), else the reversed-triggers file's regions; ``locate`` finds salient boxes (the caller's:
    core.inspect.trigger.box_finder, which core/repair does not import)."""
    dets = profile.detectors if profile is not None else {}
    scale = scale or (profile.scale if profile is not None else "255")
    pixel_max = float(next((getattr(d, "pixel_max") for d in dets.values() if hasattr(d, "pixel_max")), 255.0))
    regions: dict[int, np.ndarray] = {}
    if "masking" in dets:
        regions = {int(c): np.asarray(r, bool) for c, r in zip(dets["masking"].classes, dets["masking"].regions)}
    elif triggers is not None and triggers.classes:
        masking.check_fits(triggers, loaded)
        regions = {int(c): r for c, r in zip(triggers.classes, triggers.regions())}
    targets: set[int] = set(regions)
    for name in scanner.WITH_TRIGGERS:
        targets.update(int(c) for c in getattr(dets.get(name), "classes", None) or getattr(dets.get(name), "targets", None) or ())
    twins = dets["reference"].networks(loaded) if "reference" in dets else []
    clean = np.asarray(dets["strip"].overlays, np.float32) if "strip" in dets and len(dets["strip"].overlays) else None
    return Evidence(scale, loaded.num_classes, tuple(loaded.input_shape), pixel_max, regions, list(twins), locate, clean,
                    targets=tuple(sorted(targets)))


def shared_triggers(x: np.ndarray, predicted: np.ndarray, clean: Optional[np.ndarray], pixel_max: float = 255.0,
                    min_inputs: int = MIN_SHARED) -> dict[int, SharedTrigger]:
    """For each class the model sends at least ``min_inputs`` of the flagged inputs ``x`` to: the pixels (every channel
    within one 8-bit level) that :data:`SHARE` of them share and at most :data:`RARE` of the ``clean`` images have."""
    out: dict[int, SharedTrigger] = {}
    if clean is None or not len(clean) or not len(x):
        return out
    to_byte = 255.0 / float(pixel_max)
    q = np.rint(np.asarray(x, np.float32) * to_byte)
    cq = np.rint(np.asarray(clean, np.float32) * to_byte)
    predicted = np.asarray(predicted)
    for c in np.unique(predicted):
        mine = q[predicted == c]
        if len(mine) < min_inputs:
            continue
        value = np.median(mine, axis=0)  # where most share a value, the median is it
        shared = np.mean(np.all(np.abs(mine - value) <= 1, axis=-1), axis=0)
        common = np.mean(np.all(np.abs(cq - value) <= 1, axis=-1), axis=0)
        region = (shared >= SHARE) & (common <= RARE)
        if region.any():
            out[int(c)] = SharedTrigger(int(c), region, len(mine), bool(region.mean() > IMAGE_WIDE), value)
    return out


@dataclass(frozen=True, eq=False)
class Purified:
    """One input: the model's answer before, and what purification gives instead (``purified_label`` None: cannot purify)."""

    label: int  # the model's answer before
    flagged: bool
    purified_label: Optional[int]
    confidence: Optional[float]  # of the purified label: the model's (mean over the fills) or the references' (mean)
    method: str
    reason: str
    mask: Optional[np.ndarray] = None  # (H, W) bool: the pixels cut out and filled (None: nothing was)
    before: Optional[np.ndarray] = None  # the input as stored (flagged inputs only)
    after: Optional[np.ndarray] = None  # the filled image the answer was read from (None: nothing was filled)
    fill: str = ""  # the inpainting that made ``after``

    def guarded(self, num_classes: int) -> int:
        """The guarded classifier's answer: the purified label, or N (the reject class) when purification failed."""
        return num_classes if self.purified_label is None else int(self.purified_label)

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "flagged": self.flagged, "purified_label": self.purified_label, "confidence": self.confidence,
                "method": self.method, "reason": self.reason, "mask_pixels": None if self.mask is None else int(self.mask.sum())}


def not_flagged(label: int, confidence: float) -> Purified:
    return Purified(int(label), False, int(label), float(confidence), NOT_FLAGGED, "not flagged: the model's answer stands")


# --------------------------------------------------------------------------------------------- the fill


def inpaint(image: np.ndarray, region: np.ndarray, fill: str = "telea", radius: int = DEFAULT_RADIUS, pixel_max: float = 255.0) -> np.ndarray:
    """``image`` (H, W, C) as stored with ``region`` (H, W) cut out and filled from its surroundings by OpenCV's inpainting.

    Pixels outside the region are returned exactly as they were; the filled ones are rounded to the 8-bit grid
    OpenCV works on (in the image's own units: 0..255 or 0..1).
    """
    import cv2

    flag = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}[fill]
    image = np.asarray(image, np.float32)
    region = np.asarray(region, bool)
    if not region.any():
        return image.copy()
    to_byte = 255.0 / float(pixel_max)
    u8 = np.clip(np.rint(image * to_byte), 0, 255).astype(np.uint8)
    hole = region.astype(np.uint8) * 255
    channels = u8.shape[2]
    if channels in (1, 3):
        filled = cv2.inpaint(np.ascontiguousarray(u8[..., 0] if channels == 1 else u8), hole, float(radius), flag)
        filled = filled.reshape(u8.shape)
    else:  # OpenCV fills 1- and 3-channel images: any other count channel by channel
        filled = np.stack([cv2.inpaint(np.ascontiguousarray(u8[..., k]), hole, float(radius), flag) for k in range(channels)], axis=-1)
    out = image.copy()
    out[region] = filled[region].astype(np.float32) / to_byte
    return out


def widen(region: np.ndarray, margin: int) -> np.ndarray:
    """``region`` grown by ``margin`` pixels (8-connected)."""
    if margin <= 0:
        return np.asarray(region, bool)
    from scipy import ndimage

    return ndimage.binary_dilation(np.asarray(region, bool), structure=np.ones((3, 3), bool), iterations=int(margin))


def box_region(box: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    r0, c0, r1, c1 = (int(v) for v in box)
    out = np.zeros(tuple(shape[:2]), bool)
    out[r0:r1, c0:c1] = True
    return out


# --------------------------------------------------------------------------------------------- the rule


@dataclass(frozen=True)
class Agreement:
    """What the clean reference networks answer for some inputs."""

    answer: np.ndarray  # (N,) the class of the largest mean probability
    votes: np.ndarray  # (N,) how many networks put ``answer`` first
    probability: np.ndarray  # (N,) their mean probability of ``answer``
    folds: int

    def backs(self, i: int, cls: int) -> bool:
        """Whether most networks answer ``cls`` for input ``i``."""
        return int(self.answer[i]) == int(cls) and 2 * int(self.votes[i]) > self.folds


def agreement(probs: np.ndarray) -> Agreement:
    """``probs`` (folds, N, K) -> the references' common answer, its votes and mean probability."""
    mean = probs.mean(axis=0)
    answer = mean.argmax(axis=1)
    votes = (probs.argmax(axis=2) == answer[None]).sum(axis=0)
    return Agreement(answer, votes, mean[np.arange(len(answer)), answer], probs.shape[0])


@dataclass
class _Case:
    """One flagged input on its way through the rule."""

    image: np.ndarray
    model: int  # the model's answer
    confidence: float
    tried: list[str] = field(default_factory=list)  # what was tried and why it was not accepted, in words
    moved: bool = False  # a filled trigger region moved the model off its answer
    conflict: bool = False  # a fill gave another class, which the clean references contradicted
    first_fill: Optional[np.ndarray] = None  # the first filled image (the references are asked about it last)
    done: Optional[Purified] = None


def purify_images(loaded: LoadedModel, x: np.ndarray, evidence: Evidence, settings: PurifySettings = PurifySettings()) -> list[Purified]:
    """Apply the rule (module docstring) to flagged images ``x`` (N, H, W, C), pixel values as stored."""
    x = np.asarray(x, np.float32)
    if not len(x):
        return []
    factor = np.float32(scale_factor(evidence.scale))
    probs = predict_proba(loaded, x * factor)
    cases = [_Case(x[i], int(probs[i].argmax()), float(probs[i].max())) for i in range(len(x))]
    twins = _twins(evidence, x)
    carries = _carriers(evidence, x, cases)

    # 0. confirmed: every clean reference network gives the model's answer (unless the input carries its shared trigger)
    if twins is not None:
        for i, c in enumerate(cases):
            if int(twins.answer[i]) == c.model and int(twins.votes[i]) == twins.folds and not carries[i]:
                c.done = Purified(c.model, True, c.model, c.confidence, KEPT, f"all {twins.folds} clean reference networks also "
                                  f"answer {c.model}: what the input shows is {c.model}, the answer stands", before=c.image)

    # 1. the trigger regions of the model's answer: the shared one, then the reversed one
    for method in (SHARED, TRIGGER):
        now = [(c, r) for c in cases if c.done is None and (r := _region(evidence, method, c.model, settings)) is not None]
        _try_regions(loaded, now, evidence, settings, method)

    # 2. kept: no trigger region filled moved the model, and the clean references give its answer or it is not suspected
    for i, c in enumerate(cases):
        if c.done is not None or c.moved or carries[i]:
            continue
        tried = f", and {'; '.join(c.tried)}" if c.tried else ""
        if twins is not None and twins.backs(i, c.model):
            c.done = Purified(c.model, True, c.model, c.confidence, KEPT, f"{twins.votes[i]} of {twins.folds} clean reference "
                              f"networks also answer {c.model}{tried}: the answer stands", before=c.image)
        elif not evidence.suspect(c.model):
            c.done = Purified(c.model, True, c.model, c.confidence, KEPT,
                              f"{c.model} is not a suspected class (the verdict names "
                              f"{', '.join(map(str, evidence.targets)) or 'no target'}; the flagged inputs sent to {c.model} share "
                              f"no trigger){tried}: no known backdoor sends inputs there, the answer stands", before=c.image)

    # 3. salient boxes, smallest first, for suspected answers whose inputs share no trigger
    pending = [c for c in cases if c.done is None and evidence.suspect(c.model) and c.model not in evidence.shared]
    largest = MAX_BOX * x.shape[1] * x.shape[2]
    rank = 0
    while pending and evidence.locate is not None:
        boxes = evidence.locate(np.stack([c.image for c in pending]), np.asarray([c.model for c in pending]), rank)
        if boxes is None:
            break
        now = []
        for c, found in zip(pending, boxes):
            for box in found[:1]:  # one box per search and image
                region = widen(box_region(box, x.shape[1:]), settings.margin)
                if region.sum() > largest:
                    c.tried.append(f"a salient box of {int(region.sum())} px is too large to be a trigger (it holds the object)")
                else:
                    now.append((c, region))
        _try_regions(loaded, now, evidence, settings, BOX)
        pending = [c for c in pending if c.done is None]
        rank += 1

    # 4. the clean references' answer; 5. cannot purify
    left = [c for c in cases if c.done is None]
    late = _twins(evidence, np.stack([c.first_fill if c.first_fill is not None else c.image for c in left])) if left else None
    for k, c in enumerate(left):
        attempts = "; ".join(c.tried) if c.tried else "no region to cut out"
        wide = _image_wide(evidence, c.model)
        if wide:
            attempts += f"; the {evidence.shared[c.model].n} flagged inputs sent to {c.model} share an image-wide trigger"
        if late is None:
            c.done = Purified(c.model, True, None, None, CANNOT,
                              f"cannot purify: {attempts}; no clean reference networks to ask (calibrate the scan with the "
                              "suspected targets' reversed triggers)", before=c.image)
            continue
        shown = "the first filled image" if c.first_fill is not None else "the input"
        answer = int(late.answer[k])
        if c.conflict:
            c.done = Purified(c.model, True, None, None, CANNOT, f"cannot purify: the evidence disagrees: {attempts}", before=c.image)
        elif int(late.votes[k]) == late.folds and answer != c.model:
            c.done = Purified(c.model, True, answer, float(late.probability[k]), REFERENCE,
                              f"{late.votes[k]} of {late.folds} clean reference networks, shown {shown}, answer {answer} ({attempts})",
                              before=c.image)
        else:
            why = (f"they give the model's answer {answer}, which no evidence confirms" if answer == c.model
                   else f"only {late.votes[k]} of {late.folds} answer {answer}")
            c.done = Purified(c.model, True, None, None, CANNOT,
                              f"cannot purify: {attempts}; the clean reference networks, shown {shown}, do not settle it ({why})",
                              before=c.image)
    return [c.done for c in cases if c.done is not None]


def _carriers(evidence: Evidence, x: np.ndarray, cases: list[_Case]) -> np.ndarray:
    """Which inputs carry the trigger the flagged inputs sent to their class share: their answer is never kept."""
    out = np.zeros(len(cases), bool)
    for cls, shared in evidence.shared.items():
        rows = [i for i, c in enumerate(cases) if c.model == cls]
        if rows and shared.value is not None:
            out[rows] = shared.carried_by(x[rows], evidence.pixel_max)
            for i in rows:
                if out[i]:
                    cases[i].tried.append(f"it carries the trigger the {shared.n} flagged inputs sent to {cls} share"
                                          + (" (image-wide)" if shared.image_wide else ""))
    return out


def _region(evidence: Evidence, method: str, cls: int, settings: PurifySettings) -> Optional[np.ndarray]:
    if method == SHARED:
        shared = evidence.shared.get(int(cls))
        return None if shared is None or shared.image_wide else shared.region
    region = evidence.regions.get(int(cls))
    return None if region is None or not region.any() else widen(region, settings.margin)


def _image_wide(evidence: Evidence, cls: int) -> bool:
    shared = evidence.shared.get(int(cls))
    return shared is not None and shared.image_wide


def _twins(evidence: Evidence, x: np.ndarray) -> Optional[Agreement]:
    if not evidence.twins or not len(x):
        return None
    return agreement(reference.probabilities(evidence.twins, x * np.float32(scale_factor(evidence.scale))))


def _try_regions(loaded: LoadedModel, now: list[tuple[_Case, np.ndarray]], evidence: Evidence, settings: PurifySettings, method: str) -> None:
    """Fill each case's region with every fill; a case whose fills agree on a class other than the model's (and the
    references, shown the filled image, too) gets it."""
    if not now:
        return
    fills = settings.fills
    filled = np.stack([inpaint(c.image, r, f, settings.radius, evidence.pixel_max) for c, r in now for f in fills])
    factor = np.float32(scale_factor(evidence.scale))
    probs = predict_proba(loaded, filled * factor).reshape(len(now), len(fills), -1)
    answers = probs.argmax(axis=2)
    twins = None
    if evidence.twins:
        ref = reference.probabilities(evidence.twins, filled * factor)  # (folds, cases x fills, K)
        twins = agreement(ref.reshape(ref.shape[0], len(now), len(fills), -1).mean(axis=2))  # each network over the fills
    what = REGION_WORDS[method]
    names = " and ".join(FILL_NAMES[f] for f in fills)
    for k, (c, region) in enumerate(now):
        a, px = int(answers[k, 0]), int(region.sum())
        if c.first_fill is None:
            c.first_fill = filled[k * len(fills)]
        if method != BOX and np.any(answers[k] != c.model):
            c.moved = True
        if not np.all(answers[k] == a):
            c.tried.append(f"the {names} fills of {what} ({px} px) disagree ({', '.join(str(int(v)) for v in answers[k])})")
        elif a == c.model:
            c.tried.append(f"filling {what} ({px} px) leaves the answer {a}")
        elif twins is not None and not twins.backs(k, a):
            c.conflict = True
            c.tried.append(f"filling {what} ({px} px) gives {a}, but the clean reference networks answer "
                           f"{int(twins.answer[k])} ({twins.votes[k]} of {twins.folds})")
        else:
            check = (f", and {twins.votes[k]} of {twins.folds} clean reference networks agree" if twins is not None
                     else " (no clean reference networks to ask)")
            c.done = Purified(c.model, True, a, float(probs[k, :, a].mean()), method,
                              f"filling {what} ({px} px) by {names} moves the answer from {c.model} to {a}{check}",
                              mask=region, before=c.image, after=filled[k * len(fills)], fill=fills[0])


# --------------------------------------------------------------------------------------------- the job


@dataclass
class PurifyResult:
    scan: scanner.ScannerResult
    purified: list[Purified]  # one per scanned row, in the rows' order
    evidence: str  # Evidence.describe()
    pixel_max: float = 255.0  # of the images (for writing them out)
    seconds: float = 0.0
    purify_seconds: float = 0.0  # of which purifying the flagged inputs
    purify_cpu_seconds: float = 0.0  # the CPU time of that (every thread of the process): what a busy machine does not inflate

    @property
    def num_classes(self) -> int:
        return self.scan.profile.num_classes

    def labels(self) -> list[int]:
        """The guarded classifier's answers: the purified label, or N when a flagged input cannot be purified."""
        return [p.guarded(self.num_classes) for p in self.purified]

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.method for p in self.purified))

    def as_dict(self) -> dict[str, Any]:
        """The CLI's JSON: the scan's keys, and ``results`` rows with the purification keys."""
        out = self.scan.as_dict()
        results = []
        for row, scanned, p in zip(self.scan.rows, out["results"], self.purified):
            path = row.source if not in_array(row.source) else None
            results.append({**scanned, "index": row.index, "path": path, "label": p.label, "flagged": p.flagged,
                            "purified_label": p.purified_label, "confidence": p.confidence, "method": p.method,
                            "reason": p.reason, "guarded_label": p.guarded(self.num_classes),
                            "mask_pixels": None if p.mask is None else int(p.mask.sum())})
        out["results"] = results
        flagged = [p for p in self.purified if p.flagged]
        out["purified"] = sum(p.purified_label is not None for p in flagged)
        out["cannot_purify"] = sum(p.purified_label is None for p in flagged)
        out["methods"] = self.counts()
        out["evidence"] = self.evidence
        out["seconds"] = self.seconds
        out["purify_seconds"] = self.purify_seconds
        out["purify_cpu_seconds"] = self.purify_cpu_seconds
        out["reject_class"] = self.num_classes
        return out


def in_array(source: str) -> bool:
    """Whether a row's source is an image inside an array file (HDF5, .npz, memory) rather than an image file of its own."""
    path = Path(source)
    return path.suffix.lower() in (".h5", ".hdf5", ".npz") or not path.is_file()


@dataclass(frozen=True, eq=False)
class PurifiedChunk:
    """Purifications of some of the scanned rows (``positions`` index the rows the scan yielded, in order)."""

    positions: tuple[int, ...]
    purified: tuple[Purified, ...]


def scan_and_purify(loaded: LoadedModel, profile: scanner.ScanProfile, source: DataSource, evidence: Evidence,
                    settings: PurifySettings = PurifySettings(), thumbnails: bool = True) -> Job[PurifyResult]:
    """Scan ``source`` with ``profile`` (yielding :class:`~core.detect.input_level.scanner.ScannerRows` as the scan does),
    read what its flagged inputs share, then purify them (yielding :class:`PurifiedChunk`)."""
    from core.detect.input_level import strip

    started = time.perf_counter()
    warnings = scanner.check_profile(loaded, profile)
    for w in warnings:
        yield Progress(0.0, w)
    fns = {k: scanner.score_fn(loaded, d) for k, d in profile.detectors.items()}
    rows: list[scanner.ScannerRow] = []
    skipped: list[Skipped] = []
    flagged_x: list[np.ndarray] = []
    done = 0
    total = max(source.count, 1)
    for batch in source.batches(loaded.input_shape, scanner.scan_step(loaded, profile)):
        skipped.extend(batch.skipped)
        new = scanner.batch_rows(loaded, profile, batch, fns)
        flagged_x.extend(batch.x[k] for k, r in enumerate(new) if r.flagged)
        rows.extend(new)
        done += len(batch.x) + len(batch.skipped)
        thumbs = strip.make_thumbnails(batch.x) if thumbnails else np.zeros((len(new), 0, 0, 0), np.uint8)
        yield scanner.ScannerRows(tuple(new), thumbs, tuple(batch.skipped), done, source.count)
        yield Progress(0.5 * done / total, f"Scanning {source.path.name}: {done}/{source.count}, {sum(r.flagged for r in rows)} flagged")

    t0, cpu0 = time.perf_counter(), time.process_time()
    positions = [k for k, r in enumerate(rows) if r.flagged]
    x = np.stack(flagged_x) if flagged_x else np.zeros((0, *loaded.input_shape), np.float32)
    predicted = np.asarray([rows[k].predicted for k in positions], np.int64)
    evidence.shared = shared_triggers(x, predicted, evidence.clean, evidence.pixel_max, settings.min_shared)
    yield Progress(0.5, evidence.describe())
    purified: list[Purified] = [not_flagged(r.predicted, r.confidence) for r in rows]
    got = 0
    for start in range(0, len(positions), settings.chunk):
        part = positions[start : start + settings.chunk]
        answers = purify_images(loaded, x[start : start + len(part)], evidence, settings)
        for k, p in zip(part, answers):
            purified[k] = p
        got += sum(p.purified_label is not None for p in answers)
        yield PurifiedChunk(tuple(part), tuple(answers))
        yield Progress(0.5 + 0.5 * (start + len(part)) / len(positions),
                       f"Purifying: {start + len(part)}/{len(positions)} flagged inputs, {got} given a label back")
    spent, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    scan = scanner.ScannerResult(profile, rows, skipped, warnings, str(source.path), time.perf_counter() - started)
    return PurifyResult(scan, purified, evidence.describe(), evidence.pixel_max, time.perf_counter() - started, spent, cpu)


# --------------------------------------------------------------------------------------------- writing it out

RECORD = "purify.json"


def check_output_folder(folder: str | Path) -> None:
    """The output folder is replaced whole: refuse one that holds anything but an earlier purification's output."""
    from core.errors import DataError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder} is a file: the purification writes a folder of images", fixed_by=("output",))
    if folder.is_dir() and any(folder.iterdir()) and not (folder / RECORD).is_file():
        raise DataError(f"{folder} already holds other files: choose a new folder (the purification's output replaces "
                        "the folder it writes)", fixed_by=("output",))


def save_outputs(result: PurifyResult, folder: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` (the JSON) and, for every flagged input, its before, mask and after images into ``folder``, atomically.

    Files are named after the input's position in the results: ``00012_before.png``, ``00012_mask.png`` (white = the
    pixels cut out and filled), ``00012_after.png`` (the filled image the answer was read from; none when nothing was filled).
    """
    import json

    from core.intake.atomic import atomic_dir, json_default
    from core.intake.data import write_png

    folder = Path(folder)
    check_output_folder(folder)
    to_byte = 255.0 / float(result.pixel_max)
    with atomic_dir(folder) as tmp:
        for k, p in enumerate(result.purified):
            if not p.flagged or p.before is None:
                continue
            write_png(tmp / f"{k:05d}_before.png", _rgb(p.before * to_byte))
            if p.mask is not None:
                write_png(tmp / f"{k:05d}_mask.png", np.asarray(p.mask, np.uint8) * 255)
            if p.after is not None:
                write_png(tmp / f"{k:05d}_after.png", _rgb(p.after * to_byte))
        (tmp / RECORD).write_text(json.dumps(record, indent=1, allow_nan=False, default=json_default), encoding="utf-8")
    return folder


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.clip(np.rint(np.asarray(image, np.float32)), 0, 255).astype(np.uint8)
    return image[..., 0] if image.shape[-1] == 1 else image[..., :3]
