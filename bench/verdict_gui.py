"""Issue 11 acceptance, the GUI half: a zoo model judged by clicks, with the verdict line, Evaluate and the report compared.

    QT_QPA_PLATFORM=offscreen python bench/verdict_gui.py sunglasses frame [--out DIR] [--no-poisoned] [--repair]

For each zoo model (bench/zoo.py, built first if missing): opens the model,
its ``clean_valid`` (the detectors' data), ``clean_test`` and, unless
``--no-poisoned``, its ``poisoned_test`` as the suspected-poisoned set, as an
analyst would in the Model & Data panel; presses Evaluate, then Run the
detectors in the Verdict panel with default settings; saves a 1,280 x 720 PNG
of the Verdict panel; exports the report; and checks that the verdict line,
the Evaluate figures and the report say the same thing. With ``--repair``,
then presses Repair with the panel's first choice (the verdict's targets, or
the all-to-all trigger) and method Unlearn, and reports attack success before
and after. Prints one line per model and exits non-zero when they disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.zoo import build_zoo  # noqa: E402


def judge_in_gui(app, window, entry, out: Path, poisoned: bool, repair: bool = False) -> dict:  # noqa: ANN001
    from gui.state import Kind

    def idle(timeout_s: float = 900) -> None:
        started = time.time()
        while window.runner.busy and time.time() - started < timeout_s:
            app.processEvents()
            time.sleep(0.02)
        app.processEvents()
        if window.runner.busy:
            raise TimeoutError("the job did not finish")

    window.open_model(str(entry.model))
    idle()
    roles = [("clean_valid", entry.clean_valid), ("clean_test", entry.clean_test)]
    if poisoned:
        roles.append(("poisoned", entry.poisoned_test))
    for role, path in roles:
        window.open_data(role, str(path))
        idle()
    model_panel, verdict_panel = window.panels["ModelPanel"], window.panels["VerdictPanel"]
    model_panel.evaluate_button.click()
    idle()
    evaluation = window.state.results.value(Kind.EVALUATION)
    window.tabs.setCurrentWidget(verdict_panel)
    app.processEvents()
    started = time.perf_counter()
    verdict_panel.run_button.click()
    idle()
    seconds = time.perf_counter() - started
    verdict = verdict_panel.verdict
    shot = out / f"verdict-{entry.spec.name}{'' if poisoned else '-clean-only'}.png"
    for _ in range(5):
        app.processEvents()
        time.sleep(0.05)
    window.grab().save(str(shot))
    report = out / f"report-{entry.spec.name}.html"
    window.export_report(str(report))
    idle()
    record = json.loads(report.with_suffix(".json").read_text()) if report.with_suffix(".json").is_file() else {}
    combined = (record.get("cleanse") or {}).get("combined") or {}
    asr = None if evaluation is None else evaluation.attack_success_rate
    checks = {
        "headline is the verdict": verdict_panel.verdict_label.text().startswith(verdict.summary),
        "report verdict matches": combined.get("summary") == verdict.summary and combined.get("level") == verdict.level,
        "report attack success matches Evaluate": asr is None or (record.get("evaluation") or {}).get("attack_success_rate") == asr,
        "verdict weighs Evaluate's attack success": asr is None or any(
            e.method == "measured attack success" and e.details.get("attack_success_rate") == round(asr, 4) for e in verdict.evidence),
    }
    repaired = None
    if repair:
        verdict_panel.method.setCurrentIndex(verdict_panel.method.findData("unlearn"))
        verdict_panel.repair_class.setCurrentIndex(0)
        choice = verdict_panel.repair_class.currentText()
        verdict_panel.repair_button.click()
        idle()
        result = verdict_panel.repair_result
        checks["repair ran"] = result is not None
        if result is not None:
            repaired = {"choice": choice, "before": result.before.attack_success_rate, "after": result.after.attack_success_rate,
                        "clean before": result.before.clean_accuracy, "clean after": result.after.clean_accuracy,
                        "measured on": result.asr_source}
            for _ in range(5):
                app.processEvents()
                time.sleep(0.05)
            window.grab().save(str(shot.with_name(shot.stem + "-repaired.png")))
    return {"model": entry.spec.name, "level": verdict.level, "repair": repaired, "targets": list(verdict.targets), "summary": verdict.summary,
            "attack_success": asr, "seconds": round(seconds, 1), "png": str(shot), "report": str(report), "checks": checks}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+")
    parser.add_argument("--out", default="out/verdict_gui")
    parser.add_argument("--no-poisoned", action="store_true", help="clean data only (the detectors' own verdict)")
    parser.add_argument("--repair", action="store_true", help="then unlearn the panel's first repair choice")
    args = parser.parse_args(argv)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("TROJANSCOPE_HOME", tempfile.mkdtemp(prefix="trojanscope-home-"))  # no recent-files clutter
    from PySide6.QtWidgets import QApplication

    from gui.main_window import MainWindow

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance() or QApplication([])
    failed = 0
    for entry in build_zoo(None, args.names):
        window = MainWindow()
        window.resize(1280, 720)
        window.show()
        row = judge_in_gui(app, window, entry, out, not args.no_poisoned, args.repair)
        bad = [k for k, ok in row["checks"].items() if not ok]
        failed += bool(bad)
        print(f"{row['model']:14s} {row['summary']!r} | attack success {row['attack_success']} | {row['seconds']} s | "
              f"{'agree' if not bad else 'DISAGREE: ' + ', '.join(bad)} | {row['png']}", flush=True)
        if row["repair"]:
            print(f"{'':14s} repair: {row['repair']}", flush=True)
        window.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
