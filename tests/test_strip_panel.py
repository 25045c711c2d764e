"""The STRIP panel as an analyst clicks it: calibrate, drag the threshold, scan, filter, export, open."""

from __future__ import annotations

import csv
import html
import json
import threading
import time
import types
from pathlib import Path

import numpy as np

from core.detect.input_level import scanner
from core.detect.input_level import strip
from core.jobs import Progress
from tests.conftest import wait_idle

SHOTS = Path(__file__).resolve().parent.parent / "out" / "screenshots"


def test_calibrate_scan_drag_filter_export_and_open(qtbot, window, demo_settings, demo_bundle, tmp_path):
    from core.demo import read_manifest

    window.demo_settings = demo_settings
    window.load_demo()
    wait_idle(qtbot, window)
    panel = window.panels["StripPanel"]
    panel.overlays_spin.setValue(16)
    assert panel.method_combo.currentData() == "combined"  # the default: STRIP + feature space + SCALE-UP
    assert panel.calibrate_button.isEnabled() and not panel.scan_loaded_button.isEnabled()
    panel.method_combo.setCurrentIndex(panel.method_combo.findData("strip"))
    assert panel.frr_spin.value() == 1.0  # an untouched FRR follows the method: 1% per detector
    panel.method_combo.setCurrentIndex(panel.method_combo.findData("combined"))
    panel.calibrate_button.click()
    wait_idle(qtbot, window)
    assert panel.profile is not None and panel.line.isVisible()
    assert list(panel.scan_profile.detectors) == ["strip", "features", "scaleup"]
    assert panel.frr_spin.value() == 3.0  # 1% per detector
    est = panel.scan_profile.frr_estimate()
    assert "Expected false rejection here" in panel.info.text() and f"95% interval {est.low:.2%}–{est.high:.2%}" in panel.info.text()
    # one claim, one source: the rate is for images calibration never saw, estimated from the calibration images
    assert ("on clean images calibration never saw (95% interval" in panel.info.text()
            and f"estimated from the {est.flagged_in_calibration} of {est.n} clean calibration images these thresholds flag"
            in panel.info.text())

    panel.scan_loaded_button.click()
    wait_idle(qtbot, window)
    manifest = read_manifest(demo_bundle.manifest)
    qtbot.waitUntil(lambda: panel.model.rowCount() == len(manifest), timeout=5000)
    triggered = {m["file"] for m in manifest if m["triggered"]}
    flagged = {Path(r.source).name for i, r in enumerate(panel.model.rows) if panel.model.is_flagged(i)}
    assert len(flagged & triggered) >= 0.75 * len(triggered)  # small test BadNet, 16 overlays
    assert len(flagged - triggered) <= 0.1 * (len(manifest) - len(triggered))
    assert window.status.text() == (f"Combined scan of the folder {Path(demo_bundle.scan_dir).name}/: {len(manifest)} scanned, "
                                    f"{len(flagged)} flagged, 0 skipped")
    SHOTS.mkdir(parents=True, exist_ok=True)
    window.tabs.setCurrentWidget(panel)
    qtbot.wait(300)
    assert window.grab().save(str(SHOTS / "strip_panel_after_scan.png"))

    # Dragging the line (here: moving it) updates verdicts, counts and the expected FRR live.
    panel.line.setValue(10.0)
    qtbot.waitUntil(lambda: f"{len(manifest)} flagged" in panel.counts.text(), timeout=2000)
    assert "Expected false rejection here: 99." in panel.info.text()  # every clean calibration image below the line
    panel.reset_threshold()
    panel.only_flagged.setChecked(True)
    assert panel.proxy.rowCount() == int(panel.model.flagged_mask().sum()) == len(flagged)

    panel.export(str(tmp_path / "scan.csv"), "csv")
    panel.export(str(tmp_path / "scan.json"), "json")
    with open(tmp_path / "scan.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(manifest)
    data = json.loads((tmp_path / "scan.json").read_text())
    assert data["flagged"] == len(flagged) and data["scanned"] == len(manifest)
    assert all((r["label"] == 10) == (r["flagged"] and r["purified_label"] is None) for r in data["results"])  # purified by default

    with qtbot.waitSignal(panel.send_to_inspector, timeout=2000) as signal:
        panel.table.doubleClicked.emit(panel.proxy.index(0, 1))  # a flagged row: straight to the Inspector
    assert signal.args[0]["image"].shape == (28, 28, 3) and signal.args[0]["flagged"]
    inspector = window.panels["InspectorPanel"]
    assert window.tabs.currentWidget() is inspector
    wait_idle(qtbot, window)
    assert inspector.inspection is not None and inspector.inspection.source == signal.args[0]["source"]
    panel.show_row(panel.proxy.mapToSource(panel.proxy.index(0, 1)).row())
    assert panel.image_dialog.isVisible()
    panel.image_dialog.close()

    saved = []
    assert panel.save_profile(str(tmp_path / "p.npz"), then=saved.append)  # on the worker thread
    wait_idle(qtbot, window)
    back = scanner.load_profile(saved[0])
    assert back.method == "combined" and back.first.threshold == panel.threshold


def test_the_scan_title_says_what_ran_on_which_folder_or_file(tmp_path):
    from gui.strip_panel import scan_title

    folder = tmp_path / "scan"
    folder.mkdir()
    assert scan_title("combined", str(folder)) == "Combined scan of the folder scan/"
    assert scan_title("strip", str(tmp_path / "poisoned_test.h5")) == "STRIP scan of poisoned_test.h5"
    assert scan_title("features", str(tmp_path / "x.npz")) == "Feature space scan of x.npz"


def test_strip_only_method_calibrates_a_strip_profile(qtbot, window, demo_settings):
    window.demo_settings = demo_settings
    window.load_demo()
    wait_idle(qtbot, window)
    panel = window.panels["StripPanel"]
    panel.overlays_spin.setValue(8)
    panel.method_combo.setCurrentIndex(panel.method_combo.findData("strip"))
    panel.calibrate_button.click()
    wait_idle(qtbot, window)
    assert isinstance(panel.profile, strip.StripProfile) and panel.scan_profile.method == "strip"
    assert panel.model.HEADERS[2] == "Entropy"


def _fake_profile() -> strip.StripProfile:
    rng = np.random.default_rng(0)
    return strip.StripProfile(
        overlays=np.zeros((4, 28, 28, 3), np.float32), weights=strip.BlendWeights(), scale="255", pixel_max=255.0,
        threshold=0.2, frr=0.01, fit_mean=0.6, fit_std=0.17, empirical_threshold=0.21,
        clean_entropies=rng.normal(0.6, 0.17, 900), model_sha256="0" * 64, num_classes=10, input_shape=(28, 28, 3), seed=0,
    )


def _fake_scan(total: int, chunk: int, pause: float, halfway: "threading.Event | None" = None):
    """A scan that streams rows; with ``halfway`` it waits there until the test has looked."""

    def scan(loaded, profile, source, *args, **kwargs):
        rng = np.random.default_rng(1)
        thumbs = np.zeros((chunk, 28, 28, 3), np.uint8)
        done = 0
        while done < total:
            rows = tuple(
                strip.StripRow(f"/data/img_{done + i:05d}.png", done + i, float(e), bool(e < profile.threshold), 0, 3, 0.9)
                for i, e in enumerate(rng.uniform(0, 1.2, chunk))
            )
            done += chunk
            time.sleep(pause)
            if halfway is not None and done == total // 2:
                halfway.wait(30)
            yield strip.ScanRows(rows, thumbs, (), done, total)
            yield Progress(done / total, f"{done}/{total}")
        return strip.ScanResult(profile, [], [], [], "/data")
    return scan


def _fake_loaded(window, monkeypatch, scan):
    window.state.loaded = types.SimpleNamespace(input_shape=(28, 28, 3), num_classes=10, summary=types.SimpleNamespace(sha256="0" * 64))
    window.state.data["scan"] = types.SimpleNamespace(path=Path("/data"))
    monkeypatch.setattr(strip, "scan", scan)
    panel = window.panels["StripPanel"]
    panel.purify_check.setChecked(False)  # the streaming of STRIP's rows is measured here (purification: tests/test_purify_gui.py)
    panel.set_profile(_fake_profile())
    return panel


def test_five_thousand_rows_stream_in_without_freezing_the_window(qtbot, window, monkeypatch):
    """Rows reach the table in timed chunks; each chunk costs the GUI thread little CPU.

    CPU time of the GUI thread (``thread_time``), not wall time, so a busy
    shared machine does not make the test flaky.
    """
    import gc

    gc.collect()  # the earlier tests' garbage (TensorFlow graphs) must not be collected inside a timed flush
    halfway = threading.Event()
    panel = _fake_loaded(window, monkeypatch, _fake_scan(5000, 100, 0.01, halfway))
    costs = []
    flush = panel._flush

    def timed_flush():
        started = time.thread_time()
        flush()
        costs.append(time.thread_time() - started)

    monkeypatch.setattr(panel, "_flush", timed_flush)
    panel.flush_timer.timeout.disconnect()
    panel.flush_timer.timeout.connect(timed_flush)
    assert panel.scan()
    qtbot.waitUntil(lambda: panel.model.rowCount() > 0, timeout=10_000)
    assert panel.model.rowCount() < 5000  # rows show while the scan still runs
    halfway.set()
    wait_idle(qtbot, window, timeout=60_000)
    qtbot.waitUntil(lambda: panel.model.rowCount() == 5000, timeout=5000)
    assert len(costs) > 3 and max(costs) < 0.3, f"a table update took {max(costs):.2f} s of GUI-thread CPU"
    assert "5000 scanned" in panel.counts.text()


def test_cancel_mid_scan_keeps_the_rows_so_far(qtbot, window, monkeypatch):
    panel = _fake_loaded(window, monkeypatch, _fake_scan(5000, 50, 0.05))
    assert panel.scan()
    qtbot.waitUntil(lambda: panel.model.rowCount() >= 100, timeout=10_000)
    window.cancel_button.click()
    wait_idle(qtbot, window, timeout=5000)
    n = panel.model.rowCount()
    assert 100 <= n < 5000
    assert "Cancelled" in window.status.text()
    assert not panel.flush_timer.isActive()


def test_the_verdict_panels_target_adds_the_targeted_detectors_to_combined(qtbot, window, demo_settings, demo_bundle):
    """The seam Verdict -> STRIP: once the session names a target, Combined masks its reversed trigger, watches its
    feature space and asks a clean reference model (6 detectors, 1% each)."""
    from core.detect.model_level.cleanse import CleanseSettings, cleanse
    from core.intake.data import load_arrays, open_data
    from core.demo import read_manifest
    from core.jobs import run_job
    from core.detect.model_level.verdict import combine, from_attack_success
    from gui.state import Kind

    window.demo_settings = demo_settings
    window.load_demo()
    wait_idle(qtbot, window)
    panel = window.panels["StripPanel"]
    assert "need a target" in panel.triggers_note.text() and panel.frr_spin.value() == 3.0
    panel.method_combo.setCurrentIndex(panel.method_combo.findData("masking"))
    assert not panel.calibrate() and "Verdict panel" in window.last_error  # nothing to mask yet
    panel.method_combo.setCurrentIndex(panel.method_combo.findData("combined"))

    loaded = window.state.loaded
    clean = load_arrays(open_data(demo_bundle.clean_valid), loaded.input_shape, limit=300)
    found = run_job(cleanse(loaded, clean, "255", CleanseSettings(max_rounds=30, seed=0, label_specific=False), classes=[7]))
    window.state.publish(Kind.CLEANSE, found, ["clean_valid"])
    window.state.publish(Kind.VERDICT, combine([from_attack_success(0.99, 200, 10, target=7)]), ["poisoned"])
    assert "class 7" in panel.triggers_note.text() and panel.frr_spin.value() == 6.0  # the untouched default follows

    panel.overlays_spin.setValue(16)
    panel.calibrate_button.click()
    wait_idle(qtbot, window)
    assert list(panel.scan_profile.detectors) == ["strip", "features", "scaleup", "masking", "target_features", "reference"]
    assert panel.scan_profile.detectors["masking"].classes == (7,) == panel.scan_profile.detectors["reference"].classes
    panel.scan_loaded_button.click()
    wait_idle(qtbot, window)
    manifest = read_manifest(demo_bundle.manifest)
    qtbot.waitUntil(lambda: panel.model.rowCount() == len(manifest), timeout=5000)
    triggered = {m["file"] for m in manifest if m["triggered"]}
    by_masking = {Path(r.source).name for r in panel.model.rows if "masking" in r.flagged_by}
    assert len(by_masking & triggered) >= 0.75 * len(triggered) and len(by_masking - triggered) <= 2
    by_reference = {Path(r.source).name for r in panel.model.rows if "reference" in r.flagged_by}
    assert len(by_reference & triggered) >= 0.5 * len(triggered) and len(by_reference - triggered) <= 2
    # the report's scan section names every detector's threshold and count, not STRIP's alone
    qtbot.waitUntil(lambda: window.state.results.value(Kind.SCAN) is not None, timeout=5000)
    published = window.state.results.value(Kind.SCAN)
    line = published.detectors
    assert line.startswith("an image is flagged when any of 6 detectors")
    assert f"clean reference model above {panel.scan_profile.detectors['reference'].threshold:.4g}: {len(by_reference)} flagged" in line
    assert f"reversed-trigger masking above {panel.scan_profile.detectors['masking'].threshold:.4g}: {len(by_masking)} flagged" in line
    from core.report import render
    from gui.report_export import gather_findings

    page, data = render(gather_findings(window)[0])
    assert f"<th>Detectors</th><td>{html.escape(line)}</td>" in page and line in json.dumps(data, ensure_ascii=False)
    SHOTS.mkdir(parents=True, exist_ok=True)
    window.tabs.setCurrentWidget(panel)
    qtbot.wait(300)
    assert window.grab().save(str(SHOTS / "strip_panel_masking.png"))

    panel.method_combo.setCurrentIndex(panel.method_combo.findData("masking"))
    assert panel.frr_spin.value() == 1.0  # one detector
    panel.calibrate_button.click()
    wait_idle(qtbot, window)
    assert list(panel.scan_profile.detectors) == ["masking"] and panel.model.HEADERS[2] == "Mask drop"

    panel.method_combo.setCurrentIndex(panel.method_combo.findData("reference"))
    panel.calibrate_button.click()
    wait_idle(qtbot, window)
    assert list(panel.scan_profile.detectors) == ["reference"] and panel.model.HEADERS[2] == "Disbelief x certainty"
    assert panel.scan_profile.detectors["reference"].architecture == "twin"
    panel.scan_loaded_button.click()
    wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: panel.model.rowCount() == len(manifest), timeout=5000)
    flagged = {Path(r.source).name for r in panel.model.rows if r.flagged_by}
    assert len(flagged & triggered) >= 0.5 * len(triggered) and len(flagged - triggered) <= 2
    qtbot.wait(300)
    assert window.grab().save(str(SHOTS / "strip_panel_reference.png"))
