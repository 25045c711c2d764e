"""The main window: one tab per analysis, one shared job controller with progress and Cancel.

Panels are listed in ``PANELS`` and imported lazily; each is a QWidget built
as ``Panel(window)`` that reads ``window.state`` and starts jobs through
``window.start_job``. A panel may define ``run_default(done)`` (used by
``--screenshot``): start its default analysis on the loaded data and call
``done()`` when it has finished or failed.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QTabWidget,
    QWidget,
)

from core.jobs import Progress
from gui.state import ROLES, AppState
from gui.jobs import JobController, describe_error
from gui.live_curve import LiveCurves

# (module, class) of each tab, in order.
PANELS: list[tuple[str, str]] = [
    ("gui.model_panel", "ModelPanel"),
    ("gui.prune_panel", "PrunePanel"),
    ("gui.strip_panel", "StripPanel"),
    ("gui.inspector_panel", "InspectorPanel"),
    ("gui.verdict_panel", "VerdictPanel"),
    ("gui.triage_panel", "TriagePanel"),
]

MODEL_FILTER = "Keras models (*.keras *.h5 *.hdf5);;All files (*)"
DATA_FILTER = "Data (*.h5 *.hdf5 *.npz);;All files (*)"
MAX_RECENT = 8


class MainWindow(QMainWindow):
    error_shown = Signal(str)
    error_raised = Signal(object)  # the exception behind the dialog, for code that needs its type

    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("TrojanScope")
        self.resize(1280, 800)  # fits 1,280 x 720 screens too: nothing needs more (tests/test_workflow.py)
        self.setAcceptDrops(True)
        self.state = AppState()
        self.jobs = JobController(self)
        self.runner = self.jobs  # the name the tests and older code use
        self.settings = QSettings("TrojanScope", "TrojanScope")
        self.last_error: Optional[str] = None
        self.demo_settings: Any = None  # core.demo.DemoSettings; None = the standard demo

        self.tabs = QTabWidget()
        self.setCentralWidget(self.tabs)
        self.panels: dict[str, QWidget] = {}
        for module_name, class_name in PANELS:
            panel_cls = getattr(importlib.import_module(module_name), class_name)
            panel = panel_cls(self)
            self.panels[class_name] = panel
            self.tabs.addTab(panel, getattr(panel, "TITLE", class_name))

        self._connect_panels()
        self._build_status_bar()
        self._build_menus()
        self.runner.event.connect(self._on_event)
        self.runner.started.connect(self._on_started)
        self.runner.idle.connect(self._on_idle)
        self.runner.done.connect(self._on_done)
        self._started_text = ""
        self.runner.failed.connect(self.show_error)
        self.runner.cancelled.connect(lambda: self.status.setText("Cancelled; nothing was changed"))
        self._notice = ""
        self.state.results_stale.connect(self._show_notice)

    def _show_notice(self, line: str) -> None:
        """What a new model or data set cleared or marked stale: said, never silent."""
        self._notice = line
        self.status.setText(line)

    def _connect_panels(self) -> None:
        """Hand-offs between panels: STRIP's flagged rows go to the Inspector."""
        strip, inspector = self.panels.get("StripPanel"), self.panels.get("InspectorPanel")
        if strip is not None and inspector is not None:
            strip.send_to_inspector.connect(inspector.inspect_image)

    # ---------------------------------------------------------------- jobs

    def start_job(
        self,
        name: str,
        factory: Callable[[], Any],
        on_result: Optional[Callable[[Any], None]] = None,
        on_event: Optional[Callable[[Any], None]] = None,
        on_error: Optional[Callable[[BaseException], None]] = None,
        on_cancel: Optional[Callable[[], None]] = None,
        on_end: Optional[Callable[[str], None]] = None,
        live: Any = (),
    ) -> bool:
        """Run a core job on the worker thread; refuse politely while another runs.

        Exactly one of ``on_result(result)``, ``on_cancel()`` or ``on_error(exception)``
        runs when it ends, then ``on_end(outcome)``; ``live`` curves redraw meanwhile
        and stop on every ending (gui/jobs.py). Errors also get the window's dialog.
        """
        if isinstance(live, LiveCurves):
            live = (live,)
        if not self.runner.start(name, factory, on_result=on_result, on_event=on_event, on_error=on_error,
                                 on_cancel=on_cancel, on_end=on_end, live=live):
            self.status.setText(f"Busy with {self.runner.name}: wait or press Cancel")
            return False
        return True

    def after_idle(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the runner is free (jobs that chain other jobs)."""
        if not self.runner.busy:
            QTimer.singleShot(0, callback)
            return

        def once() -> None:
            self.runner.idle.disconnect(once)
            QTimer.singleShot(0, callback)

        self.runner.idle.connect(once)

    def _build_status_bar(self) -> None:
        bar = QWidget()
        layout = QHBoxLayout(bar)
        layout.setContentsMargins(6, 0, 6, 0)
        self.status = QLabel("Open a model and data, or load the demo (File > Load demo)")
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(320)
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setVisible(False)  # shown only while a job runs: an idle bar at 0% reads as "nothing happened"
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.runner.cancel)
        layout.addWidget(self.status, 1)
        layout.addWidget(self.progress)
        layout.addWidget(self.cancel_button)
        self.statusBar().addPermanentWidget(bar, 1)

    def _on_started(self, name: str) -> None:
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self._started_text = f"{name}…"
        self.status.setText(self._started_text)

    def _on_event(self, event: Any) -> None:
        if isinstance(event, Progress):
            if event.fraction is None:
                self.progress.setRange(0, 0)
            else:
                self.progress.setRange(0, 1000)
                self.progress.setValue(int(event.fraction * 1000))
            if event.message:
                self.status.setText(event.message)

    def _on_done(self, _result: Any) -> None:
        """A job that said nothing when it finished must not leave "Reading…" in the status bar."""
        if self.status.text() == self._started_text or self.status.text().startswith(("Reading", "Opening", "Choosing")):
            self.status.setText(f"{self.runner.name or 'Job'}: done")

    def _on_idle(self) -> None:
        """No job: no progress bar (the status line says how the last one ended)."""
        self.cancel_button.setEnabled(False)
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self.progress.setVisible(False)

    def show_error(self, error: "str | BaseException") -> None:
        """One line the analyst can act on, in a dialog that never blocks the window."""
        if isinstance(error, BaseException):
            self.error_raised.emit(error)
        message = error if isinstance(error, str) else describe_error(error)
        self.last_error = message
        self.status.setText(message)
        self.error_shown.emit(message)
        box = QMessageBox(QMessageBox.Icon.Warning, "TrojanScope", message, QMessageBox.StandardButton.Ok, self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()

    # --------------------------------------------------------------- menus

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        open_model = QAction("Open &model…", self, shortcut=QKeySequence.StandardKey.Open)
        open_model.triggered.connect(self.choose_model)
        file_menu.addAction(open_model)
        for role, label in ROLES.items():
            if role == "scan":
                continue
            action = QAction(f"Open {label.lower()}…", self)
            action.triggered.connect(lambda _=False, r=role: self.choose_data(r))
            file_menu.addAction(action)
        self.recent_menu = file_menu.addMenu("Open &recent")
        self._refresh_recent()
        file_menu.addSeparator()
        demo = QAction("Load &demo BadNet", self)
        demo.triggered.connect(self.load_demo)
        file_menu.addAction(demo)
        export_report = QAction("&Export report…", self)
        export_report.triggered.connect(lambda: self.export_report())
        file_menu.addAction(export_report)
        file_menu.addSeparator()
        quit_action = QAction("&Quit", self, shortcut=QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        file_menu.addAction(quit_action)
        self.file_menu = file_menu

    def export_report(self, path: Optional[str] = None) -> bool:
        """File > Export report…: HTML + JSON findings from every panel's last results (gui/report_export.py)."""
        from gui.report_export import export_report

        return export_report(self, path)

    def choose_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a suspicious model", self._last_dir(), MODEL_FILTER)
        if path:
            self.open_model(path)

    def choose_data(self, role: str) -> None:
        dialog = QFileDialog(self, f"Open {ROLES[role].lower()} (a file, or cancel and pick a folder)", self._last_dir(), DATA_FILTER)
        dialog.setFileMode(QFileDialog.FileMode.ExistingFile)
        if dialog.exec():
            self.open_data(role, dialog.selectedFiles()[0])
            return
        folder = QFileDialog.getExistingDirectory(self, f"Or choose a folder of images for {ROLES[role].lower()}", self._last_dir())
        if folder:
            self.open_data(role, folder)

    # ------------------------------------------------------------- loading

    def open_model(self, path: str, arch: Optional[str] = None) -> None:
        from core.intake.models import load_model_job

        def loaded(result: Any) -> None:
            self._notice = ""
            self.state.set_model(result)
            self._remember("model", path)
            self.status.setText(f"Model: {result.summary.describe()}" + (f". {self._notice}" if self._notice else ""))

        def failed(exc: BaseException) -> None:
            from core.errors import WeightsOnlyError

            if isinstance(exc, WeightsOnlyError) and arch is None:
                self._ask_architecture(path)

        self.start_job(f"Loading {Path(path).name}", lambda: load_model_job(path, arch), loaded, on_error=failed)

    def _ask_architecture(self, weights: str) -> None:
        arch, _ = QFileDialog.getOpenFileName(
            self, "That file holds weights only: choose a model file with the architecture", self._last_dir(), MODEL_FILTER
        )
        if arch:
            self.open_model(weights, arch)

    def open_data(self, role: str, path: str) -> None:
        from core.intake.data import open_data

        loaded, conversion = self.state.loaded, self.state.conversion

        def job():
            yield Progress(None, f"Opening {path}")
            source = open_data(path).allow(conversion)
            if loaded is not None:  # data that does not fit the model is refused here, with both shapes named
                from core.intake.fit import check_fit

                yield Progress(None, f"Checking {Path(path).name} against the model")
                check_fit(loaded, source, ROLES[role].lower())
            return source

        def opened(source: Any) -> None:
            self.state.set_data(role, source)
            self._remember(role, path)
            self.status.setText(f"{ROLES[role]}: {source.describe()}")

        def refused(exc: BaseException) -> None:
            self.state.data_refused.emit(role, str(exc))

        self.start_job(f"Opening {Path(path).name}", job, opened, on_error=refused)

    def load_demo(self, then: Optional[Callable[[], None]] = None) -> None:
        from core.demo import open_demo

        def loaded(session: Any) -> None:
            self.state.scale = "255"
            self.state.target = None
            self.state.set_model(session.loaded)
            for role, source in (
                ("clean_valid", session.clean_valid),
                ("clean_test", session.clean_test),
                ("poisoned", session.poisoned),
                ("scan", session.scan),
            ):
                self.state.set_data(role, source)
            self.status.setText(f"Demo BadNet loaded from {session.bundle.root}")
            if then:
                self.after_idle(then)

        settings = self.demo_settings
        self.start_job("Preparing the demo BadNet", lambda: open_demo(settings) if settings else open_demo(), loaded)

    # -------------------------------------------------------- drag and drop

    def dragEnterEvent(self, event: Any) -> None:  # noqa: N802 (Qt API)
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: Any) -> None:  # noqa: N802
        for url in event.mimeData().urls():
            path = url.toLocalFile()
            if not path:
                continue
            if Path(path).suffix.lower() in (".keras", ".h5", ".hdf5") and _looks_like_model(path):
                self.open_model(path)
            else:
                self.open_data("clean_test" if "clean_test" not in self.state.data else "poisoned", path)
            break

    # --------------------------------------------------------------- recent

    def _remember(self, role: str, path: str) -> None:
        recent = [r for r in self._recent() if r != [role, path]]
        recent.insert(0, [role, path])
        self.settings.setValue("recent", recent[:MAX_RECENT])
        self.settings.setValue("last_dir", str(Path(path).parent))
        self._refresh_recent()

    def _recent(self) -> list[list[str]]:
        value = self.settings.value("recent", [])
        if not isinstance(value, list):
            return []
        return [list(v) for v in value if isinstance(v, (list, tuple)) and len(v) == 2]

    def _refresh_recent(self) -> None:
        self.recent_menu.clear()
        for role, path in self._recent():
            label = "Model" if role == "model" else ROLES.get(role, role)
            action = QAction(f"{label}: {path}", self)
            if role == "model":
                action.triggered.connect(lambda _=False, p=path: self.open_model(p))
            else:
                action.triggered.connect(lambda _=False, r=role, p=path: self.open_data(r, p))
            self.recent_menu.addAction(action)
        self.recent_menu.setEnabled(bool(self._recent()))

    def _last_dir(self) -> str:
        return str(self.settings.value("last_dir", str(Path.home())))

    # ---------------------------------------------------------- screenshots

    def screenshot_all(self, out_dir: Path, then: Callable[[], None]) -> None:
        """Run each panel's default job on the loaded data and save one PNG per panel."""
        out_dir.mkdir(parents=True, exist_ok=True)
        queue = list(self.panels.items())

        def next_panel() -> None:
            if not queue:
                then()
                return
            key, panel = queue.pop(0)
            self.tabs.setCurrentWidget(panel)

            def save() -> None:
                path = out_dir / f"{_snake(key)}.png"
                saved = self.grab().save(str(path))
                print(f"wrote {path}" if saved else f"error: could not write {path}", file=sys.stderr, flush=True)
                QTimer.singleShot(0, next_panel)

            runner = getattr(panel, "run_default", None)
            if runner is None:
                QTimer.singleShot(200, save)
            else:
                runner(lambda: QTimer.singleShot(400, save))

        next_panel()

    def closeEvent(self, event: Any) -> None:  # noqa: N802
        self.runner.cancel()
        self.runner.wait(5000)
        super().closeEvent(event)


def _snake(name: str) -> str:
    out = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    return out


def _looks_like_model(path: str) -> bool:
    """A cheap sniff for drag-and-drop routing; the real checks happen on load."""
    if path.lower().endswith(".keras"):
        return True
    try:
        import h5py

        with h5py.File(path, "r") as h5:
            return "model_config" in h5.attrs or "layer_names" in h5.attrs
    except (OSError, ValueError):
        return False
