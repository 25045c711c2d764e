"""Start the Qt application: window first, TensorFlow in the background."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
SCREENSHOT_SIZE = (1280, 720)


NO_DISPLAY = ("error: no display to open the window on (neither DISPLAY nor WAYLAND_DISPLAY is set). "
              "Run the analyses from the command line instead (python main.py --help), or render the panels "
              "headless with QT_QPA_PLATFORM=offscreen python main.py --screenshot DIR")


def no_display() -> bool:
    """Whether Qt would abort for want of a screen: Linux/BSD with no X11 or Wayland display and no platform chosen."""
    if not sys.platform.startswith(("linux", "freebsd", "openbsd")) or os.environ.get("QT_QPA_PLATFORM"):
        return False
    return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run_gui(demo: bool = False, screenshot_dir: Optional[str] = None) -> int:
    if no_display():  # Qt would print its xcb plugin error and abort (exit 134): say it in one line instead
        print(NO_DISPLAY, file=sys.stderr)
        return 2
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
