"""Purification: give a flagged input its true label back instead of the N+1 reject class.

The input-level scanners (:mod:`core.detect.input_level.scanner`) say *that* an input carries a trigger; the
guarded classifier then answers N. An analyst who must keep a backdoored model running until a clean one exists
needs the input's true class. Februus (Doan et al., ACSAC 2020) showed the way for triggers that sit in a
region: find the region, cut it out, fill the hole from its surroundings (image inpainting) and classify again.
The course project TrojanScope grew from proposed the same ("More method": Grad-CAM's region, inpainted; or
occlusion until the decision changes back).

A fill is a guess, so an answer is given only when independent pieces of evidence agree (the rule, in order):

1. **Kept.** The clean reference networks (the twins of :mod:`core.detect.input_level.reference`, trained
   from scratch on clean images, so they carry no backdoor) give the model's own answer: the input was flagged
   by another detector, but what it shows *is* that class. The answer stands.
2. **Reversed trigger.** When the model's answer is a suspected target, the verdict's reversed trigger of that
   class (Neural Cleanse's mask, above half its peak, one pixel of margin) is cut out and filled twice, by
   Telea's and by the Navier-Stokes inpainting (OpenCV). The new answer is accepted only when both fills move
   the model off the suspected class *to the same class*, and the clean reference networks, shown the filled
   image, agree (without them, the two fills' agreement is the only check).
3. **Salient box.** Else the same with the boxes a salient-region finder gives (occlusion at several patch
   sizes, smallest first: :func:`core.inspect.trigger.salient_boxes`, passed in by the caller): a sticker at a
   random place is never where the reversed one was.
4. **Clean reference.** A trigger that covers the whole image (a blended pattern, a warp, a sinusoid) leaves
   no region to cut out: the clean reference networks' answer is given when most of them agree on a class
   other than the model's.
5. **Cannot purify**, with the reason: never a silent guess. The guarded classifier then answers N, as without
   purification.

Everything the rule needs comes from what the scan profile already holds (the masking detector's regions, the
reference detector's weights), or from a reversed-triggers file: nothing is trained again.

Top-down: :func:`evidence_from` gathers the evidence; :func:`purify_images` applies the rule to images in memory;
:func:`scan_and_purify` is the job that scans a data source and purifies its flagged inputs, chunk by chunk.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
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
# (images (N, H, W, C) as stored, the class to explain for each) -> the candidate boxes of each image, in the order to try
Locate = Callable[[np.ndarray, np.ndarray], list[list[Box]]]

FILLS = ("telea", "ns")
FILL_NAMES = {"telea": "Telea", "ns": "Navier-Stokes"}
DEFAULT_RADIUS = 3  # px of neighbourhood the inpainting reads round each filled pixel
DEFAULT_MARGIN = 1  # px added round a region before it is filled: the reversed mask and the boxes are tight
CHUNK = 32  # flagged inputs purified between two progress events (each may need a salient-box search)

# Methods (the JSON's machine values) and how the panel and the CLI name them.
NOT_FLAGGED, KEPT, TRIGGER, BOX, REFERENCE, CANNOT = "not_flagged", "kept", "reversed_trigger", "salient_box", "reference", "cannot_purify"
METHOD_LABELS = {NOT_FLAGGED: "not flagged", KEPT: "kept (the clean reference agrees)", TRIGGER: "reversed trigger inpainted",
                 BOX: "salient box inpainted", REFERENCE: "clean reference's answer", CANNOT: "cannot purify"}


@dataclass(frozen=True)
class PurifySettings:
    fills: tuple[str, ...] = FILLS  # every fill must give the same answer
    radius: int = DEFAULT_RADIUS
    margin: int = DEFAULT_MARGIN
    chunk: int = CHUNK

    def __post_init__(self) -> None:
        from core.errors import DataError

        if not self.fills or any(f not in FILLS for f in self.fills):
            raise DataError(f"inpainting fills must be among {', '.join(FILLS)}; received {list(self.fills)}")
        if self.radius < 1 or self.margin < 0 or self.chunk < 1:
            raise DataError(f"inpainting radius must be >= 1 px and the margin >= 0 px; received {self.radius} and {self.margin}")


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

    def describe(self) -> str:
        parts = [f"the reversed trigger of class{'es' if len(self.regions) > 1 else ''} "
                 + ", ".join(f"{c} ({int(r.sum())} px)" for c, r in sorted(self.regions.items()))] if self.regions else []
        if self.locate is not None:
            parts.append("salient boxes (occlusion)")
        if self.twins:
            parts.append(f"{len(self.twins)} clean reference networks")
        return "purification evidence: " + (", ".join(parts) if parts else "none")


def evidence_from(loaded: LoadedModel, profile: Optional[scanner.ScanProfile] = None, triggers: Optional[masking.Triggers] = None,
                  locate: Optional[Locate] = None, scale: Optional[str] = None) -> Evidence:
    """The evidence a scan profile holds (its masking detector's regions, its reference detector's networks), else the
    reversed-triggers file's regions; ``locate`` finds salient boxes (the caller's: core.inspect.trigger.salient_boxes)."""
    dets = profile.detectors if profile is not None else {}
    scale = scale or (profile.scale if profile is not None else "255")
    pixel_max = float(next((getattr(d, "pixel_max") for d in dets.values() if hasattr(d, "pixel_max")), 255.0))
    regions: dict[int, np.ndarray] = {}
    if "masking" in dets:
        regions = {int(c): np.asarray(r, bool) for c, r in zip(dets["masking"].classes, dets["masking"].regions)}
    elif triggers is not None and triggers.classes:
        masking.check_fits(triggers, loaded)
        regions = {int(c): r for c, r in zip(triggers.classes, triggers.regions())}
    twins = dets["reference"].networks(loaded) if "reference" in dets else []
    return Evidence(scale, loaded.num_classes, tuple(loaded.input_shape), pixel_max, regions, list(twins), locate)


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


def purify_images(loaded: LoadedModel, x: np.ndarray, evidence: Evidence, settings: PurifySettings = PurifySettings()) -> list[Purified]:
    """Apply the rule (module docstring) to flagged images ``x`` (N, H, W, C), pixel values as stored."""
    x = np.asarray(x, np.float32)
    n = len(x)
    if not n:
        return []
    factor = np.float32(scale_factor(evidence.scale))
    probs = predict_proba(loaded, x * factor)
    model = probs.argmax(axis=1)
    twins = _twins(evidence, x)
    out: list[Optional[Purified]] = [None] * n
    tried: list[list[str]] = [[] for _ in range(n)]

    if twins is not None:  # 1. kept: the clean references give the model's answer
        for i in range(n):
            if twins.backs(i, model[i]):
                out[i] = Purified(int(model[i]), True, int(model[i]), float(probs[i, model[i]]), KEPT,
                                  f"{twins.votes[i]} of {twins.folds} clean reference networks also answer {model[i]}: the answer stands",
                                  before=x[i])

    # 2. the reversed trigger of the model's answer, when it is a suspected target
    pending = [i for i in range(n) if out[i] is None and int(model[i]) in evidence.regions]
    if pending:
        regions = [widen(evidence.regions[int(model[i])], settings.margin) for i in pending]
        found = _try_regions(loaded, x, model, pending, regions, evidence, settings, TRIGGER, tried)
        for i, p in found.items():
            out[i] = p

    # 3. salient boxes, smallest first
    pending = [i for i in range(n) if out[i] is None]
    if pending and evidence.locate is not None:
        boxes = evidence.locate(x[pending], model[pending])
        rank = 0
        while True:
            now = [(i, b[rank]) for i, b in zip(pending, boxes) if out[i] is None and rank < len(b)]
            if not now:
                break
            regions = [widen(box_region(b, x.shape[1:]), settings.margin) for _, b in now]
            found = _try_regions(loaded, x, model, [i for i, _ in now], regions, evidence, settings, BOX, tried)
            for i, p in found.items():
                out[i] = p
            rank += 1

    # 4. the clean references' answer; 5. cannot purify
    for i in range(n):
        if out[i] is not None:
            continue
        m = int(model[i])
        attempts = "; ".join(tried[i]) if tried[i] else "no region to cut out (no reversed trigger for this class, no salient box)"
        if twins is not None and twins.backs(i, twins.answer[i]) and int(twins.answer[i]) != m:
            c = int(twins.answer[i])
            out[i] = Purified(m, True, c, float(twins.probability[i]), REFERENCE,
                              f"{twins.votes[i]} of {twins.folds} clean reference networks answer {c} ({attempts})", before=x[i])
        elif twins is not None:
            out[i] = Purified(m, True, None, None, CANNOT,
                              f"cannot purify: the clean reference networks do not agree on a class (at most {twins.votes[i]} of "
                              f"{twins.folds} answer {int(twins.answer[i])}), and {attempts}", before=x[i])
        else:
            out[i] = Purified(m, True, None, None, CANNOT,
                              f"cannot purify: {attempts}; no clean reference networks to ask (calibrate the scan with the "
                              "suspected targets' reversed triggers)", before=x[i])
    return [p for p in out if p is not None]


def _twins(evidence: Evidence, x: np.ndarray) -> Optional[Agreement]:
    if not evidence.twins or not len(x):
        return None
    return agreement(reference.probabilities(evidence.twins, x * np.float32(scale_factor(evidence.scale))))


def _try_regions(loaded: LoadedModel, x: np.ndarray, model: np.ndarray, rows: list[int], regions: list[np.ndarray], evidence: Evidence,
                 settings: PurifySettings, method: str, tried: list[list[str]]) -> dict[int, Purified]:
    """Fill each row's region with every fill; the rows whose fills agree on a class other than the model's (and the
    references, shown the filled image, too) get it."""
    fills = settings.fills
    filled = np.stack([inpaint(x[i], r, f, settings.radius, evidence.pixel_max) for i, r in zip(rows, regions) for f in fills])
    factor = np.float32(scale_factor(evidence.scale))
    probs = predict_proba(loaded, filled * factor).reshape(len(rows), len(fills), -1)
    answers = probs.argmax(axis=2)
    twins = None
    if evidence.twins:
        ref = reference.probabilities(evidence.twins, filled * factor)  # (folds, rows x fills, K)
        ref = ref.reshape(ref.shape[0], len(rows), len(fills), -1).mean(axis=2)  # each network's answer over the fills
        twins = agreement(ref)
    what = "the reversed trigger" if method == TRIGGER else "a salient box"
    found: dict[int, Purified] = {}
    for k, (i, region) in enumerate(zip(rows, regions)):
        m, a = int(model[i]), int(answers[k, 0])
        names = " and ".join(FILL_NAMES[f] for f in fills)
        if not np.all(answers[k] == a):
            tried[i].append(f"the {names} fills of {what} ({int(region.sum())} px) disagree "
                            f"({', '.join(str(int(v)) for v in answers[k])})")
            continue
        if a == m:
            tried[i].append(f"filling {what} ({int(region.sum())} px) leaves the answer {m}")
            continue
        if twins is not None and not twins.backs(k, a):
            tried[i].append(f"filling {what} ({int(region.sum())} px) gives {a}, but the clean reference networks answer "
                            f"{int(twins.answer[k])} ({twins.votes[k]} of {twins.folds})")
            continue
        check = (f", and {twins.votes[k]} of {twins.folds} clean reference networks agree" if twins is not None
                 else " (no clean reference networks to ask)")
        found[i] = Purified(m, True, a, float(probs[k, :, a].mean()), method,
                            f"filling {what} ({int(region.sum())} px) by {names} moves the answer from {m} to {a}{check}",
                            mask=region, before=x[i], after=filled[k * len(fills)], fill=fills[0])
    return found


# --------------------------------------------------------------------------------------------- the job


@dataclass(frozen=True, eq=False)
class PurifiedRows(scanner.ScannerRows):
    """A chunk of scanned rows (with thumbnails), each with its purification."""

    purified: tuple[Purified, ...] = ()


@dataclass
class PurifyResult:
    scan: scanner.ScannerResult
    purified: list[Purified]  # one per scanned row, in the rows' order
    evidence: str  # Evidence.describe()
    seconds: float = 0.0
    purify_seconds: float = 0.0  # of which purifying the flagged inputs

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
            path = row.source if not _in_array(row.source) else None
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
        out["reject_class"] = self.num_classes
        return out


def _in_array(source: str) -> bool:
    """Whether a row's source is an image inside an array file (HDF5, .npz, memory) rather than an image file of its own."""
    from pathlib import Path

    path = Path(source)
    return path.suffix.lower() in (".h5", ".hdf5", ".npz") or not path.is_file()


def scan_and_purify(loaded: LoadedModel, profile: scanner.ScanProfile, source: DataSource, evidence: Evidence,
                    settings: PurifySettings = PurifySettings(), thumbnails: bool = True) -> Job[PurifyResult]:
    """Scan ``source`` with ``profile`` and purify every flagged input; yields :class:`PurifiedRows` per chunk."""
    from core.detect.input_level import strip

    started = time.perf_counter()
    warnings = scanner.check_profile(loaded, profile)
    for w in warnings:
        yield Progress(0.0, w)
    yield Progress(0.0, evidence.describe())
    fns = {k: scanner.score_fn(loaded, d) for k, d in profile.detectors.items()}
    rows: list[scanner.ScannerRow] = []
    purified: list[Purified] = []
    skipped: list[Skipped] = []
    done, spent = 0, 0.0
    total = max(source.count, 1)
    for batch in source.batches(loaded.input_shape, scanner.scan_step(loaded, profile)):
        skipped.extend(batch.skipped)
        new = scanner.batch_rows(loaded, profile, batch, fns)
        flagged = [k for k, r in enumerate(new) if r.flagged]
        mine: dict[int, Purified] = {}
        for start in range(0, len(flagged), settings.chunk):
            part = flagged[start : start + settings.chunk]
            t0 = time.perf_counter()
            mine.update(zip(part, purify_images(loaded, batch.x[part], evidence, settings)))
            spent += time.perf_counter() - t0
            yield Progress((done + len(batch.x) * (start + len(part)) / max(len(flagged), 1)) / total,
                           f"Purifying {source.path.name}: {sum(p.flagged for p in purified) + start + len(part)} flagged inputs so far")
        chunk = [mine.get(k) or not_flagged(r.predicted, r.confidence) for k, r in enumerate(new)]
        rows.extend(new)
        purified.extend(chunk)
        done += len(batch.x) + len(batch.skipped)
        thumbs = strip.make_thumbnails(batch.x) if thumbnails else np.zeros((len(new), 0, 0, 0), np.uint8)
        yield PurifiedRows(tuple(new), thumbs, tuple(batch.skipped), done, source.count, tuple(chunk))
        got = sum(p.flagged and p.purified_label is not None for p in purified)
        yield Progress(done / total, f"Scanning and purifying {source.path.name}: {done}/{source.count}, "
                                     f"{sum(r.flagged for r in rows)} flagged, {got} purified")
    scan = scanner.ScannerResult(profile, rows, skipped, warnings, str(source.path), time.perf_counter() - started)
    return PurifyResult(scan, purified, evidence.describe(), time.perf_counter() - started, spent)
