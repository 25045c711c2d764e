"""Probe (not a product feature): does blacking out Neural Cleanse's reversed mask undo a trigger at input level?

    python bench/probe_trigger_occlusion.py low_rate:9 wanet:6 patch:7 sunglasses:0

For each zoo model and its planted target T (bench/zoo.py, built first if
missing): reverse-engineer T's trigger on ``clean_valid`` (core.cleanse, that
class only), dilate its mask (> 0.5) by one pixel, and flag an input predicted
T whose prediction leaves T once that region is set to 0 (the digits'
background). Prints the false rejections on ``clean_test`` and the residual
attack success on ``poisoned_test`` (triggered images neither flagged nor kept
from the attacker's label). No calibration: a measurement of the idea behind
Neural Cleanse's input filter and Februus (Doan et al., ACSAC 2020), as a
candidate for the scanner (docs/scan.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def probe(entry, target: int) -> str:  # noqa: ANN001 -- a bench.zoo.ZooEntry
    from scipy.ndimage import binary_dilation

    from core.cleanse import CleanseSettings, cleanse
    from core.data import load_arrays, open_data
    from core.evaluate import choose_scale
    from core.inference import predict_labels
    from core.jobs import run_job
    from core.models import load_model

    loaded = load_model(entry.model)
    valid = open_data(entry.clean_valid)
    scale, _note = choose_scale(loaded, valid, "auto")
    clean_valid = load_arrays(valid, loaded.input_shape)
    clean_test = load_arrays(open_data(entry.clean_test), loaded.input_shape)
    poisoned = load_arrays(open_data(entry.poisoned_test), loaded.input_shape)
    found = run_job(cleanse(loaded, clean_valid, scale, CleanseSettings(label_specific=False), classes=[target]))
    region = binary_dilation(found.triggers[target].mask > 0.5, iterations=1)

    def flagged(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        before = predict_labels(loaded, x, scale)
        occluded = np.array(x, np.float32, copy=True)
        occluded[:, region] = 0.0
        return (before == target) & (predict_labels(loaded, occluded, scale) != target), before

    clean_flags, _ = flagged(clean_test.x)
    poisoned_flags, predicted = flagged(poisoned.x)
    hit = predicted == poisoned.y
    return (f"{entry.spec.name:12s} T={target} {int(region.sum()):3d} px occluded | FRR clean_test {clean_flags.mean():.1%} | "
            f"attack success {hit.mean():.1%} -> residual {(hit & ~poisoned_flags).mean():.1%}")


def main(argv: list[str]) -> int:
    from bench.zoo import build_zoo

    pairs = [a.split(":") for a in argv] or [["low_rate", "9"], ["wanet", "6"]]
    entries = {e.spec.name: e for e in build_zoo(None, [name for name, _t in pairs])}
    for name, target in pairs:
        print(probe(entries[name], int(target)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
