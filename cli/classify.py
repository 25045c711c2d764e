"""``classify``: the guarded classifier -- the model's class, or N when the profile's scanner flags the input."""

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
    result = drive(scanner.scan(loaded, profile, source, thumbnails=False), args)
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
            elif named:
                print(f"{file}\t{row.label}" + (f"\t{flag_text(True, profile.num_classes, row.flagged_by)}" if row.flagged else ""))
            else:
                print(row.label)
    out = result.as_dict()
    for row in out["results"]:
        row["path"] = row["source"]
    out["skipped"] = skipped_list(result.skipped)
    out["reject_class"] = profile.num_classes
    return out
