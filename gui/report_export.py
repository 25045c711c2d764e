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
    """(Findings, the last scan's DataSource or path, the last inspection) from the session registry.

    Every current (not stale) result goes in: each prune and repair, every
    scan, every inspection with its transplant; what each was measured on goes
    beside its figures. Stale results (measured on data since replaced) are
    left out and listed in the notes.
    """
    from core.report import Findings

    state = window.state
    results = state.results
    current = {kind: [e for e in results.all(kind) if not e.stale] for kind in Kind}
    findings = Findings(summary=state.loaded.summary if state.loaded is not None else None,
                        evaluation=results.value(Kind.EVALUATION), sweep=results.value(Kind.SWEEP),
                        profile=results.value(Kind.STRIP_PROFILE), cleanse=results.value(Kind.CLEANSE))
    findings.prunes = [e.value for e in current[Kind.PRUNE]]
    findings.prune = findings.prunes[-1] if findings.prunes else None
    findings.repairs = [e.value for e in current[Kind.REPAIR]]
    findings.verdict = results.value(Kind.VERDICT)  # the Verdict panel's headline, as shown
    findings.purification = current[Kind.PURIFICATION][-1].value if current[Kind.PURIFICATION] else None
    if findings.sweep is None and findings.prune is not None:
        findings.sweep = findings.prune.sweep
    profile = findings.profile
    for entry in current[Kind.SCAN]:
        scan = entry.value
        used = profile or scan.profile  # the threshold the STRIP line shows now
        findings.scans.append(dataclasses.replace(scan, profile=used,
                                                  rows=[_reflag(r, scan.profile.threshold, used.threshold, used.num_classes)
                                                        for r in scan.rows]))
    if findings.scans:
        findings.scan = findings.scans[-1]
        findings.profile = findings.profile or findings.scan.profile
    for entry in current[Kind.INSPECTION]:
        transplants = [t.value for t in current[Kind.TRANSPLANT] if t.parent is entry]
        findings.inspected.append((entry.value, transplants[-1] if transplants else None))
    for kind, section in ((Kind.EVALUATION, "evaluation"), (Kind.SWEEP, "sweep"), (Kind.STRIP_PROFILE, "strip"),
                          (Kind.CLEANSE, "cleanse"), (Kind.TRANSPLANT, "transplant"), (Kind.PURIFICATION, "purification")):
        if current[kind] and current[kind][-1].note:
            findings.measured_on[section] = current[kind][-1].note
    for entry in results.entries():
        if entry.stale:
            findings.notes.append(f"Left out, stale: {entry.kind.value} measured on {entry.note or 'data since replaced'} "
                                  f"({entry.stale}).")
    inspection = findings.inspected[-1][0] if findings.inspected else None

    scan_source: Any = None
    if findings.scan is not None:
        preset = state.data.get("scan")
        scan_source = preset if preset is not None and str(preset.path) == findings.scan.source else findings.scan.source

    if state.loaded is not None:
        findings.inputs["model"] = str(state.loaded.summary.path)
    for role, source in state.data.items():
        findings.inputs[role] = str(source.path)
    return findings, scan_source, inspection


def _reflag(row: Any, published: float, threshold: float, num_classes: int) -> Any:
    """The row's verdict at the STRIP line shown now.

    A row the panel flagged although its entropy was above the line it published
    with was flagged by another detector (combined mode): that verdict stays.
    """
    by_others = bool(row.flagged and not row.entropy < published)
    flagged = bool(row.entropy < threshold) or by_others
    return dataclasses.replace(row, flagged=flagged, label=num_classes if flagged else row.predicted)


def report_job(window: Any, out: Path) -> Callable[[], Job[tuple[Path, Path]]]:
    """A job factory: read the flagged images back, map the top ones, write HTML + JSON."""
    from core.intake.data import open_data
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
    """Ask where (unless ``path``), then write the report on the worker thread; False if it did not start.

    ``then(paths)`` runs when the job ends: the (HTML, JSON) paths, or None when it failed or was cancelled.
    """
    if path is None:
        start = str(Path(window._last_dir()) / "trojanscope-report.html")
        path, _ = QFileDialog.getSaveFileName(window, "Export the findings report (HTML, with its JSON beside it)", start, REPORT_FILTER)
        if not path:
            return False
    out = Path(path)
    if out.suffix.lower() not in (".html", ".htm"):
        out = out.with_name(out.name + ".html")

    written_paths: list = []

    def written(paths: tuple[Path, Path]) -> None:
        written_paths.append(paths)
        window.status.setText(f"Report written: {paths[0]} (and {paths[1].name})")

    started = window.start_job(f"Exporting {out.name}", report_job(window, out), written,
                               on_end=lambda _o: then(written_paths[0] if written_paths else None) if then else None)
    return started
