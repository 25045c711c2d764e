"""``inspect``: locate what drives one image's prediction, and test whether it is a trigger."""

from __future__ import annotations

import argparse
from typing import Any, Optional

import numpy as np

from cli.common import add_model_arguments, add_output_arguments, add_scale_argument, conversions, drive, fit_to_model, open_model, say, skipped_list
from cli.common import count, rate
from core.errors import DataError

NAME = "inspect"
HELP = "Grad-CAM / occlusion heat-map of one image, its salient box, and the transplant test"
CLEAN_LIMIT = 5000  # clean images read for the transplant test and the mean fill


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from core.inspect.occlusion import FILLS
    from core.inspect.trigger import DEFAULT_METHOD, DEFAULT_THRESHOLD, DEFAULT_TRANSPLANTS, METHODS

    add_model_arguments(parser)
    parser.add_argument("--image", required=True, help="an image file, or a data set (HDF5, .npz, folder) with --index")
    parser.add_argument("--index", type=count(0), default=0, help="which image of a data set --image (default 0)")
    parser.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD, help=f"heat-map method (default {DEFAULT_METHOD})")
    parser.add_argument("--layer", help="conv layer for Grad-CAM (default: the last Conv2D)")
    parser.add_argument("--class", dest="class_index", type=count(0), help="class to explain (default: the predicted class)")
    parser.add_argument("--patch", type=count(1), help="occlusion patch side in pixels (default: about 1/7 of the image side)")
    parser.add_argument("--stride", type=count(1), help="occlusion stride in pixels (default: half the patch)")
    parser.add_argument("--fill", choices=FILLS, default="zero", help="what covers an occluded patch (mean needs --clean)")
    parser.add_argument("--threshold", type=rate, default=DEFAULT_THRESHOLD, help="salient region: pixels above this fraction of the peak")
    parser.add_argument("--out", help="write the image and its overlay side by side to this PNG")
    parser.add_argument("--transplant", action="store_true", help="paste the salient box onto clean images of other classes (needs --clean)")
    parser.add_argument("--clean", help="labelled clean data: transplant recipients, mean fill, --scale auto")
    parser.add_argument("--transplants", "--m", dest="m", type=count(1), default=DEFAULT_TRANSPLANTS, help="number of clean recipients")
    parser.add_argument("--seed", type=int, default=0, help="seed for choosing recipients and baseline boxes")
    add_scale_argument(parser)
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    from core.intake.atomic import refuse_overwriting
    from core.intake.data import load_arrays, open_data
    from core.intake.fit import choose_scale
    from core.inspect.occlusion import OcclusionSettings, clean_mean
    from core.inspect.overlay import inspection_figure, write_png_atomic
    from core.inspect.trigger import inspect, transplant_search

    if args.transplant and not args.clean:
        raise DataError("--transplant needs clean images to paste onto: give --clean DATA")
    if args.fill == "mean" and not args.clean:
        raise DataError("--fill mean needs clean data to take the mean colour from: give --clean DATA")
    if args.m < 1:
        raise DataError(f"--transplants must be at least 1; received {args.m}")
    if args.out:
        refuse_overwriting(args.out, args.image, args.model, args.clean)
    source = open_data(args.image)
    clean = open_data(args.clean) if args.clean else None
    loaded = open_model(args)
    fits = fit_to_model(args, loaded, image=source, clean=clean)
    image, label, where, skipped = _one_image(source, loaded.input_shape, args.index)
    scale, note = choose_scale(loaded, clean, args.scale)
    clean_arrays = load_arrays(clean, loaded.input_shape, CLEAN_LIMIT) if clean is not None else None
    fill_value = clean_mean(clean_arrays.x) if args.fill == "mean" and clean_arrays is not None else None
    settings = OcclusionSettings(args.patch, args.stride, args.fill, fill_value)
    result = drive(
        inspect(loaded, image, scale, args.method, None, args.layer, args.class_index, settings, args.threshold), args
    )
    out: dict[str, Any] = result.as_dict()
    out.update({"image": where, "label": label, "saved": None, "conversions": conversions(fits)})
    say(args, f"{where}: predicted class {result.predicted} ({result.confidence:.2%}); {note}")
    primary = result.primary
    say(args, f"{args.method} ({primary.detail}): peak {primary.peak}, salient box {primary.box} [row0, col0, row1, col1)")
    if result.repair is not None:
        r = result.repair
        say(args, f"covering the box: class {r.predicted} ({r.confidence:.2%}); {'left' if r.left_class else 'stayed in'} class {result.explained_class}")
    if args.transplant:
        if primary.box is None:
            raise DataError(f"{where}: the {args.method} map is empty, so there is no salient box to transplant")
        if clean_arrays is None or len(clean_arrays) == 0:
            raise DataError(f"{args.clean}: no readable clean images")
        tr = drive(transplant_search(loaded, result, clean_arrays.x, clean_arrays.y, args.m, args.seed), args)
        out.update(tr.as_dict())
        out["n_transplant_source"] = f"{tr.n} clean images of {args.clean} not of class {tr.suspect_class}"
        skipped += clean_arrays.skipped
        say(args, f"transplant of the box {list(tr.box)} from the {tr.box_from} map: {tr.flip_rate:.1%} of {tr.n} "
                  f"clean images flipped to class {tr.suspect_class} "
                  f"(baseline {tr.baseline:.1%}, same-place baseline {tr.baseline_same_place:.1%})")
    if args.out:
        out["saved"] = str(write_png_atomic(args.out, inspection_figure(result)))
        say(args, f"saved {out['saved']}")
    out["skipped"] = skipped_list(skipped)
    return out


def _one_image(source: Any, shape: tuple, index: int) -> tuple[np.ndarray, Optional[int], str, list]:
    """Image ``index`` of ``source`` in the model's layout, its label, and a name for it."""
    if not 0 <= index < source.count:
        raise DataError(f"{source.path} holds {source.count} item(s); --index {index} is out of range")
    skipped: list = []
    seen = 0
    for batch in source.batches(shape, 256):
        skipped.extend(batch.skipped)
        seen += len(batch.indices) + len(batch.skipped)
        hits = np.flatnonzero(batch.indices == index)
        if hits.size:
            k = int(hits[0])
            label = None if batch.y is None else int(batch.y[k])
            name = batch.sources[k] if source.count == 1 or batch.sources[k] != str(source.path) else f"{source.path}#{index}"
            return batch.x[k], label, name, skipped
        if seen > index:  # its batch went by: the image was skipped
            break
    reason = next((s.reason for s in skipped), "unreadable")
    raise DataError(f"cannot read image {index} of {source.path}: {reason}")
