"""``triage``: rank every model file in a folder by suspicion (the ``cleanse`` checks on each), resumably, on one
machine or a Dask cluster (docs/scale.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.common import add_output_arguments, add_scale_argument, count, drive, open_optional, say
from core.detect.model_level.cleanse import CleanseSettings
from core.detect.model_level.judge import METHODS
from core.detect.model_level.mmbd import MMBDSettings
from core.detect.model_level.triage import duration, stored_table, triage
from core.detect.model_level.triage_store import default_store
from core.detect.model_level.warp import WarpSettings
from core.detect.model_level.verdict import NO_EVIDENCE, rate_words, targets_label
from core.errors import DataError
from core.intake.atomic import refuse_overwriting
from core.intake.data import Conversion

NAME = "triage"
HELP = ("rank every model in a folder by suspicion: backdoored, suspicious, no evidence (refuses unreadable or hostile files); "
        "resumable, on this machine or a Dask cluster")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", required=True, help="folder of model files (.keras, .h5; searched recursively)")
    parser.add_argument("--clean", required=True, help="clean validation data, converted to each model's input shape")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                        help="model-level checks: cleanse (Neural Cleanse), twin (Neural Cleanse on a clean twin; needs cleanse), "
                             "mmbd (MM-BD), warp (warp inversion); default all")
    parser.add_argument("--max-images", type=count(2), default=CleanseSettings().max_images, help="clean images read (default %(default)s)")
    parser.add_argument("--rounds", type=count(1), default=CleanseSettings().max_rounds,
                        help="Neural Cleanse: at most this many rounds per class (default %(default)s)")
    parser.add_argument("--mmbd-steps", type=count(1), default=MMBDSettings().steps, help="MM-BD: optimisation steps (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--store", help="the SQLite results store: each finished model is written there at once, and a "
                                        "rerun skips the models it holds (default: one per models folder in the user data folder)")
    parser.add_argument("--fresh", action="store_true", help="judge every model again, ignoring what the store holds")
    parser.add_argument("--workers", type=count(1), help="judge the models on a local Dask cluster of this many worker processes "
                                                         "(default: one after another in this process)")
    parser.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="judge the models on this existing Dask cluster "
                                                                        "(its workers run the same TrojanScope; docs/scale.md)")
    parser.add_argument("--out", nargs="+", metavar="FILE", default=[],
                        help="write the ranked table to FILE: .csv, .json (this command's JSON) or .html (the report's triage section)")
    parser.add_argument("--table-only", action="store_true",
                        help="judge nothing: build the table (and --out files) from what the store holds now, partial runs included")
    add_scale_argument(parser)
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    from core.demo import user_data_dir
    from core.report import TRIAGE_OUTPUTS, json_path_for, write_triage

    if args.workers and args.scheduler:
        raise DataError("give --workers N (a cluster on this machine) or --scheduler ADDRESS (an existing one), not both")
    if args.table_only and (args.fresh or args.workers or args.scheduler):
        raise DataError("--table-only judges nothing: it takes no --fresh, --workers or --scheduler")
    store = Path(args.store) if args.store else default_store(args.models, user_data_dir())
    targets: set[Path] = set()
    for out in args.out:  # fail before hours of work, not after
        suffix = Path(out).suffix.lower()
        if suffix not in TRIAGE_OUTPUTS:
            raise DataError(f"--out {out}: the triage table is written as .csv, .json or .html")
        refuse_overwriting(out, args.clean, store)
        paths = {Path(out).resolve()} | ({json_path_for(out).resolve()} if suffix in (".html", ".htm") else set())
        if paths & targets:
            raise DataError(f"--out {out}: a file would be written twice (an .html report writes its .json beside it)")
        targets |= paths
    clean = open_optional(args.clean)
    settings = dict(scale=args.scale, methods=args.methods,
                    cleanse_settings=CleanseSettings(max_images=args.max_images, max_rounds=args.rounds, seed=args.seed),
                    mmbd_settings=MMBDSettings(steps=args.mmbd_steps, seed=args.seed), warp_settings=WarpSettings(seed=args.seed),
                    conversion=Conversion(resize=args.resize, channels=args.channels), store=store)
    if not args.quiet:
        print(f"results store: {store}", file=sys.stderr, flush=True)
    if args.table_only:
        job = stored_table(args.models, clean, **settings)
    else:
        job = triage(args.models, clean, fresh=args.fresh, workers=args.workers or 0, scheduler=args.scheduler, **settings)
    result = drive(job, args)
    written = [str(p) for out in args.out for p in write_triage(result, out, inputs=[args.clean])]
    for n, row in enumerate(result.rows, start=1):
        targets = targets_label(row.targets, row.summary)
        # the words the product promises ("no evidence found"), never "clean"; the JSON keeps the machine value
        verdict = row.level + (" found" if row.level == NO_EVIDENCE else "")
        say(args, f"{n:3d}. {verdict:17s} {rate_words(row.false_alarm):22s} score {row.score:.2f} targets {targets:8s} "
                  f"{row.seconds:6.1f} s  {row.source}")
    for s in result.skipped:
        say(args, f"  skipped {s.source}: {s.reason}")
    for s in result.failed:
        say(args, f"  failed  {s.source}: {s.reason}")
    for source in result.pending:
        say(args, f"  not judged yet: {source}")
    earlier = f" ({result.reused} from earlier runs)" if result.reused else ""
    failed = f", {len(result.failed)} failed (the next run tries them again)" if result.failed else ""
    pending = f", {len(result.pending)} not judged yet" if result.pending else ""
    say(args, f"{len(result.rows)} models judged{earlier}, {len(result.skipped)} skipped{failed}{pending}, {duration(result.seconds)}")
    say(args, f"results store: {result.store}")
    for path in written:
        say(args, f"wrote {path}")
    return {**result.as_dict(), "outputs": written}
