"""File > Export report: the results published on the session registry end up in the HTML and JSON."""

from __future__ import annotations

import json

from conftest import wait_idle


def test_export_report_gathers_the_panels_results(window, qtbot, demo_bundle, demo_model, demo_arrays, tmp_path):
    from core.intake.data import open_data
    from core.jobs import run_job
    from core.repair.pruning import sweep
    from core.detect.input_level.strip import StripSettings, calibrate, scan
    from gui.state import Kind

    clean_valid, _test, poisoned = demo_arrays
    window.state.set_model(demo_model)
    scan_source = open_data(demo_bundle.scan_dir)
    window.state.set_data("scan", scan_source)
    window.state.publish(Kind.SWEEP, run_job(
        sweep(demo_model, clean_valid.x, clean_valid.y, "255", x_poisoned=poisoned.x, y_poisoned=poisoned.y)))
    profile = run_job(calibrate(demo_model, open_data(demo_bundle.clean_valid), StripSettings(n_overlays=8), scale="255"))
    result = run_job(scan(demo_model, profile, scan_source, thumbnails=False))
    window.state.publish(Kind.STRIP_PROFILE, profile)
    window.state.publish(Kind.SCAN, result, ["scan"])

    assert "&Export report…" in [a.text() for a in window.file_menu.actions()]
    out = tmp_path / "exported.html"
    assert window.export_report(str(out))
    wait_idle(qtbot, window)
    assert window.last_error is None
    record = json.loads((tmp_path / "exported.json").read_text())
    assert record["sections"]["summary"] == record["sections"]["pruning"] == record["sections"]["strip"] == "run"
    assert record["sections"]["evaluation"] == "not run"
    assert record["strip"]["scanned"] == len(result.rows)
    assert record["strip"]["flagged"] == result.flagged > 0
    assert record["sections"]["inspector"] == "run"  # heat-maps of the top flagged images
    assert out.read_text().count("data:image/png;base64,") >= 3
