"""Core error messages speak the analyst's terms; the CLI adds the flag that fixes them.

The same message reaches the GUI, where a "--target" would mean nothing, so the
engine names the setting (``fixed_by``) and ``cli`` turns it into its flag.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAG = re.compile(r"(?:^|[\s(\[`'\"])--[a-z]")


def _raised_strings(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for part in ast.walk(node.exc):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    found.append((part.lineno, part.value))
    return found


def test_no_core_error_message_names_a_command_line_flag():
    offenders = []
    for path in sorted((ROOT / "core").glob("*.py")):
        for line, text in _raised_strings(ast.parse(path.read_text(encoding="utf-8"))):
            if FLAG.search(text):
                offenders.append(f"{path.name}:{line}: {text!r}")
    assert offenders == []


def test_the_checker_sees_a_flag_in_a_raise():
    tree = ast.parse('def f(x):\n    raise ValueError(f"{x} has no labels: give --target")\n')
    assert [t for _, t in _raised_strings(tree) if FLAG.search(t)] == [" has no labels: give --target"]


def test_cli_adds_the_flag_of_the_setting_that_fixes_the_error(capsys, demo_bundle):
    import cli

    code = cli.main(["prune", "--model", str(demo_bundle.model), "--clean", str(demo_bundle.clean_valid),
                     "--out", str(demo_bundle.model), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == f"error: refusing to write over the input file {demo_bundle.model}: choose another output path (--out)"


def test_cli_shows_only_flags_the_command_has():
    import argparse

    from cli.common import flags_fixing
    from core.errors import TrojanScopeError

    exc = TrojanScopeError("no trigger to unlearn", fixed_by=("method", "classes"))
    repair_args = argparse.Namespace(method="unlearn", target_class=None, out="x.keras")
    assert flags_fixing(exc, repair_args) == ["--method", "--target-class"]
    assert flags_fixing(TrojanScopeError("over the input", fixed_by=("output",)), argparse.Namespace(save_profile="p.npz")) == ["--save-profile"]
    assert flags_fixing(exc, argparse.Namespace(out="x")) == []
