"""Purification in the GUI (issue 25): the STRIP table's Purified column, the Inspector's three pictures, the report's section."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import wait_idle

SHOTS = Path(__file__).resolve().parent.parent / "out" / "screenshots"


def test_a_flagged_row_shows_its_purified_class_and_the_inspector_its_three_pictures(qtbot, window, demo_settings, demo_bundle, tmp_path):
    from core.demo import TARGET, read_manifest
    from core.report import render
    from core.repair import purify
    from gui.report_export import gather_findings
    from gui.state import Kind
    from gui.strip_table import StripTableModel

    window.demo_settings = demo_settings
    window.load_demo()
    wait_idle(qtbot, window)
    panel = window.panels["StripPanel"]
    assert panel.purify_check.isChecked()  # the default
    panel.overlays_spin.setValue(16)
    panel.calibrate_button.click()
    wait_idle(qtbot, window)
    panel.scan_loaded_button.click()
    wait_idle(qtbot, window)
    manifest = {m["file"]: m for m in read_manifest(demo_bundle.manifest)}
    model = panel.model
    qtbot.waitUntil(lambda: model.rowCount() == len(manifest) and bool(model.purified), timeout=10_000)
    qtbot.waitUntil(lambda: "purified" in panel.counts.text(), timeout=5000)

    flagged = [r for r in range(model.rowCount()) if model.is_flagged(r)]
    assert set(model.purified) == set(flagged)  # every flagged row, and only those, went through purification
    header = model.headerData(StripTableModel.PURIFIED, panel.table.horizontalHeader().orientation())
    assert header == "Purified"
    triggered = [r for r in flagged if manifest[Path(model.rows[r].source).name]["triggered"]]
    assert len(triggered) >= 0.75 * sum(m["triggered"] for m in manifest.values())
    right = 0
    for r in triggered:
        p = model.purified[r]
        shown = model.data(model.index(r, StripTableModel.PURIFIED))
        tip = model.data(model.index(r, StripTableModel.PURIFIED), role=3)  # ToolTipRole
        assert tip == p.reason
        if p.purified_label is None:
            assert shown == "cannot purify → 10" and model.guarded_label(r) == 10
        else:
            assert shown.startswith(f"→ {p.purified_label} (") and model.guarded_label(r) == p.purified_label
            assert model.data(model.index(r, StripTableModel.VERDICT)) == "FLAGGED"  # its answer is the purified class, not 10
            right += p.purified_label == manifest[Path(model.rows[r].source).name]["true_label"]
    assert right >= 0.75 * len(triggered)  # the stickered digits get their own class back, not 7 and not 10
    assert sum(model.guarded_label(r) == TARGET for r in triggered) <= 1
    for r in range(model.rowCount()):
        if not model.is_flagged(r):
            assert model.data(model.index(r, StripTableModel.PURIFIED)) == "" and model.guarded_label(r) == model.rows[r].predicted
    panel.export(str(tmp_path / "scan.json"), "json")
    rows = json.loads((tmp_path / "scan.json").read_text())["results"]
    assert all(row["label"] == model.guarded_label(i) for i, row in enumerate(rows))
    assert all(("purified_label" in row) for row in rows)
    SHOTS.mkdir(parents=True, exist_ok=True)
    window.tabs.setCurrentWidget(panel)
    qtbot.wait(300)
    assert window.grab().save(str(SHOTS / "strip_panel_purified.png"))

    # a purified row goes to the Inspector: original, region cut out, purified image, and the line saying why
    row = next(r for r in triggered if model.purified[r].mask is not None)
    p = model.purified[row]
    proxy_row = panel.proxy.mapFromSource(model.index(row, 1))
    with qtbot.waitSignal(panel.send_to_inspector, timeout=2000) as signal:
        panel.table.doubleClicked.emit(proxy_row)
    assert signal.args[0]["purified"] is p
    inspector = window.panels["InspectorPanel"]
    wait_idle(qtbot, window)
    box = inspector.purification_box
    assert box.purified is p
    assert all(not box.pictures[k].pixmap().isNull() for k in ("original", "region", "purified"))
    assert f"Purified: class {p.purified_label}" in box.line.text() and p.reason in box.line.text()
    assert box.captions["region"].text() == f"Cut out: {int(p.mask.sum())} px"
    qtbot.wait(300)
    assert window.grab().save(str(SHOTS / "inspector_purified.png"))
    inspector.inspect_image(p.before, None, "an image of my own")  # not from a purified row: nothing stale stays
    wait_idle(qtbot, window)
    assert box.purified is None and box.pictures["purified"].pixmap().isNull() and box.line.text().startswith("Not purified")

    # the report gets the purification section
    published = window.state.results.value(Kind.PURIFICATION)
    assert isinstance(published, purify.PurifyResult) and len(published.purified) == len(manifest)
    page, data = render(gather_findings(window)[0])
    assert data["sections"]["purification"] == "run" and data["purification"]["flagged"] == len(flagged)
    assert data["purification"]["purified"] == sum(model.purified[r].purified_label is not None for r in flagged)
    assert 'id="purification"' in page and "original, region cut out, purified" in page


def test_purify_off_keeps_the_reject_class(qtbot, window, demo_settings):
    window.demo_settings = demo_settings
    window.load_demo()
    wait_idle(qtbot, window)
    panel = window.panels["StripPanel"]
    panel.purify_check.setChecked(False)
    panel.method_combo.setCurrentIndex(panel.method_combo.findData("strip"))
    panel.overlays_spin.setValue(8)
    panel.calibrate_button.click()
    wait_idle(qtbot, window)
    panel.scan_loaded_button.click()
    wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: panel.model.rowCount() > 0 and not panel._streaming, timeout=10_000)
    model = panel.model
    assert not model.purified and panel.purify_result is None
    assert all(model.guarded_label(r) == 10 for r in range(model.rowCount()) if model.is_flagged(r))
    assert all(model.data(model.index(r, model.PURIFIED)) == "" for r in range(model.rowCount()))
