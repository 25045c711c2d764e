"""Acceptance figures of the Inspector (issue 6) on the demo BadNet, in one command.

    python bench/inspector_acceptance.py [--demo DIR] [--suspects 50] [--json OUT.json]

1. Localisation: Grad-CAM and occlusion boxes of every triggered test image
   (poisoned_test.h5) against the true sticker (core.demo.STICKER_BOX):
   fraction whose box overlaps it, fraction covering at least half of it,
   mean IoU, mean box area -- on all triggered images and on those the
   backdoor fires on (predicted as the target).
2. Transplant: the default method's box of ``--suspects`` triggered images
   pasted onto 100 clean images of other classes each: flip rate vs the
   two baselines; the same suspects on the clean control model.
3. Clean suspects: correctly classified clean images of other classes, their
   own salient box transplanted: the flip rate must stay low.
4. Occlusion repair: how often covering the box moves the prediction off the target.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.intake.data import load_arrays, open_data
from core.demo import STICKER_BOX, TARGET, export_demo
from core.inspect.gradcam import gradcam_maps
from core.intake.inference import predict_labels
from core.jobs import run_job
from core.intake.models import load_model
from core.inspect.occlusion import OcclusionSettings, occlusion_maps
from core.inspect.trigger import DEFAULT_METHOD, box_overlap, occlusion_repair, salient_box, transplant

SCALE = "255"  # the demo is trained on pixels / 255


def localisation(maps: np.ndarray, fired: np.ndarray) -> dict:
    boxes = [salient_box(m).box for m in maps]
    sticker_area = (STICKER_BOX[2] - STICKER_BOX[0]) * (STICKER_BOX[3] - STICKER_BOX[1])
    inter = np.array([box_overlap(b, STICKER_BOX)[0] if b else 0 for b in boxes])
    iou = np.array([box_overlap(b, STICKER_BOX)[1] if b else 0.0 for b in boxes])
    area = np.array([(b[2] - b[0]) * (b[3] - b[1]) if b else 0 for b in boxes])

    def figures(sel: np.ndarray) -> dict:
        return {
            "n": int(sel.sum()),
            "overlap_rate": float(np.mean(inter[sel] > 0)),
            "half_covered_rate": float(np.mean(inter[sel] >= sticker_area / 2)),
            "mean_iou": float(np.mean(iou[sel])),
            "mean_box_area": float(np.mean(area[sel])),
        }

    return {"all_triggered": figures(np.ones(len(maps), bool)), "backdoor_fired": figures(fired)}, boxes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", default=str(Path(tempfile.gettempdir()) / "demo6"), help="demo folder (written by `main.py demo --out` if missing)")
    parser.add_argument("--suspects", type=int, default=50, help="triggered and clean images to transplant from")
    parser.add_argument("--transplants", type=int, default=100, help="clean recipients per suspect")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    started = time.perf_counter()
    bundle = run_job(export_demo(Path(args.demo)))
    model = load_model(bundle.model)
    control = load_model(bundle.clean_model)
    shape = model.input_shape
    triggered = load_arrays(open_data(bundle.poisoned_test), shape)
    clean = load_arrays(open_data(bundle.clean_test), shape)
    pred = predict_labels(model, triggered.x, SCALE)
    fired = pred == TARGET
    out: dict = {"demo": str(bundle.root), "n_triggered": len(triggered), "attack_success_rate": float(fired.mean()),
                 "default_method": DEFAULT_METHOD, "sticker_box": list(STICKER_BOX)}
    print(f"{len(triggered)} triggered images, backdoor fires on {fired.mean():.1%}", file=sys.stderr)

    t = time.perf_counter()
    cam = gradcam_maps(model, triggered.x, SCALE)
    out["gradcam"], _ = localisation(cam.maps, fired)
    out["gradcam"]["seconds"] = round(time.perf_counter() - t, 1)
    out["gradcam"]["layer"] = cam.layer
    t = time.perf_counter()
    settings = OcclusionSettings().resolved(shape)
    occ = occlusion_maps(model, triggered.x, SCALE, settings)
    out["occlusion"], occ_boxes = localisation(occ.maps, fired)
    out["occlusion"]["seconds"] = round(time.perf_counter() - t, 1)
    out["occlusion"]["settings"] = f"patch {settings.patch}, stride {settings.stride}, {settings.fill} fill"
    boxes = occ_boxes if DEFAULT_METHOD == "occlusion" else [salient_box(m).box for m in cam.maps]
    print(f"maps done in {time.perf_counter() - started:.0f} s", file=sys.stderr)

    # Transplant from triggered suspects the backdoor fires on.
    suspects = np.flatnonzero(fired)[: args.suspects]
    rows = []
    for k, i in enumerate(suspects):
        tr = run_job(transplant(model, triggered.x[i], boxes[i], clean.x, clean.y, SCALE, TARGET, args.transplants, seed=k))
        tc = run_job(transplant(control, triggered.x[i], boxes[i], clean.x, clean.y, SCALE, TARGET, args.transplants, seed=k))
        rows.append((tr.flip_rate, tr.baseline, tr.baseline_same_place, tc.flip_rate))
    r = np.array(rows)
    out["transplant_triggered"] = {
        "suspects": len(suspects),
        "recipients_each": args.transplants,
        "mean_flip_rate": float(r[:, 0].mean()),
        "min_flip_rate": float(r[:, 0].min()),
        "suspects_above_80pct": float(np.mean(r[:, 0] > 0.8)),
        "mean_baseline": float(r[:, 1].mean()),
        "max_baseline": float(r[:, 1].max()),
        "mean_baseline_same_place": float(r[:, 2].mean()),
        "clean_control_model_flip_rate": float(r[:, 3].mean()),
    }

    # Clean suspects: correctly classified clean images of other classes, their own box.
    clean_pred = predict_labels(model, clean.x, SCALE)
    ok = np.flatnonzero((clean_pred == clean.y) & (clean.y != TARGET))[: args.suspects]
    clean_maps = occlusion_maps(model, clean.x[ok], SCALE, settings).maps if DEFAULT_METHOD == "occlusion" else gradcam_maps(model, clean.x[ok], SCALE).maps
    rows = []
    for k, (i, heat) in enumerate(zip(ok, clean_maps)):
        box = salient_box(heat).box
        tr = run_job(transplant(model, clean.x[i], box, clean.x, clean.y, SCALE, int(clean.y[i]), args.transplants, seed=k))
        rows.append((tr.flip_rate, tr.baseline))
    r = np.array(rows)
    out["transplant_clean"] = {
        "suspects": len(ok),
        "mean_flip_rate": float(r[:, 0].mean()),
        "max_flip_rate": float(r[:, 0].max()),
        "mean_baseline": float(r[:, 1].mean()),
    }

    # Occlusion repair on every triggered image the backdoor fires on.
    left = [occlusion_repair(model, triggered.x[i], boxes[i], SCALE, TARGET, settings).left_class for i in np.flatnonzero(fired) if boxes[i]]
    out["repair_left_target_rate"] = float(np.mean(left))
    out["seconds"] = round(time.perf_counter() - started, 1)

    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    g, o = out["gradcam"]["all_triggered"], out["occlusion"]["all_triggered"]
    tt, tc = out["transplant_triggered"], out["transplant_clean"]
    print(
        f"\nbox overlaps sticker: occlusion {o['overlap_rate']:.1%} (IoU {o['mean_iou']:.2f}, area {o['mean_box_area']:.0f} px), "
        f"Grad-CAM {g['overlap_rate']:.1%} (IoU {g['mean_iou']:.2f}, area {g['mean_box_area']:.0f} px)\n"
        f"transplant: flip {tt['mean_flip_rate']:.1%} (min {tt['min_flip_rate']:.0%}), baseline {tt['mean_baseline']:.1%}, "
        f"same-place baseline {tt['mean_baseline_same_place']:.1%}, clean model {tt['clean_control_model_flip_rate']:.1%}; "
        f"clean suspects flip {tc['mean_flip_rate']:.1%} (max {tc['max_flip_rate']:.0%})\n"
        f"repair leaves the target: {out['repair_left_target_rate']:.1%}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
