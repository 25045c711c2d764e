"""File > Export report…: the findings report from everything the session computed.

Every panel publishes its results on the session registry
(``window.state.results``, :class:`gui.state.SessionResults`) with what they
were measured on; this module reads them from there -- never from panels'
attributes -- so the report holds each result the analyst saw, and a result
computed on data that has since been replaced is reported as stale. Reading the
flagged images back, their heat-maps and the writing itself run as one job on
the worker thread (Cancel works; nothing is half-written:
:func:`core.report.write_report` is atomic).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

from PySide6.QtWidgets import QFileDialog

from core.jobs import Job, Progress
from gui.state import Kind

REPORT_FILTER = "HTML report (*.html)"


def gather_findings(window: Any) -> tuple[Any, Any, Any]:
    """(Findings, the last scan's DataSource or path, the last inspection) from the session registry."""
    from core.report import Findings

    state = window.state
    results = state.results
    findings = Findings(summary=state.loaded.summary if state.loaded is not None else None,
                        evaluation=results.value(Kind.EVALUATION), sweep=results.value(Kind.SWEEP),
                        profile=results.value(Kind.STRIP_PROFILE), cleanse=results.value(Kind.CLEANSE))
    prune = results.latest(Kind.PRUNE, current_only=True)
    findings.prune = None if prune is None else prune.value
    if findings.prune is not None and findings.sweep is None:
        findings.sweep = findings.prune.sweep
    scan = results.latest(Kind.SCAN, current_only=True)
    if scan is not None:
        profile = findings.profile or scan.value.profile  # the threshold the STRIP line shows now
        rows = [_reflag(r, profile.threshold, profile.num_classes) for r in scan.value.rows]
        findings.profile = profile
        findings.scan = dataclasses.replace(scan.value, profile=profile, rows=rows)
    inspection_entry = results.latest(Kind.INSPECTION, current_only=True)
    inspection = None if inspection_entry is None else inspection_entry.value
    for entry in results.entries():
        if entry.note:
            findings.notes.append(f"{entry.kind.value}: measured on {entry.note}"
                                  + (f" -- STALE: {entry.stale}" if entry.stale else ""))

    scan_source: Any = None
    if findings.scan is not None:
        preset = state.data.get("scan")
        scan_source = preset if preset is not None and str(preset.path) == findings.scan.source else findings.scan.source

    if state.loaded is not None:
        findings.inputs["model"] = str(state.loaded.summary.path)
    for role, source in state.data.items():
        findings.inputs[role] = str(source.path)
    return findings, scan_source, inspection


def _reflag(row: Any, threshold: float, num_classes: int) -> Any:
    flagged = bool(row.entropy < threshold)
    return dataclasses.replace(row, flagged=flagged, label=num_classes if flagged else row.predicted)


def report_job(window: Any, out: Path) -> Callable[[], Job[tuple[Path, Path]]]:
    """A job factory: read the flagged images back, map the top ones, write HTML + JSON."""
    from core.data import open_data
    from core.report import flagged_images, inspect_flagged, write_report

    findings, scan_source, inspection = gather_findings(window)
    loaded = window.state.loaded
    scale = _scale(window, findings)

    def job() -> Job[tuple[Path, Path]]:
        if findings.scan is not None and loaded is not None:
            yield Progress(None, "Reading the flagged images back")
            source = scan_source
            if isinstance(source, str):
                source = open_data(source) if source and Path(source).exists() else None
            findings.flagged = flagged_images(source, loaded.input_shape, findings.scan)
            findings.inspections = yield from inspect_flagged(loaded, findings.flagged, scale)
        if not findings.inspections and inspection is not None:
            findings.inspections = [inspection]
        yield Progress(0.95, f"Writing {out.name}")
        return write_report(findings, out)

    return job


def _scale(window: Any, findings: Any) -> str:
    for candidate in (getattr(findings.strip_profile(), "scale", None), getattr(findings.evaluation, "scale", None),
                      getattr(findings.sweep, "scale", None), window.state.scale):
        if candidate in ("255", "1"):
            return candidate
    return "255"


def export_report(window: Any, path: Optional[str] = None, then: Optional[Callable[[Any], None]] = None) -> bool:
    """Ask where (unless ``path``), then write the report on the worker thread; False if it did not start."""
    if path is None:
        start = str(Path(window._last_dir()) / "trojanscope-report.html")
        path, _ = QFileDialog.getSaveFileName(window, "Export the findings report (HTML, with its JSON beside it)", start, REPORT_FILTER)
        if not path:
            return False
    out = Path(path)
    if out.suffix.lower() not in (".html", ".htm"):
        out = out.with_name(out.name + ".html")

    def written(paths: tuple[Path, Path]) -> None:
        window.status.setText(f"Report written: {paths[0]} (and {paths[1].name})")
        if then:
            then(paths)

    return window.start_job(f"Exporting {out.name}", report_job(window, out), written)
