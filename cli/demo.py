"""``demo``: write the demo BadNet, its clean control and data sets to a folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.common import add_output_arguments, drive
from core.demo import DemoSettings, export_demo

NAME = "demo"
HELP = "write the demo BadNet and its clean/poisoned data sets to a folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder to write (new or empty, or an earlier demo folder)")
    add_output_arguments(parser)


def run(args: argparse.Namespace) -> dict:
    bundle = drive(export_demo(Path(args.out), DemoSettings.from_environment()), args)
    paths = bundle.paths()
    if not args.json:
        for key, value in paths.items():
            print(f"{key}: {value}")
    info = bundle.info
    return {**paths, "target": info["target"], "metrics": info["metrics"]}
