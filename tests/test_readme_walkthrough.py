"""The README's command-line session runs verbatim on the demo (issue 23).

The lines between the README's ``walkthrough`` markers are run one by one, as written, from a folder that
looks like the checkout (``main.py`` and ``venv/bin/python`` a script running this interpreter), so a README
that drifts from the commands fails here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def walkthrough() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- walkthrough:start -->\s*```\n(.*?)```\s*<!-- walkthrough:end -->", text, re.S)
    assert block, "README.md lost its walkthrough markers"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_walkthrough_runs_verbatim(tmp_path, demo_settings, demo_bundle):
    lines = walkthrough()
    assert [shlex.split(line)[2] for line in lines] == ["demo", "evaluate", "cleanse", "scan", "classify", "inspect", "repair", "report"]
    (tmp_path / "main.py").symlink_to(ROOT / "main.py")
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    # a script, not a link: a link to the venv's python would leave the venv (its site-packages) behind
    python = tmp_path / "venv" / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    # the session's cache holds the small test demo under these settings: `demo` copies it instead of training for minutes
    env = {**os.environ, "TROJANSCOPE_DEMO_SETTINGS": json.dumps(demo_settings.__dict__)}
    outputs = {}
    for line in lines:
        proc = subprocess.run(shlex.split(line), cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
        assert proc.returncode == 0, f"{line}\n{proc.stderr[-2000:]}"
        outputs[shlex.split(line)[2]] = proc.stdout
    assert "attack success rate" in outputs["evaluate"]
    # the test's small demo (6 epochs, 200 images a class) is a weaker BadNet than the README's: "suspicious" at least
    verdict = r"(Backdoored \(target 7\)|Suspicious \(target 7\): .*)\. About \d+ in 100 clean models"
    assert any(re.match(verdict, line) for line in outputs["cleanse"].splitlines()), outputs["cleanse"]
    assert (tmp_path / "demo" / "triggers.npz").is_file() and (tmp_path / "demo" / "profile.npz").is_file()
    assert "class 10 = N+1" in outputs["classify"]
    assert (tmp_path / "demo" / "inspect.png").is_file() and (tmp_path / "demo" / "repaired.keras").is_file()
    assert (tmp_path / "findings.html").is_file() and (tmp_path / "findings.json").is_file()
