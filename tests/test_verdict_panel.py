"""The Verdict panel as an analyst clicks it: run Neural Cleanse, see the verdict, cancel, repair."""

from __future__ import annotations

import json
import re
from pathlib import Path

from PySide6.QtCore import Qt

from tests.conftest import wait_idle

SHOTS = Path(__file__).resolve().parent.parent / "out" / "screenshots"


def _load_demo(qtbot, window, demo_settings):
    window.demo_settings = demo_settings
    window.load_demo()
    wait_idle(qtbot, window)
    return window.panels["VerdictPanel"]


def test_cancel_stops_neural_cleanse_at_once(qtbot, window, demo_settings, demo_bundle):
    panel = _load_demo(qtbot, window, demo_settings)
    assert panel.run_button.isEnabled() and not panel.repair_button.isEnabled()
    qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: "round" in window.status.text(), timeout=60_000)  # optimising
    window.cancel_button.click()
    wait_idle(qtbot, window, timeout=3000)
    assert "Cancelled" in window.status.text()
    assert panel.result is None and not panel.repair_button.isEnabled()


def test_verdict_then_unlearning_fills_chart_grid_and_table(qtbot, window, demo_settings, demo_bundle, tmp_path):
    panel = _load_demo(qtbot, window, demo_settings)
    panel.rounds.setValue(30)
    qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, window, timeout=300_000)
    result = panel.result
    assert result is not None and result.verdict == "backdoored" and 7 in result.flagged_classes
    # the test's small demo is a weaker BadNet than the README's: at least "suspicious", with its target
    assert re.match(r"(Backdoored|Suspicious) \(target 7\)", panel.verdict_label.text())
    assert panel.bar_item is not None and panel.threshold_line.isVisible()
    assert panel.trigger_grid.count() >= 3 * len(result.candidates)
    panel.epochs.setValue(3)
    qtbot.mouseClick(panel.repair_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, window, timeout=300_000)
    assert panel.repair_result is not None
    assert panel.table.item(0, 0) is not None and panel.table.item(2, 1) is not None
    # unlearning prunes nothing: its "After pruning" row says so instead of staying blank
    assert [panel.table.item(1, c).text() for c in range(2)] == ["not run", "not run"]
    assert "Same images in every row: clean accuracy on" in panel.table_caption.text()
    assert f"held-out clean images of {Path(demo_bundle.clean_valid).name}" in panel.table_caption.text()
    assert panel._buffers["loss"].n > 0 and panel.save_button.isEnabled()
    out = tmp_path / "unlearned.keras"
    panel.save_to(str(out))
    wait_idle(qtbot, window)
    assert out.is_file() and (tmp_path / "unlearned.keras.json").is_file()
    window.tabs.setCurrentWidget(panel)
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert window.grab().save(str(SHOTS / "verdict_panel.png"))


# ------------------------------------------------- what the views show at 1,280 x 720 (issue 23)

def _ten_class_result():
    """A finished Neural Cleanse run on a 10-class model (class 7 flagged) with its untargeted trigger, built by hand."""
    import types

    import numpy as np

    from core.detect.model_level.cleanse import LabelSpecific, ReversedTrigger

    rng = np.random.default_rng(0)
    norms = {c: 60.0 + 4 * c for c in range(10)}
    norms[7] = 12.0

    def trigger(target, norm):
        return ReversedTrigger(target, rng.random((28, 28)).astype(np.float32), 255 * rng.random((28, 28, 3)).astype(np.float32),
                               norm, 1.0, True, 10)

    untargeted = LabelSpecific(trigger(-1, 117.0), 12.0, 0.95, {c: (c + 1) % 10 for c in range(10)}, {c: 0.9 for c in range(10)})
    return types.SimpleNamespace(
        candidates=list(range(10)), flagged_classes=[7], norms=norms, triggers={c: trigger(c, n) for c, n in norms.items()},
        label_specific=untargeted, threshold_norm=30.0, mad=10.0, median=76.0)


def _on_screen(widget, viewport):
    from PySide6.QtCore import QPoint, QRect

    return widget.isVisible() and viewport.rect().contains(QRect(widget.mapTo(viewport, QPoint(0, 0)), widget.size()))


def _overlaps_data(plot) -> bool:
    """Whether the plot's legend lies over its view box (where the bars and curves are)."""
    item = plot.getPlotItem()
    return item.legend.sceneBoundingRect().intersects(item.vb.sceneBoundingRect())


def test_every_reversed_trigger_of_a_ten_class_model_has_a_visible_cell(qtbot, window):
    import numpy as np

    from core.detect.model_level.verdict import BACKDOORED, NO_EVIDENCE, combine
    from gui.app import SCREENSHOT_SIZE

    window.resize(*SCREENSHOT_SIZE)
    panel = window.panels["VerdictPanel"]
    window.tabs.setCurrentWidget(panel)
    panel._show_verdict(combine([_evidence("Neural Cleanse", BACKDOORED, (7,), 0.9), _evidence("MM-BD", NO_EVIDENCE),
                                 _evidence("label-specific check", NO_EVIDENCE),
                                 _evidence("measured attack success", BACKDOORED, (7,), 0.99,
                                           {"attack_success_rate": 0.99, "target": 7, "n_poisoned": 900})]))
    r = _ten_class_result()
    panel._gallery.fill(r, np.zeros((28, 28, 3), np.float32), 255.0)
    qtbot.wait(50)
    gallery = panel._gallery
    assert len(gallery.columns) == 11  # ten classes and the untargeted trigger
    viewport = gallery.scroll.viewport()
    for cells in gallery.columns:  # header, mask, pattern, stamped
        assert len(cells) == 4 and all(_on_screen(w, viewport) for w in cells), cells[0].text()
    assert gallery.columns[0][0].text().startswith("<b>7</b>")  # the flagged class first

    window.resize(700, 720)  # too narrow for one band: the columns wrap, and scrolling reaches every one
    qtbot.waitUntil(lambda: gallery.per_band < 11)
    for cells in gallery.columns:
        gallery.scroll.ensureWidgetVisible(cells[-1], 0, 0)
        gallery.scroll.ensureWidgetVisible(cells[0], 0, 0)
        assert all(_on_screen(w, viewport) for w in cells), cells[0].text()


def test_legends_sit_under_the_plots_never_over_bars_or_curves(qtbot, window):
    from gui.app import SCREENSHOT_SIZE

    window.resize(*SCREENSHOT_SIZE)
    panel = window.panels["VerdictPanel"]
    window.tabs.setCurrentWidget(panel)
    r = _ten_class_result()
    panel._norms.show_result(r, dict(r.norms))
    panel.curves.append("ep_clean", 0, 0.95)
    panel.curves.append("ep_asr", 0, 1.0)
    panel.curves.redraw()
    qtbot.wait(50)
    for plot in (panel.norm_plot, panel.epoch_plot):
        legend = plot.getPlotItem().legend
        assert legend.isVisible() and len(legend.items) == 2
        assert not _overlaps_data(plot)
    assert [label.text for _sample, label in panel.norm_plot.getPlotItem().legend.items] == ["threshold (index 2)", "median"]
    for plot in (panel.norm_plot, panel.live_plot, panel.epoch_plot):  # no title or legend widens a plot past its view
        assert plot.getPlotItem().width() <= plot.width(), plot.getPlotItem().titleLabel.text


# ------------------------------------------------- the combined verdict (issue 11)

def _evidence(method, level, classes=(), score=0.1, details=None):
    from core.detect.model_level.verdict import Evidence

    return Evidence(method, level, tuple(classes), score, f"{method} says {level}", details or {})


def _detectors_found_nothing(panel, window):
    """A judgement whose two detectors found nothing, as if just run on the open model."""
    from core.detect.model_level.judge import Judgement
    from core.detect.model_level.verdict import NO_EVIDENCE, combine

    verdict = combine([_evidence("Neural Cleanse", NO_EVIDENCE), _evidence("MM-BD", NO_EVIDENCE)])
    panel.judgement = Judgement(verdict, None, None, None, "255", 0.0)
    panel._judged_sha = window.state.loaded.summary.sha256
    panel.refresh_verdict()


def test_three_levels_render_with_their_words_and_colours(qtbot, window):
    from core.detect.model_level.verdict import BACKDOORED, NO_EVIDENCE, SUSPICIOUS, combine
    from gui.verdict_panel import LEVEL_COLOURS

    panel = window.panels["VerdictPanel"]
    cases = {
        BACKDOORED: combine([_evidence("Neural Cleanse", NO_EVIDENCE), _evidence("MM-BD", BACKDOORED, (3,), 0.9)]),
        SUSPICIOUS: combine([_evidence("Neural Cleanse", NO_EVIDENCE), _evidence("MM-BD", SUSPICIOUS, (5,), 0.6)]),
        NO_EVIDENCE: combine([_evidence("Neural Cleanse", NO_EVIDENCE), _evidence("MM-BD", NO_EVIDENCE)]),
    }
    starts = {BACKDOORED: "Backdoored (target 3)", SUSPICIOUS: "Suspicious (target 5)",
              NO_EVIDENCE: "No evidence found by Neural Cleanse and MM-BD"}
    colours = set()
    for level, verdict in cases.items():
        assert verdict.level == level
        panel._show_verdict(verdict)
        text, style = panel.verdict_label.text(), panel.verdict_label.styleSheet()
        assert text.startswith(starts[level]), text
        assert f"color: {LEVEL_COLOURS[level]}" in style and panel.verdict_colour() == LEVEL_COLOURS[level]
        assert not re.search(r"\bclean\b", text.lower())  # never "clean" (Neural Cleanse may be named)
        assert panel.reason_label.text() == verdict.reason and panel.reason_label.isVisibleTo(panel)
        assert panel.evidence_table.rowCount() == 2
        assert [panel.evidence_table.item(r, 1).text() for r in range(2)] == [e.level for e in verdict.evidence]
        colours.add(LEVEL_COLOURS[level])
    assert len(colours) == 3 and "#1b7f3a" not in colours  # three colours, none of them the old green


def test_measured_attack_success_in_the_registry_overrides_silent_detectors(qtbot, window, demo_settings, demo_bundle, tmp_path):
    from core.detect.model_level.verdict import ASR_BACKDOORED, ASR_SUSPICIOUS
    from gui.state import Kind

    panel = _load_demo(qtbot, window, demo_settings)
    _detectors_found_nothing(panel, window)
    assert panel.verdict.level == "no evidence" and panel.verdict_label.text().startswith("No evidence found by")
    window.panels["ModelPanel"].evaluate()  # Evaluate publishes to the registry; the verdict panel listens there
    wait_idle(qtbot, window)
    evaluation = window.state.results.value(Kind.EVALUATION)
    asr = evaluation.attack_success_rate
    assert asr is not None and asr >= ASR_SUSPICIOUS  # the demo BadNet's trigger works
    expected = "backdoored" if asr >= ASR_BACKDOORED else "suspicious"
    assert panel.verdict.level == expected
    assert panel.verdict_label.text().lower().startswith(expected)
    assert "measured attack success" in panel.verdict.methods
    rows = {panel.evidence_table.item(r, 0).text(): panel.evidence_table.item(r, 3).text()
            for r in range(panel.evidence_table.rowCount())}
    assert f"{asr:.1%}" in rows["measured attack success"]  # the same figure Evaluate shows
    published = window.state.results.value(Kind.VERDICT)
    assert published is panel.verdict  # the report reads this one
    report = tmp_path / "report.html"
    assert window.export_report(str(report))
    wait_idle(qtbot, window)
    page = report.read_text(encoding="utf-8")
    assert panel.verdict.summary in page  # the report says what the panel says
    record = json.loads(report.with_suffix(".json").read_text(encoding="utf-8"))
    assert record["cleanse"]["combined"]["level"] == panel.verdict.level


def test_choosing_a_class_when_nothing_is_flagged_enables_repair(qtbot, window, demo_settings, demo_bundle):
    panel = _load_demo(qtbot, window, demo_settings)
    _detectors_found_nothing(panel, window)
    assert panel.method.currentData() == "unlearn"
    assert panel.repair_class.currentText().startswith("Choose") and not panel.repair_button.isEnabled()
    panel.repair_class.setCurrentIndex(panel.repair_class.findText("Class 7"))
    assert panel.chosen_classes() == (7,) and panel.repair_button.isEnabled()
    panel.epochs.setValue(1)
    assert panel.run_repair()
    wait_idle(qtbot, window, timeout=300_000)
    result = panel.repair_result
    assert result is not None and list(result.flagged_classes) == [7]  # the chosen class was unlearned


def test_an_all_to_all_verdict_offers_its_trigger_for_repair(qtbot, window, demo_settings, demo_bundle):
    from core.detect.model_level.judge import Judgement
    from core.detect.model_level.verdict import BACKDOORED, LABEL_SPECIFIC, NO_EVIDENCE, combine

    panel = _load_demo(qtbot, window, demo_settings)
    shift = {str(k): (k + 1) % 10 for k in range(10)}
    verdict = combine([_evidence("Neural Cleanse", NO_EVIDENCE),
                       _evidence(LABEL_SPECIFIC, BACKDOORED, score=0.9,
                                 details={"ratio": 0.18, "norm": 8.0, "smallest_targeted_norm": 45.0, "destinations": shift})])
    panel.judgement = Judgement(verdict, None, None, None, "255", 0.0)
    panel._judged_sha = window.state.loaded.summary.sha256
    panel.refresh_verdict()
    assert panel.verdict_label.text().startswith("Backdoored (all-to-all: 0\u21921")
    assert panel.repair_class.currentText() == "The all-to-all trigger (label-specific check)"
    assert panel.chosen_classes() == () and panel.repair_button.isEnabled()  # () : core.repair.repair unlearns that trigger
    rows = {panel.evidence_table.item(r, 0).text(): panel.evidence_table.item(r, 3).text()
            for r in range(panel.evidence_table.rowCount())}
    assert "0.18 x the smallest one-class trigger" in rows[LABEL_SPECIFIC]


def test_a_detector_below_its_own_line_but_rarer_than_1_in_20_supports_a_raised_verdict():
    """The evidence table's Says column: several weak detectors raised the verdict; each says "supports", with its class."""
    from gui.verdict_evidence import _says
    from tests.test_verdict import with_tail

    weak, ordinary = with_tail("mmbd", 0.03, 4), with_tail("warp", 0.5, 2)
    assert weak.level == "no evidence"
    assert _says(weak, "suspicious") == ("supports", (4,), "suspicious")
    assert _says(weak, "no evidence") == ("no evidence", (), "no evidence")
    assert _says(ordinary, "suspicious") == ("no evidence", (), "no evidence")
