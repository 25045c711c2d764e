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
