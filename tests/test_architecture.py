"""The design card, checked by machine: Qt-free engine, layered shells, lint-clean, lazy TensorFlow.

The linters run through ``sys.executable`` (never a script looked up on PATH), so
the suite passes when started as ``venv/bin/python -m pytest`` without activating
the venv.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# import-linter has no ``python -m`` entry point; this is what its ``lint-imports`` script runs.
LINT_IMPORTS = (
    "import sys; from importlinter.cli import lint_imports; "
    "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))"
)


def test_import_contracts_hold():
    """.importlinter: core is Qt-free; gui and cli sit above core and never import each other."""
    proc = subprocess.run([sys.executable, "-c", LINT_IMPORTS, str(ROOT / ".importlinter")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kept = re.search(r"Contracts: (\d+) kept, 0 broken", proc.stdout)
    assert kept and int(kept.group(1)) >= 3, proc.stdout  # the two forbidden contracts and the layers one


def test_ruff_finds_nothing():
    """ruff.toml: the rules every ``noqa`` in the tree names, and RUF100 for a noqa that suppresses nothing."""
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_window_appears_without_importing_tensorflow():
    script = (
        "import sys; sys.path.insert(0, %r)\n"
        "from PySide6.QtWidgets import QApplication\n"
        "app = QApplication([])\n"
        "from gui.main_window import MainWindow\n"
        "w = MainWindow(); w.show(); app.processEvents()\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n" % str(ROOT)
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-2:] == ["False", "False"]


def test_qt_bindings_do_not_leak_references_to_none(qapp):
    """PySide6 6.12.0 under Python 3.11 drops a reference to None on every void call;
    live curves then crash the app within seconds ("none_dealloc"). Pinned away from it."""
    from PySide6.QtCore import QPointF
    from PySide6.QtGui import QTransform

    transform = QTransform()
    before = sys.getrefcount(None)
    for _ in range(2000):
        transform.setMatrix(1, 0, 0, 0, 1, 0, 0, 0, 1)
        QPointF().setX(1.0)
    assert sys.getrefcount(None) - before > -100


ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"


def _resolves(dotted: str) -> bool:
    """Whether ``core.a.b.name`` is a module, or attributes of the longest importable module prefix."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_architecture_doc_names_only_paths_that_exist():
    """docs/ARCHITECTURE.md is redrawn from the tree: every folder, file and ``core.x.y`` it names exists."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    paths = set(re.findall(r"\b(?:core|gui|cli|tests|bench|docs|resources|scripts)/[\w/.-]*[\w/]", text))
    paths = {p for p in paths if not re.search(r"/[A-Z_]+\.", p)}  # placeholders such as cli/NAME.py
    missing = [p for p in sorted(paths) if not (ROOT / p).exists()]
    assert not missing, f"ARCHITECTURE.md names paths that do not exist: {missing}"
    dotted = set(re.findall(r"\b(core(?:\.\w+)+)", text))
    unresolved = [name for name in sorted(dotted) if not _resolves(name)]
    assert not unresolved, f"ARCHITECTURE.md names engine objects that do not exist: {unresolved}"


def test_architecture_doc_names_every_engine_module():
    """A newcomer finds every module of core/ from the doc: each file's name appears in it."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    unnamed = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "core").rglob("*.py"))
               if p.name != "__init__.py" and p.name not in text]
    assert not unnamed, f"modules of core/ that docs/ARCHITECTURE.md does not name: {unnamed}"
