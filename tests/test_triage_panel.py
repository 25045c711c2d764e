"""The Triage panel: a folder of models ranked by suspicion, skipped files named, a row opened in the session."""

from __future__ import annotations

import shutil

from PySide6.QtCore import Qt

from tests.conftest import wait_idle


def _folder(tmp_path, demo_bundle):
    folder = tmp_path / "batch"
    folder.mkdir()
    shutil.copy(demo_bundle.model, folder / "badnet.keras")
    shutil.copy(demo_bundle.clean_model, folder / "control.keras")
    (folder / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"not really HDF5" * 20)  # claims HDF5, is not
    return folder


def test_triage_ranks_models_lists_skipped_and_opens_a_row(qtbot, window, demo_bundle, tmp_path):
    from core.detect.model_level.triage import rank
    from core.detect.model_level.verdict import LEVEL_RANK

    folder = _folder(tmp_path, demo_bundle)
    panel = window.panels["TriagePanel"]
    window.open_data("clean_valid", str(demo_bundle.clean_valid))
    wait_idle(qtbot, window)
    panel.folder_edit.setText(str(folder))
    panel.use_cleanse.setChecked(False)  # MM-BD alone keeps the test fast; the job is core.detect.model_level.triage's either way
    panel.mmbd_steps.setValue(60)
    assert panel.run_button.isEnabled()
    qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, window, timeout=300_000)

    result = panel.result
    assert result is not None and len(result.rows) == 2
    assert panel.table.rowCount() == 2
    shown = [panel.table.item(r, 1).data(Qt.ItemDataRole.UserRole) for r in range(2)]
    assert shown == [r.source for r in rank(result.rows)]  # the table's order is the CLI's ranking
    keys = [(LEVEL_RANK[r.level], r.score) for r in result.rows]
    assert keys == sorted(keys, reverse=True)
    for r, row in enumerate(result.rows):
        assert panel.table.item(r, 3).text() == f"{row.score:.3f}"
        assert panel.table.item(r, 4).text() == (", ".join(map(str, row.targets)) or "-")
    skipped = [panel.skipped_list.item(i).text() for i in range(panel.skipped_list.count())]
    assert len(skipped) == 1 and skipped[0].startswith("broken.h5: ") and len(skipped[0]) > len("broken.h5: ") + 10

    # double-click the second row: that model opens in the session, as File > Open model would
    window.tabs.setCurrentWidget(panel)
    target = shown[1]
    rect = panel.table.visualItemRect(panel.table.item(1, 1))
    qtbot.mouseClick(panel.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.mouseDClick(panel.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.waitUntil(lambda: window.state.loaded is not None or window.last_error is not None, timeout=120_000)
    assert window.last_error is None
    assert str(window.state.loaded.summary.path) == target
    assert window.panels["VerdictPanel"].run_button.isEnabled()  # the other panels have it, with the clean data
    # and the button opens the selected row
    panel.table.selectRow(0)
    assert panel.open_button.isEnabled()
    panel.open_button.click()
    wait_idle(qtbot, window)
    assert str(window.state.loaded.summary.path) == shown[0]


def test_finished_models_are_kept_across_a_restart_and_a_rerun_judges_only_the_rest(qtbot, window, demo_bundle, tmp_path):
    """A second window (the app restarted) shows what the first judged, from the store, and Run triage recomputes nothing."""
    from gui.main_window import MainWindow

    folder = _folder(tmp_path, demo_bundle)
    panel = window.panels["TriagePanel"]
    window.open_data("clean_valid", str(demo_bundle.clean_valid))
    wait_idle(qtbot, window)
    panel.folder_edit.setText(str(folder))
    panel.use_cleanse.setChecked(False)
    panel.mmbd_steps.setValue(60)
    assert panel.run_triage()
    wait_idle(qtbot, window, timeout=300_000)
    first = panel.result
    assert first.computed == 3 and len(first.rows) == 2

    again = MainWindow()
    qtbot.addWidget(again)
    later = again.panels["TriagePanel"]
    assert later.folder_edit.text() == str(folder)  # the last run's folder, restored
    again.open_data("clean_valid", str(demo_bundle.clean_valid))
    wait_idle(qtbot, again)
    later.use_cleanse.setChecked(False)
    later.mmbd_steps.setValue(60)
    assert later.show_stored()
    wait_idle(qtbot, again)
    stored = later.result
    assert [(r.source, r.verdict, r.score) for r in stored.rows] == [(r.source, r.verdict, r.score) for r in first.rows]
    assert stored.computed == 0 and stored.complete and later.table.rowCount() == 2
    assert later.skipped_list.count() == 1

    assert later.run_triage()
    wait_idle(qtbot, again, timeout=300_000)
    assert later.result.computed == 0 and later.result.reused == 3  # nothing judged twice
    assert "from earlier runs" in later.headline.text()

    written = later.export(tmp_path / "table.csv")
    lines = written[0].read_text().splitlines()
    assert len(lines) == 1 + 3 and lines[1].split(",")[1] == first.rows[0].source
    again.runner.cancel()
    again.runner.wait(10_000)
