"""Shared fixtures: headless Qt, a private data directory, and the demo built once per session.

The demo BadNet is trained once per test session at a reduced size (fewer
training digits and epochs) and shared by every test that needs a real
backdoored model; building it takes about ten seconds on two cores.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CSAW = ROOT.parent / "shared" / "fixtures" / "csaw"


@pytest.fixture(scope="session", autouse=True)
def private_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Caches and QSettings go to a temporary folder, never the user's."""
    home = tmp_path_factory.mktemp("home")
    os.environ["TROJANSCOPE_HOME"] = str(home)
    os.environ["XDG_CONFIG_HOME"] = str(home / "config")
    return home


@pytest.fixture(scope="session")
def demo_settings():
    from core.demo import DemoSettings

    return DemoSettings(seed=0, epochs=6, per_class_train=200, per_class_valid=60, per_class_test=60, scan_clean=30, scan_triggered=30)


@pytest.fixture(scope="session")
def demo_bundle(demo_settings, private_home):
    """A real (small) BadNet with its clean control and data sets, built once."""
    from core.demo import cached_demo
    from core.jobs import run_job

    return run_job(cached_demo(demo_settings))


@pytest.fixture(scope="session")
def demo_model(demo_bundle):
    from core.intake.models import load_model

    return load_model(demo_bundle.model)


@pytest.fixture(scope="session")
def clean_demo_model(demo_bundle):
    from core.intake.models import load_model

    return load_model(demo_bundle.clean_model)


@pytest.fixture(scope="session")
def demo_arrays(demo_bundle):
    """(clean_valid, clean_test, poisoned_test) as in-memory Arrays in model layout."""
    from core.intake.data import load_arrays, open_data

    shape = (28, 28, 3)
    return tuple(load_arrays(open_data(p), shape) for p in (demo_bundle.clean_valid, demo_bundle.clean_test, demo_bundle.poisoned_test))


@pytest.fixture(scope="session")
def csaw_dir() -> Path:
    if not (CSAW / "fine_pruned_sunglasses_model.h5").is_file():
        pytest.skip(f"CSAW fixtures not found at {CSAW} (they live in ../shared beside the checkout)")
    return CSAW


@pytest.fixture(scope="session")
def csaw_model(csaw_dir):
    from core.intake.models import load_model

    return load_model(csaw_dir / "fine_pruned_sunglasses_model.h5")


@pytest.fixture
def window(qtbot):
    """The main window, empty; tests load what they need."""
    from gui.main_window import MainWindow

    win = MainWindow()
    qtbot.addWidget(win)
    win.show()
    yield win
    win.runner.cancel()
    win.runner.wait(10_000)


def wait_idle(qtbot, window, timeout: int = 120_000) -> None:
    """Wait until the window's job runner has finished its current job."""
    qtbot.waitUntil(lambda: not window.runner.busy, timeout=timeout)
