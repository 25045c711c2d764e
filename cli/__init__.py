"""The command-line twin of every analysis (contract: ../shared/CLI.md).

Each command lives in its own module exposing ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> dict``; ``run`` drives the same
core generator jobs as the GUI. This module owns the conventions: one JSON
object on stdout with ``--json``, progress on stderr, exit 0 on success, 2 on
bad input (one line, no traceback), 1 on an internal error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from typing import Optional, Sequence

from core.intake.atomic import json_default
from core.errors import JobCancelled, TrojanScopeError

# Module names under cli/, in the order --help lists them.
COMMAND_MODULES = ["evaluate", "inspect", "prune", "demo", "strip", "scan", "classify", "purify", "report", "cleanse", "repair", "triage"]


def command_names() -> list[str]:
    return [_load(m).NAME for m in COMMAND_MODULES]


def _load(module: str):
    return importlib.import_module(f"cli.{module}")


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line, exit 2, like our other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="trojanscope", description="TrojanScope: find, locate and remove backdoors in image classifiers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module_name in COMMAND_MODULES:
        module = _load(module_name)
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (2) and --help (0)
        return int(exc.code or 0)
    if not getattr(args, "_module", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        result = args._module.run(args)
        if getattr(args, "json", False) and isinstance(result, dict):
            sys.stdout.write(json.dumps(result, allow_nan=False, default=json_default) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (``| head -1``): end quietly, as Unix tools do
        _silence_stdout()
        return 0
    except TrojanScopeError as exc:
        from cli.common import flags_fixing

        flags = flags_fixing(exc, args)
        print(f"error: {exc}" + (f" ({', '.join(flags)})" if flags else ""), file=sys.stderr)
        return 2
    except (JobCancelled, KeyboardInterrupt):
        print("cancelled", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 -- a bug: say so in one line, trace on request
        if os.environ.get("TROJANSCOPE_DEBUG"):
            traceback.print_exc()
        print(f"internal error ({type(exc).__name__}): {exc}; set TROJANSCOPE_DEBUG=1 for the traceback", file=sys.stderr)
        return 1
    return 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush cannot raise BrokenPipeError again."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):  # no real stdout (a windowed executable)
        pass
