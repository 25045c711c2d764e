"""Start the Qt application: window first, TensorFlow in the background."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
SCREENSHOT_SIZE = (1280, 720)


def run_gui(demo: bool = False, screenshot_dir: Optional[str] = None) -> int:
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from core.intake.tf_env import preload_in_background
    from gui.main_window import MainWindow

    app = QApplication.instance() or QApplication(sys.argv)
    app.setApplicationName("TrojanScope")
    app.setOrganizationName("TrojanScope")
    style = RESOURCES / "style.qss"
    if style.is_file():
        app.setStyleSheet(style.read_text())
    from PySide6.QtGui import QIcon

    app.setWindowIcon(QIcon(str(RESOURCES / "icon.svg")))
    window = MainWindow()
    if screenshot_dir:
        window.resize(*SCREENSHOT_SIZE)  # the smallest laptop screen the window must fit
    window.show()
    # Start importing TensorFlow once the event loop has painted the window: the import
    # holds the GIL for seconds and would otherwise delay the first paint (bench/bench_startup.py).
    QTimer.singleShot(0, preload_in_background)

    if screenshot_dir:
        out = Path(screenshot_dir)
        exit_code = {"value": 0}

        def after_demo() -> None:
            window.screenshot_all(out, app.quit)

        def failed(exc: BaseException) -> None:
            from gui.jobs import describe_error

            print(f"error: {describe_error(exc)}", file=sys.stderr)
            exit_code["value"] = 2
            app.quit()

        window.runner.failed.connect(failed)
        QTimer.singleShot(0, lambda: window.load_demo(then=after_demo))
        app.exec()
        return exit_code["value"]
    if demo:
        QTimer.singleShot(0, window.load_demo)
    return app.exec()
