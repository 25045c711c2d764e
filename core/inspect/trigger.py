"""Locate a trigger in one image, then prove it is one.

A heat-map (Grad-CAM or occlusion) only says *where the model looks*. Two
experiments turn that into evidence, as a course project first proposed:

1. Transplant: cut the salient box out of the suspect image and paste it, at
   the same place, onto M clean images of other classes. A backdoor trigger
   carries its class with it: most of them flip to the suspect's class. Any
   patch of that size could disturb a classifier, so the same is done with
   a random box of the same size cut from a random clean image (the
   baseline). A trigger shows a flip rate far above the baseline; an
   ordinary object part (a clean image's salient stroke) does not.
2. Occlusion repair: cover the salient box with the occlusion fill. If the
   box is the trigger, the prediction leaves the suspect class.

The salient region is the strongest connected region of the map above a
threshold relative to its peak (``scipy.ndimage.label``, 8-connected), and
"strongest" means the largest total saliency, so a single hot pixel does not
beat a compact blob. Boxes are (row0, col0, row1, col1) in input pixels with
exclusive ends, like NumPy slices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from core.intake.data import check_labels
from core.errors import DataError
from core.intake.inference import predict_proba, scale_factor
from core.jobs import Job, Progress
from core.intake.models import LoadedModel
from core.inspect.occlusion import OcclusionSettings, cover

Box = tuple[int, int, int, int]
METHODS = ("gradcam", "occlusion")
# Occlusion is the default: its resolution is the stride (2 px on the demo),
# while Grad-CAM's is the last conv layer's (3x3 cells on the demo), so its box
# hugs a small sticker instead of a third of the image. bench/inspector_acceptance.py
# measures both.
DEFAULT_METHOD = "occlusion"
DEFAULT_THRESHOLD = 0.5
DEFAULT_TRANSPLANTS = 100
KEEP_EXAMPLES = 24  # pasted images kept for display
# A box "behaves like a trigger" when it flips at least half the recipients and
# at least 30 points more than a random clean box of the same size does.
TRIGGER_FLIP_RATE = 0.5
TRIGGER_MARGIN = 0.3


# ------------------------------------------------------------ salient region


@dataclass(frozen=True)
class Salient:
    """The hottest pixel and the box around the strongest region of a map."""

    peak: Optional[tuple[int, int]]  # (row, col); None when the map has no positive value
    box: Optional[Box]


def salient_box(saliency: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> Salient:
    """Box around the strongest connected region above ``threshold`` x peak.

    Only the positive part counts (Grad-CAM is non-negative already; a
    negative occlusion drop means covering *helped* the class).
    """
    from scipy import ndimage

    if not 0.0 < threshold <= 1.0:
        raise DataError(f"saliency threshold must be in (0, 1]; received {threshold}")
    heat = np.nan_to_num(np.asarray(saliency, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if heat.ndim != 2:
        raise ValueError(f"expected a 2-D map; received shape {heat.shape}")
    heat = np.maximum(heat, 0.0)
    top = float(heat.max()) if heat.size else 0.0
    if top <= 0.0:
        return Salient(None, None)
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    labels, count = ndimage.label(heat >= threshold * top, structure=np.ones((3, 3), bool))
    mass = ndimage.sum_labels(heat, labels, index=np.arange(1, count + 1))
    best = int(np.argmax(mass)) + 1
    rows, cols = np.nonzero(labels == best)
    box = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
    return Salient((int(peak[0]), int(peak[1])), box)


def salient_boxes(
    loaded: LoadedModel,
    x: np.ndarray,
    scale: str,
    classes: Sequence[int],
    threshold: float = DEFAULT_THRESHOLD,
    settings: OcclusionSettings = OcclusionSettings(),
    largest: Optional[int] = None,
    only: Optional[int] = None,
) -> list[list[Box]]:
    """For each image, the salient box of every occlusion patch size (smallest first): where covering lowers ``classes``.

    What purification asks when the verdict's reversed trigger does not explain an input (a sticker at a random place):
    the same multi-size occlusion as :func:`inspect`, for many images at once, at a stride of three quarters of the
    patch (the Inspector's quarter costs 9x the forward passes for a box a pixel or two tighter, and purification fills
    a margin round the box anyway: on the zoo's random-position sticker BadNet, 91.4% of the triggered digits got their
    class back at 3 px against 91.8% at 2 px, 59 against 43 images per second). Images whose maps are empty get fewer boxes (none when every map is). ``largest`` keeps only
    the patch sizes up to that many pixels a side (a patch bigger than a sticker maps the object); ``only`` maps the
    ``only``-th of those sizes alone (an empty list per image when there is no such size).
    """
    from core.inspect.occlusion import occlusion
    from core.jobs import run_job

    x = np.asarray(x, np.float32)
    out: list[list[Box]] = [[] for _ in range(len(x))]
    if not len(x):
        return out
    sizes = box_sizes(x.shape[1:], settings, largest)
    if only is not None:
        sizes = sizes[only : only + 1]
    for s in sizes:
        coarse = OcclusionSettings(s.patch, settings.stride or max(1, 3 * s.patch // 4), s.fill, s.fill_value)
        occ = run_job(occlusion(loaded, x, scale, coarse, [int(c) for c in classes]))
        for i, heat in enumerate(occ.maps):
            box = salient_box(heat, threshold).box
            if box is not None and box not in out[i]:
                out[i].append(box)
    return out


def box_sizes(shape: Sequence[int], settings: OcclusionSettings = OcclusionSettings(), largest: Optional[int] = None) -> list[OcclusionSettings]:
    """The occlusion patch sizes :func:`salient_boxes` maps, smallest first (at least one)."""
    sizes = settings.candidates(shape)
    return ([s for s in sizes if s.patch <= largest] or sizes[:1]) if largest is not None else sizes


def box_finder(loaded: LoadedModel, scale: str) -> Any:
    """:func:`salient_boxes` as purification asks for them (``core.repair.purify.Locate``: images, classes and which patch
    size, smallest first; None past the last), one size at a time so that an image the smallest patch explains costs no
    larger map. core/repair does not import core/inspect, so the GUI and the CLI hand this over. Patches up to a quarter
    of the image's side (4 and 7 px at 28x28): purification cuts out no box over a tenth of the image, and the largest
    patch maps the object."""
    largest = max(2, min(int(v) for v in loaded.input_shape[:2]) // 4)
    count = len(box_sizes(loaded.input_shape, largest=largest))

    def locate(x: np.ndarray, classes: np.ndarray, rank: int) -> Optional[list[list[Box]]]:
        return None if rank >= count else salient_boxes(loaded, x, scale, classes, largest=largest, only=rank)

    return locate


def box_overlap(a: Sequence[int], b: Sequence[int]) -> tuple[int, float]:
    """(intersection area, intersection over union) of two boxes."""
    r0, c0 = max(a[0], b[0]), max(a[1], b[1])
    r1, c1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, r1 - r0) * max(0, c1 - c0)
    area = lambda x: max(0, x[2] - x[0]) * max(0, x[3] - x[1])  # noqa: E731
    union = area(a) + area(b) - inter
    return inter, (inter / union if union else 0.0)


def paste(recipients: np.ndarray, patch: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """Copies of ``recipients`` with ``patch`` (one, or one per recipient) pasted at ``box``."""
    r0, c0, r1, c1 = (int(v) for v in box)
    out = np.array(recipients, np.float32, copy=True)
    out[:, r0:r1, c0:c1] = patch
    return out


# --------------------------------------------------------------- transplant


@dataclass
class Transplant:
    """The transplant test of one suspect box against M clean images."""

    suspect_class: int
    box: Box
    flip_rate: float  # fraction of recipients predicted as the suspect class after the paste
    baseline: float  # the same with a same-size box cut at a random position of a random clean image
    baseline_same_place: float  # the same with the box's own region cut from a random clean image
    n: int
    recipients: np.ndarray  # indices into the clean set
    recipient_labels: Optional[np.ndarray]
    before: np.ndarray  # recipients' predictions before pasting
    predicted: np.ndarray  # after pasting the suspect box
    baseline_predicted: np.ndarray
    examples: np.ndarray = field(repr=False)  # the first KEEP_EXAMPLES pasted images
    baseline_examples: np.ndarray = field(repr=False)
    box_from: str = ""  # which map's box was pasted, e.g. "occlusion, patch 11, stride 2, zero fill"
    tried: list[dict[str, Any]] = field(default_factory=list)  # every box tried (transplant_search)

    @property
    def looks_like_trigger(self) -> bool:
        return self.flip_rate >= TRIGGER_FLIP_RATE and self.flip_rate > self.baseline + TRIGGER_MARGIN

    def as_dict(self) -> dict[str, Any]:
        return {
            "flip_rate": self.flip_rate,
            "baseline": self.baseline,
            "baseline_same_place": self.baseline_same_place,
            "n_transplant": self.n,
            "suspect_class": self.suspect_class,
            "transplant_box": list(self.box),
            "transplant_box_from": self.box_from,
            "looks_like_trigger": self.looks_like_trigger,
            "transplant_tried": [dict(t) for t in self.tried],
        }


def transplant(
    loaded: LoadedModel,
    suspect: np.ndarray,
    box: Sequence[int],
    clean_x: np.ndarray,
    clean_y: Optional[np.ndarray],
    scale: str,
    suspect_class: Optional[int] = None,
    m: int = DEFAULT_TRANSPLANTS,
    seed: int = 0,
    batch_size: int = 512,
) -> Job[Transplant]:
    """Paste ``suspect[box]`` onto up to ``m`` clean images of other classes.

    Recipients are clean images whose label (when known) and whose current
    prediction both differ from the suspect class, so every flip is caused
    by the paste. The baseline pastes, at the same place on the same
    recipients, a box of the same size cut at a random position from a
    random other clean image: "does any natural patch there flip them?".
    ``baseline_same_place`` cuts the box's own region from random clean
    images instead ("what clean data has there"); on data with blank
    borders (MNIST) that is close to a no-op, hence the first is the
    headline figure.
    """
    suspect = np.asarray(suspect, np.float32)
    clean_x = np.asarray(clean_x, np.float32)
    factor = scale_factor(scale)
    r0, c0, r1, c1 = (int(v) for v in box)
    h, w = suspect.shape[:2]
    if not (0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w):
        raise DataError(f"box {list(box)} does not lie inside a {h}x{w} image")
    if clean_x.ndim != 4 or clean_x.shape[1:] != suspect.shape:
        raise DataError(f"clean images shaped {clean_x.shape[1:]} do not match the suspect image {suspect.shape}")
    if len(clean_x) < 2:
        raise DataError("the transplant test needs clean images: open clean data first")
    if suspect_class is None:
        suspect_class = int(predict_proba(loaded, suspect[None] * factor).argmax(axis=1)[0])
    yield Progress(0.1, "Transplant: choosing clean recipients")
    before_all = predict_proba(loaded, clean_x * factor, batch_size).argmax(axis=1)
    eligible = before_all != suspect_class
    if clean_y is not None:
        clean_y = np.asarray(clean_y).astype(np.int64)
        check_labels(clean_y, loaded.num_classes, "clean data")
        eligible &= clean_y != suspect_class
    pool = np.flatnonzero(eligible)
    if len(pool) == 0:
        raise DataError(f"no clean image is of a class other than {suspect_class}: the transplant test needs some")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(pool, size=min(m, len(pool)), replace=False)
    n = len(chosen)
    recipients = clean_x[chosen]
    pasted = paste(recipients, suspect[r0:r1, c0:c1], box)

    # Baseline: a same-size box from a random *other* clean image, random position.
    bh, bw = r1 - r0, c1 - c0
    donors = rng.integers(0, len(clean_x) - 1, size=n)
    donors = np.where(donors >= chosen, donors + 1, donors)  # never the recipient itself
    rows = rng.integers(0, h - bh + 1, size=n)
    cols = rng.integers(0, w - bw + 1, size=n)
    pieces = np.stack([clean_x[d, r : r + bh, c : c + bw] for d, r, c in zip(donors, rows, cols)])
    control = paste(recipients, pieces, box)
    # Second control: the same region of random other clean images (what clean data has *there*).
    donors2 = rng.integers(0, len(clean_x) - 1, size=n)
    donors2 = np.where(donors2 >= chosen, donors2 + 1, donors2)
    control_same = paste(recipients, clean_x[donors2, r0:r1, c0:c1], box)

    yield Progress(0.5, f"Transplant: classifying {n} pasted images and {n} controls")
    predicted = predict_proba(loaded, pasted * factor, batch_size).argmax(axis=1)
    baseline_predicted = predict_proba(loaded, control * factor, batch_size).argmax(axis=1)
    same_place_predicted = predict_proba(loaded, control_same * factor, batch_size).argmax(axis=1)
    result = Transplant(
        suspect_class=int(suspect_class),
        box=(r0, c0, r1, c1),
        flip_rate=float(np.mean(predicted == suspect_class)),
        baseline=float(np.mean(baseline_predicted == suspect_class)),
        baseline_same_place=float(np.mean(same_place_predicted == suspect_class)),
        n=n,
        recipients=chosen,
        recipient_labels=None if clean_y is None else clean_y[chosen],
        before=before_all[chosen],
        predicted=predicted,
        baseline_predicted=baseline_predicted,
        examples=pasted[:KEEP_EXAMPLES],
        baseline_examples=control[:KEEP_EXAMPLES],
    )
    yield Progress(1.0, f"Transplant: {result.flip_rate:.0%} flipped to class {suspect_class} (baseline {result.baseline:.0%})")
    return result


# ------------------------------------------------------------ occlusion repair


@dataclass(frozen=True)
class Repair:
    """The prediction once the salient box is covered."""

    predicted: int
    confidence: float
    suspect_class: int
    suspect_probability: float
    left_class: bool  # True when covering the box moved the prediction off the suspect class

    def as_dict(self) -> dict[str, Any]:
        return {
            "predicted": self.predicted,
            "confidence": self.confidence,
            "suspect_probability": self.suspect_probability,
            "left_class": self.left_class,
        }


def occlusion_repair(
    loaded: LoadedModel,
    image: np.ndarray,
    box: Sequence[int],
    scale: str,
    suspect_class: int,
    settings: OcclusionSettings = OcclusionSettings(),
) -> Repair:
    """Cover ``box`` with the occlusion fill and classify again."""
    covered = cover(np.asarray(image, np.float32), box, settings)
    probs = predict_proba(loaded, covered[None] * scale_factor(scale))[0]
    predicted = int(probs.argmax())
    return Repair(predicted, float(probs[predicted]), int(suspect_class), float(probs[suspect_class]), predicted != suspect_class)


# ------------------------------------------------------------------ inspect


@dataclass
class SaliencyMap:
    method: str  # "gradcam" or "occlusion"
    heat: np.ndarray  # (H, W); Grad-CAM in [0, 1], occlusion = probability drop (signed)
    peak: Optional[tuple[int, int]]
    box: Optional[Box]
    detail: str  # "conv_3", "patch 4, stride 2, zero fill"


@dataclass
class Inspection:
    """Everything the Inspector shows about one image."""

    image: np.ndarray  # (H, W, C) as stored
    predicted: int
    confidence: float
    probabilities: np.ndarray
    explained_class: int  # the class the maps explain (predicted unless asked otherwise)
    method: str  # the method whose box is "the" box
    maps: dict[str, SaliencyMap]
    repair: Optional[Repair]
    scale: str
    notes: list[str] = field(default_factory=list)
    label: Optional[int] = None
    source: str = ""
    occlusion_sizes: list[tuple[SaliencyMap, Optional[Repair]]] = field(default_factory=list)  # every patch size tried

    @property
    def primary(self) -> SaliencyMap:
        return self.maps[self.method]

    def as_dict(self) -> dict[str, Any]:
        p = self.primary
        return {
            "method": self.method,
            "predicted": self.predicted,
            "confidence": self.confidence,
            "explained_class": self.explained_class,
            "peak": None if p.peak is None else list(p.peak),
            "box": None if p.box is None else list(p.box),
            "detail": p.detail,
            "repair": None if self.repair is None else self.repair.as_dict(),
            "scale": self.scale,
            "notes": list(self.notes),
            "occlusion_sizes": [{"detail": m.detail, "box": None if m.box is None else list(m.box),
                                 "covering_flips": None if r is None else r.left_class,
                                 "suspect_probability_covered": None if r is None else r.suspect_probability}
                                for m, r in self.occlusion_sizes],
        }


def inspect(
    loaded: LoadedModel,
    image: np.ndarray,
    scale: str,
    method: str = DEFAULT_METHOD,
    methods: Optional[Sequence[str]] = None,
    layer: Optional[str] = None,
    class_index: Optional[int] = None,
    occlusion_settings: OcclusionSettings = OcclusionSettings(),
    threshold: float = DEFAULT_THRESHOLD,
) -> Job[Inspection]:
    """Predict, map (``methods``, default just ``method``), box, and try the occlusion repair.

    A secondary method that cannot run on this model (Grad-CAM without a
    conv layer) is skipped with a note; the primary one must run.
    """
    from core.inspect.gradcam import gradcam

    if method not in METHODS:
        raise DataError(f"method must be one of {', '.join(METHODS)}; received {method!r}")
    wanted = [method] + [m for m in (methods or []) if m != method]
    image = np.asarray(image, np.float32)
    if image.shape != tuple(loaded.input_shape):
        raise DataError(f"image shaped {image.shape} does not match the model input {tuple(loaded.input_shape)}")
    probs = predict_proba(loaded, image[None] * scale_factor(scale))[0]
    predicted = int(probs.argmax())
    explained = predicted if class_index is None else int(class_index)
    if not 0 <= explained < loaded.num_classes:
        raise DataError(f"class {explained} is out of range for a {loaded.num_classes}-class model")
    yield Progress(0.05, f"Predicted class {predicted} ({probs[predicted]:.1%})")
    maps: dict[str, SaliencyMap] = {}
    notes: list[str] = []
    sizes: list[tuple[SaliencyMap, Optional[Repair]]] = []
    for name in wanted:
        try:
            if name == "gradcam":
                cam = yield from gradcam(loaded, image[None], scale, layer, explained)
                found = salient_box(cam.maps[0], threshold)
                maps[name] = SaliencyMap(name, cam.maps[0], found.peak, found.box, f"layer {cam.layer}")
            elif name == "occlusion":
                sizes = yield from _occlusion_sizes(loaded, image, scale, explained, occlusion_settings, threshold)
                maps[name], note = _pick_size(sizes, explained)
                if note:
                    notes.append(note)
            else:
                raise DataError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
        except DataError:
            raise
        except Exception as exc:
            if name == method:
                raise
            notes.append(f"{name} unavailable: {exc}")
            continue
    repair = None
    box = maps[method].box
    if box is not None:
        chosen = [r for m, r in sizes if m is maps[method]]
        if chosen and chosen[0] is not None:
            repair = chosen[0]
        else:
            settings = occlusion_settings.candidates(image.shape)[0]
            repair = occlusion_repair(loaded, image, box, scale, explained, settings)
    yield Progress(1.0, "Inspection finished")
    return Inspection(image, predicted, float(probs[predicted]), probs, explained, method, maps, repair, scale, notes,
                      occlusion_sizes=sizes)


def _occlusion_sizes(loaded: LoadedModel, image: np.ndarray, scale: str, explained: int, settings: OcclusionSettings,
                     threshold: float) -> Job[list[tuple[SaliencyMap, Optional[Repair]]]]:
    """An occlusion map, its box and the covering test for every patch size to try."""
    from core.jobs import rescaled
    from core.inspect.occlusion import occlusion

    out: list[tuple[SaliencyMap, Optional[Repair]]] = []
    candidates = settings.candidates(image.shape)
    for k, s in enumerate(candidates):
        lo, hi = 0.05 + 0.9 * k / len(candidates), 0.05 + 0.9 * (k + 1) / len(candidates)
        occ = yield from rescaled(occlusion(loaded, image[None], scale, s, explained), lo, hi)
        found = salient_box(occ.maps[0], threshold)
        smap = SaliencyMap("occlusion", occ.maps[0], found.peak, found.box, f"patch {s.patch}, stride {s.stride}, {s.fill} fill")
        covered = None if found.box is None else occlusion_repair(loaded, image, found.box, scale, explained, s)
        out.append((smap, covered))
    return out


def _pick_size(sizes: list[tuple[SaliencyMap, Optional[Repair]]], explained: int) -> tuple[SaliencyMap, str]:
    """The smallest patch whose box, covered, moves the prediction off the class; else the one that lowers it most."""
    if len(sizes) == 1:
        return sizes[0][0], ""
    tried = ", ".join(m.detail.split(",")[0].replace("patch ", "") for m, _ in sizes)
    for smap, covered in sizes:
        if covered is not None and covered.left_class:
            return smap, (f"occlusion tried patches of {tried} px: {smap.detail.split(',')[0]} px is the smallest whose box, "
                          f"covered, moves the prediction off class {explained}")
    with_box = [(m, r) for m, r in sizes if r is not None]
    if not with_box:
        return sizes[0][0], f"occlusion tried patches of {tried} px: every map was empty"
    smap, covered = min(with_box, key=lambda mr: mr[1].suspect_probability)
    return smap, (f"occlusion tried patches of {tried} px: covering no box moves the prediction off class {explained}; "
                  f"{smap.detail.split(',')[0]} px lowers it most (to {covered.suspect_probability:.0%})")


def transplant_search(
    loaded: LoadedModel,
    inspection: Inspection,
    clean_x: np.ndarray,
    clean_y: Optional[np.ndarray],
    m: int = DEFAULT_TRANSPLANTS,
    seed: int = 0,
) -> Job[Transplant]:
    """The transplant test of the inspection's box; if it does not behave like a trigger, of the other patch sizes' boxes.

    Returns the first box that behaves like a trigger, else the one with the
    largest flip rate above its baseline; ``box_from`` names the map it came
    from and ``tried`` lists every box with its figures, so a reader sees
    which patch size found the trigger (a two-bar trigger needs a patch that
    covers a whole bar).
    """
    from core.jobs import rescaled

    primary = inspection.primary
    boxes: list[tuple[Box, str]] = []
    if primary.box is not None:
        boxes.append((primary.box, f"{primary.method}, {primary.detail}"))
    for smap, _covered in inspection.occlusion_sizes:
        if smap.box is not None and all(smap.box != b for b, _ in boxes):
            boxes.append((smap.box, f"occlusion, {smap.detail}"))
    if not boxes:
        raise DataError("the inspection found no salient box to transplant: the maps are empty")
    best: Optional[Transplant] = None
    tried: list[dict[str, Any]] = []
    for k, (box, detail) in enumerate(boxes):
        tr = yield from rescaled(transplant(loaded, inspection.image, box, clean_x, clean_y, inspection.scale,
                                            inspection.explained_class, m, seed), k / len(boxes), (k + 1) / len(boxes))
        tr.box_from = detail
        tried.append({"box": list(box), "box_from": detail, "flip_rate": tr.flip_rate, "baseline": tr.baseline})
        if best is None or tr.flip_rate - tr.baseline > best.flip_rate - best.baseline:
            best = tr
        if tr.looks_like_trigger:
            best = tr
            break
    best.tried = tried
    return best
