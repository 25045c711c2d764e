"""TrojanScope entry point: the GUI by default, CLI subcommands otherwise.

    python main.py                 open the GUI
    python main.py --demo          open the GUI with the demo BadNet loaded
    python main.py --screenshot D  render every panel on the demo to PNGs in D, then exit
    python main.py --self-test     run every engine once on a tiny demo, headless; exit 0 when all is sane
    python main.py COMMAND ...     run an analysis from the command line (see --help)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    import cli

    if argv and not argv[0].startswith("-"):
        return cli.main(argv)
    # Naming the commands imports every CLI module (NumPy, h5py...): only --help needs them,
    # and the GUI's start-up budget is 2 s (bench/bench_startup.py).
    wants_help = any(a in ("-h", "--help") for a in argv)
    commands = ", ".join(cli.command_names()) if wants_help else "see --help"
    parser = argparse.ArgumentParser(
        prog="trojanscope",
        description="TrojanScope: find, locate and remove backdoors in image classifiers. "
        "Without a command it opens the GUI. Commands: " + commands,
    )
    parser.add_argument("--demo", action="store_true", help="open with the demo BadNet and its data loaded")
    parser.add_argument("--screenshot", metavar="DIR", help="render each panel on the demo to DIR/*.png and exit")
    parser.add_argument("--self-test", action="store_true",
                        help="headless: train a tiny demo and run every analysis once; exit 0 when every result is sane")
    args = parser.parse_args(argv)
    if args.self_test:  # no Qt: it must work on a machine without a display (and in the frozen app)
        from core.selftest import main as self_test

        return self_test()
    from gui.app import run_gui

    return run_gui(demo=args.demo or bool(args.screenshot), screenshot_dir=args.screenshot)


if __name__ == "__main__":
    import multiprocessing

    multiprocessing.freeze_support()  # the frozen app's file pre-scan child (core/intake/isolation.py) starts here
    sys.exit(main())
