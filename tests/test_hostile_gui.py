"""The refusals of issue 12 in the GUI: a dialog naming the file and the problem, and the window lives on."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from PySide6.QtWidgets import QApplication, QMessageBox

from tests.conftest import wait_idle
from tests.hostile import npy_header, rewrite_keras_config, tiny_model, write_raw_zip, zip_member

SHOTS = Path(__file__).resolve().parent.parent / "out" / "screenshots"


def _dialog_text(window) -> list[str]:
    return [box.text() for box in window.findChildren(QMessageBox) if box.isVisible()]


def _still_responds(qtbot, window, tmp_path) -> None:
    """The window keeps answering: events are processed at once and a good file still opens."""
    started = time.monotonic()
    QApplication.processEvents()
    assert time.monotonic() - started < 1.0
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((4, 8, 8, 3), np.uint8), y=np.zeros(4))
    window.open_data("clean_test", str(good))
    wait_idle(qtbot, window, timeout=60_000)
    assert window.state.data["clean_test"].count == 4
    assert window.isVisible()


def test_architecture_bomb_shows_a_dialog_and_the_window_lives_on(qtbot, window, tmp_path):
    plain = tmp_path / "plain.keras"
    tiny_model().save(plain)
    bomb = tmp_path / "bomb.keras"

    def widen(config):
        config["config"]["layers"][-1]["config"]["units"] = 50_000_000
        return config

    rewrite_keras_config(plain, bomb, widen)
    with qtbot.waitSignal(window.error_shown, timeout=60_000) as signal:
        window.open_model(str(bomb))
    assert "bomb.keras" in signal.args[0] and "architecture declares" in signal.args[0]
    wait_idle(qtbot, window)
    assert any("architecture declares" in text for text in _dialog_text(window))
    assert window.state.loaded is None
    SHOTS.mkdir(parents=True, exist_ok=True)
    box = next(b for b in window.findChildren(QMessageBox) if b.isVisible())
    assert box.grab().save(str(SHOTS / "hostile_model_refused.png"))
    _still_responds(qtbot, window, tmp_path)


def test_hostile_data_files_show_dialogs(qtbot, window, tmp_path):
    fifo = tmp_path / "clean.h5"
    os.mkfifo(fifo)
    liar = tmp_path / "liar.npz"
    write_raw_zip(liar, [zip_member("x.npy", npy_header((10**12, 28, 28), "|u1") + bytes(784))])
    for path, problem in ((fifo, "FIFO"), (liar, "lying .npy header")):
        with qtbot.waitSignal(window.error_shown, timeout=60_000) as signal:
            window.open_data("clean_test", str(path))
        assert path.name in signal.args[0] and problem in signal.args[0]
        wait_idle(qtbot, window)
        assert any(problem in text for text in _dialog_text(window))
    assert "clean_test" not in window.state.data
    _still_responds(qtbot, window, tmp_path)
