"""Cost of the Fine-Pruning sweep, as a ratio to one full evaluation pass of the same data.

Run: ``python bench/bench_prune_sweep.py``. Prints, for the demo BadNet (its
clean validation + poisoned test data) and for the CSAW DeepID architecture
(random inputs of its shape), the cost of a sweep over every channel of the
default layer divided by the cost of one full forward pass over the same
images: for our sweep (prefix once, masked suffix per step) and for the naive
sweep (zero the filters on a clone and re-run the whole network per step).
Target: ours <= 3x. Ratios, not seconds, because the machine is shared.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.jobs import run_job
from core.repair.pruning import PruneSettings, apply_masks, channel_mask, clone_model, default_layer, sweep
from core.intake.tf_env import tf as _tf

CSAW = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "csaw" / "fine_pruned_sunglasses_model.h5"


def full_pass(model, xs: list[np.ndarray], batch: int = 256) -> Callable[[], list[np.ndarray]]:  # noqa: ANN001 -- a Keras model
    tf = _tf()
    fn = tf.function(lambda x: tf.argmax(model(x, training=False), axis=-1), reduce_retracing=True)
    return lambda: [np.concatenate([np.asarray(fn(x[i : i + batch])) for i in range(0, len(x), batch)]) for x in xs]


def best_of(fn, repeats: int = 3) -> float:  # noqa: ANN001
    fn()  # warm-up (tracing)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench(name: str, loaded, x_clean, y_clean, x_pois, target) -> None:  # noqa: ANN001
    layer = default_layer(loaded.model)
    x_all = [x_clean / 255.0, x_pois / 255.0]
    one_pass = best_of(full_pass(loaded.model, x_all))
    ours = best_of(lambda: run_job(sweep(loaded, x_clean, y_clean, "255", PruneSettings(layer=layer), x_poisoned=x_pois, target=target)), repeats=2)
    channels = int(loaded.model.get_layer(layer).filters)
    clone = clone_model(loaded.model)
    naive_pass = full_pass(clone, x_all)
    naive_pass()
    sample = list(range(0, channels + 1, max(1, channels // 8)))  # time a few steps, extrapolate to all

    def naive_steps():
        for k in sample:
            clone.set_weights(loaded.model.get_weights())
            apply_masks(clone, {layer: channel_mask(channels, range(k))})
            naive_pass()

    naive = best_of(naive_steps, repeats=1) * (channels + 1) / len(sample)
    print(f"{name}: layer {layer} ({channels} channels), {len(x_clean) + len(x_pois)} images; "
          f"one full pass {one_pass * 1000:.0f} ms")
    print(f"  ours : sweep / full pass = {ours / one_pass:.2f}x")
    print(f"  naive: sweep / full pass = {naive / one_pass:.2f}x (extrapolated from {len(sample)} steps)")


def main() -> None:
    from core.intake.data import load_arrays, open_data
    from core.demo import TARGET, cached_demo
    from core.intake.models import load_model

    bundle = run_job(cached_demo())
    loaded = load_model(bundle.model)
    valid = load_arrays(open_data(bundle.clean_valid), loaded.input_shape)
    pois = load_arrays(open_data(bundle.poisoned_test), loaded.input_shape)
    bench("demo BadNet", loaded, valid.x, valid.y, pois.x, TARGET)
    if CSAW.is_file():
        deepid = load_model(CSAW)
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (1000, 55, 47, 3)).astype(np.float32)
        y = rng.integers(0, deepid.num_classes, 1000)
        bench("CSAW DeepID (random inputs)", deepid, x, y, x[:500], 0)
    else:
        print(f"CSAW fixture not found at {CSAW}: DeepID skipped")


if __name__ == "__main__":
    main()
