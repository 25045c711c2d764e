"""``report``: run the quick analyses and write the findings report (HTML + JSON beside it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.common import (add_model_arguments, add_output_arguments, add_scale_argument, conversions, drive, fit_to_model, open_model,
                        open_optional, say, say_conversions)
from cli.common import count
from core.errors import DataError, TrojanScopeError
from core.report import QUICK_FINE_TUNE_EPOCHS, QUICK_OVERLAYS, TOP_INSPECTED, json_path_for, quick_findings, write_report

NAME = "report"
HELP = ("write a self-contained HTML findings report (and JSON beside it): evaluation, Fine-Pruning, "
        "STRIP and heat-maps of the flagged images, with quick defaults")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--clean", required=True, help="labelled clean data: evaluation, pruning, STRIP calibration")
    parser.add_argument("--poisoned", help="suspected-poisoned data: attack success rate (and scanned when --scan is absent)")
    parser.add_argument("--scan", help="data or folder to scan with STRIP; its flagged images get heat-maps")
    parser.add_argument("--target", type=count(0), help="the attacker's target class (default: the poisoned data's labels)")
    parser.add_argument("--fine-tune-epochs", type=count(0), default=QUICK_FINE_TUNE_EPOCHS,
                        help="fine-tuning epochs after pruning (default %(default)s; 0: prune only)")
    parser.add_argument("--overlays", type=count(1), default=QUICK_OVERLAYS, help="STRIP overlays (default %(default)s)")
    parser.add_argument("--top", type=count(0), default=TOP_INSPECTED, help="flagged images to inspect (default %(default)s)")
    parser.add_argument("--cleanse", action="store_true", help="also run Neural Cleanse (minutes; off by default)")
    parser.add_argument("--cleanse-classes", type=count(1), default=10,
                        help="with --cleanse: classes fully optimised after screening (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="the HTML report to write; the JSON goes beside it (OUT.json)")
    add_scale_argument(parser)
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise TrojanScopeError(f"--out must end in .html; received {out}")
    if args.fine_tune_epochs < 0 or args.top < 0:
        raise DataError("--fine-tune-epochs and --top must not be negative")
    inputs = {"model": args.model, "architecture": getattr(args, "arch", None), "clean": args.clean,
              "poisoned": args.poisoned, "scan": args.scan}
    inputs = {k: str(v) for k, v in inputs.items() if v}
    from core.intake.atomic import refuse_overwriting

    for path in (out, json_path_for(out)):  # fail before minutes of work, not after
        refuse_overwriting(path, *inputs.values())
    clean = open_optional(args.clean)
    poisoned = open_optional(args.poisoned)
    scan_source = open_optional(args.scan)
    loaded = open_model(args)
    fits = fit_to_model(args, loaded, clean=clean, poisoned=poisoned, scan=scan_source)
    say_conversions(args, fits)
    if not clean.labelled:
        raise DataError(f"{clean.path}: clean data must be labelled to evaluate and calibrate")
    cleanse_settings = None
    if args.cleanse:
        from core.detect.model_level.cleanse import CleanseSettings

        cleanse_settings = CleanseSettings(candidates=args.cleanse_classes, seed=args.seed)
    findings = drive(quick_findings(loaded, clean, poisoned, scan_source, args.target, args.scale, args.fine_tune_epochs,
                                    args.overlays, args.top, args.seed, cleanse_settings), args)
    findings.inputs = inputs
    findings.conversions = conversions(fits)
    html_path, json_path = write_report(findings, out)
    say(args, f"wrote {html_path} and {json_path}")
    record = {"report": str(html_path), "json": str(json_path)}
    ev = findings.evaluation
    record.update({"clean_accuracy": ev.clean_accuracy, "attack_success_rate": ev.attack_success_rate,
                   "flagged": findings.scan.flagged if findings.scan is not None else None,
                   "scanned": len(findings.scan.rows) if findings.scan is not None else None,
                   "inspected": len(findings.inspections),
                   "verdict": findings.cleanse.verdict if findings.cleanse is not None else None,
                   "conversions": findings.conversions})
    return record
