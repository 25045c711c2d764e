"""``classify``: the guarded classifier -- the model's class, or N when the profile's scanner flags the input.

With ``--purify`` a flagged input gets its purified class instead (core/repair/purify.py), and N only when it
cannot be purified.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.common import add_model_arguments, add_output_arguments, drive, flag_text, open_model, skipped_list
from core.detect.input_level import scanner
from core.intake.data import FolderSource, open_data

NAME = "classify"
HELP = "print one class per image: the model's class in [0, N-1], or N when the saved scanner (STRIP, SCALE-UP, TeCo, combined) flags it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--profile", required=True, help="profile saved by `strip --save-profile` or `scan --save-profile` (its method is applied)")
    parser.add_argument("--purify", action="store_true",
                        help="give a flagged image its purified class (the trigger cut out and inpainted, or the profile's clean "
                             "reference model's answer); N only when it cannot be purified")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (a folder is searched recursively)")
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    profile = scanner.load_profile(args.profile)
    files: list[Path] = []
    named = False  # a folder was given: each line names its file (bare classes only when the files were listed)
    for item in args.images:
        path = Path(item)
        source = open_data(path) if path.is_dir() else None
        named = named or source is not None
        files.extend(source.files if isinstance(source, FolderSource) else [path])
    loaded = open_model(args)
    for warning in scanner.check_profile(loaded, profile):
        print(warning, file=sys.stderr)
    source = FolderSource(Path("."), files, None, [])
    args.quiet = True if not args.json else args.quiet
    purified = None
    if args.purify:
        from core.inspect.trigger import box_finder
        from core.repair import purify

        evidence = purify.evidence_from(loaded, profile, locate=box_finder(loaded, profile.scale))
        purified = drive(purify.scan_and_purify(loaded, profile, source, evidence, thumbnails=False), args)
        result = purified.scan
    else:
        result = drive(scanner.scan(loaded, profile, source, thumbnails=False), args)
    answers = {row.index: p for row, p in zip(result.rows, purified.purified)} if purified is not None else {}
    by_index = {row.index: row for row in result.rows}
    reasons = {s.source: s.reason for s in result.skipped}
    if not args.json:
        # One line per image, in the order given, so scripts can zip lines with their inputs; with a folder,
        # "path<TAB>class" (and why the class is N when it is), since the order was the folder's, not the caller's.
        for i, file in enumerate(files):
            row = by_index.get(i)
            if row is None:
                print(f"{file}\tskipped" if named else "skipped")
                print(f"skipped {file}: {reasons.get(str(file), 'unreadable')}", file=sys.stderr)
            elif i in answers:
                p = answers[i]
                label = p.guarded(profile.num_classes)
                if not named:
                    print(label)
                elif not p.flagged:
                    print(f"{file}\t{label}")
                elif p.purified_label is None:
                    print(f"{file}\t{label}\t{flag_text(True, profile.num_classes, row.flagged_by)}; {p.reason}")
                else:
                    print(f"{file}\t{label}\tflagged by {'+'.join(row.flagged_by)}, purified: model class {p.label} -> {label} "
                          f"({p.method})")
            elif named:
                print(f"{file}\t{row.label}" + (f"\t{flag_text(True, profile.num_classes, row.flagged_by)}" if row.flagged else ""))
            else:
                print(row.label)
    out = purified.as_dict() if purified is not None else result.as_dict()
    for row in out["results"]:
        row["path"] = row["source"]
        if purified is not None:
            row["label"] = row["guarded_label"]  # the guarded classifier's answer, as without --purify (N: flagged, not purified)
    out["skipped"] = skipped_list(result.skipped)
    out["reject_class"] = profile.num_classes
    return out
