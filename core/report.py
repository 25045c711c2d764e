"""The findings report: one self-contained HTML file an analyst can forward, plus its JSON.

Analysts hand their conclusions to colleagues who do not run TrojanScope, often
by e-mail from an air-gapped machine. So the report is a single HTML file with
every figure embedded as a PNG data URI (no scripts, no external files, opens
in any browser and prints), and a machine-readable JSON beside it
(``report.html`` -> ``report.json``) carrying the same numbers for scripts.
Both are written atomically (:mod:`core.intake.atomic`): a cancelled export leaves
nothing half-written.

The report takes whatever results exist -- the GUI's panels keep their last
results, the CLI runs quick analyses (:func:`quick_findings`) -- and each
missing analysis gets a section that says "not run" and how to run it, so a
reader can tell "not checked" from "checked and clean".

Figures are drawn with matplotlib's Agg canvas on ``matplotlib.figure.Figure``
objects, never ``pyplot``: no global state, so the GUI can export from its
worker thread, and no display is needed.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from core.intake.atomic import atomic_path, refuse_overwriting
from core.errors import TrojanScopeError
from core.jobs import Job, Progress, rescaled

# Section ids, in report order, of a model's report; a triage report (a folder of models ranked) has "triage" alone,
# and a model's report gains it at the end when its findings carry a triage.
SECTIONS = ("summary", "evaluation", "pruning", "strip", "purification", "inspector", "cleanse", "repair")
TRIAGE = "triage"
MAX_TRIAGE_LISTED = 500  # refused / failed / pending files named in the triage section (all are in the JSON)
MAX_PURIFIED_SHOWN = 8  # flagged images drawn with the region cut out and the purified image
TOP_INSPECTED = 4  # heat-maps for the lowest-entropy flagged images
MAX_FLAGGED_SHOWN = 24
MAX_FLAGGED_LISTED = 200  # flagged files named in each scan's table (all are in the JSON)
TITLE_WIDTH = 26  # characters per line of a figure's image title (long names wrap, never cut)
QUICK_OVERLAYS = 32  # STRIP overlays in the quick CLI run (the paper uses 100)
QUICK_FINE_TUNE_EPOCHS = 2
FORMAT = "trojanscope-report"
FORMAT_VERSION = 1


@dataclass
class FlaggedImage:
    """A flagged STRIP row with the image the model saw (model layout, pixel values as stored)."""

    row: Any  # core.detect.input_level.strip.StripRow
    image: np.ndarray


@dataclass
class Findings:
    """Whatever analyses were run; ``None`` means "not run" and gets a section saying so."""

    summary: Any = None  # core.intake.models.ModelSummary
    evaluation: Any = None  # core.evaluate.EvalResult
    sweep: Any = None  # core.repair.pruning.SweepResult
    prune: Any = None  # core.repair.pruning.PruneResult (after pruning and fine-tuning)
    profile: Any = None  # core.detect.input_level.strip.StripProfile (calibration)
    scan: Any = None  # core.detect.input_level.strip.ScanResult
    flagged: list[FlaggedImage] = field(default_factory=list)
    inspections: list[Any] = field(default_factory=list)  # core.inspect.trigger.Inspection
    cleanse: Any = None  # core.detect.model_level.cleanse.CleanseResult
    verdict: Any = None  # core.detect.model_level.verdict.Verdict: every method's evidence combined (the Verdict panel's headline)
    purification: Any = None  # core.repair.purify.PurifyResult: a scan whose flagged inputs were given a class back
    inputs: dict[str, str] = field(default_factory=dict)  # role -> path, for the record
    notes: list[str] = field(default_factory=list)
    conversions: list[str] = field(default_factory=list)  # data converted to fit the model, allowed by the analyst (issue 23)
    origin: str = "gui"  # "gui": the panels' results; "cli": the report command's quick runs (the text names what ran them)
    # A GUI session keeps every result, not just the last (issue 13):
    prunes: list[Any] = field(default_factory=list)  # every core.repair.pruning.PruneResult (Fine-Pruning), oldest first
    repairs: list[Any] = field(default_factory=list)  # every core.repair.repair.RepairResult (unlearn / fine-prune / both)
    scans: list[Any] = field(default_factory=list)  # every core.detect.input_level.strip.ScanResult; ``scan`` is the last one
    inspected: list[tuple[Any, Any]] = field(default_factory=list)  # (Inspection, Transplant or None) the analyst ran
    measured_on: dict[str, str] = field(default_factory=dict)  # section -> the images its figures were measured on
    triage: Any = None  # core.detect.model_level.triage.TriageResult: a folder of models ranked (from its results store)

    def strip_profile(self) -> Any:
        return self.profile if self.profile is not None else getattr(self.scan, "profile", None)

    def all_scans(self) -> list[Any]:
        return list(self.scans) if self.scans else ([self.scan] if self.scan is not None else [])

    def all_prunes(self) -> list[tuple[str, Any]]:
        """(where it came from, PruneResult) for Fine-Pruning runs and the fine-prune step of repairs."""
        where = "Fine-Pruning panel" if self.origin == "gui" else "the report command's quick Fine-Pruning (as the prune command)"
        out = [(where, p) for p in (self.prunes or ([self.prune] if self.prune is not None else []))]
        out += [(f"repair ({r.method})", r.prune) for r in self.repairs if getattr(r, "prune", None) is not None]
        return out


# ------------------------------------------------------------ gathering inputs


def flagged_images(source: Any, shape: Sequence[int], scan: Any, limit: int = MAX_FLAGGED_SHOWN) -> list[FlaggedImage]:
    """The ``limit`` lowest-entropy flagged rows of ``scan`` with their images read back from ``source``.

    Scan results keep numbers, not pixels (a scan can cover millions of
    images); the few the report shows are read again by index.
    """
    if scan is None:
        return []
    rows = sorted((r for r in scan.rows if r.flagged), key=lambda r: r.entropy)[:limit]
    wanted = {int(r.index): r for r in rows}
    images: dict[int, np.ndarray] = {}
    if wanted and source is not None:
        for batch in source.batches(shape, 256):
            for k, index in enumerate(batch.indices):
                if int(index) in wanted:
                    images[int(index)] = np.asarray(batch.x[k], np.float32)
            if len(images) == len(wanted):
                break
    return [FlaggedImage(r, images[int(r.index)]) for r in rows if int(r.index) in images]


def inspect_flagged(loaded: Any, flagged: Sequence[FlaggedImage], scale: str, top: int = TOP_INSPECTED) -> Job[list[Any]]:
    """Grad-CAM and occlusion heat-maps (with the occlusion repair test) for the first ``top`` flagged images."""
    from core.inspect.trigger import inspect

    out = []
    chosen = list(flagged)[:top]
    for n, item in enumerate(chosen, 1):
        yield Progress((n - 1) / max(len(chosen), 1), f"Inspecting flagged image {n}/{len(chosen)}")
        inspection = yield from inspect(loaded, item.image, scale, method="occlusion", methods=["gradcam"])
        inspection.source = item.row.source
        out.append(inspection)
    return out


def quick_findings(
    loaded: Any,
    clean: Any,
    poisoned: Any = None,
    scan_source: Any = None,
    target: Optional[int] = None,
    scale: str = "auto",
    fine_tune_epochs: int = QUICK_FINE_TUNE_EPOCHS,
    overlays: int = QUICK_OVERLAYS,
    top: int = TOP_INSPECTED,
    seed: int = 0,
    cleanse_settings: Any = None,
) -> Job[Findings]:
    """Run every quick analysis the report shows (the CLI's ``report``): evaluation,
    a Fine-Pruning sweep with a short fine-tune, STRIP calibration and scan (of
    ``scan_source``, else of the poisoned set), and heat-maps of the top flagged images.

    Neural Cleanse takes minutes, so it runs only when ``cleanse_settings``
    (a :class:`core.detect.model_level.cleanse.CleanseSettings`) is given; its section says "not run" otherwise.
    """
    from core.intake.data import load_arrays
    from core.evaluate import evaluate
    from core.repair.pruning import PruneSettings, repair, sweep
    from core.detect.input_level.strip import StripSettings, calibrate, scan

    findings = Findings(summary=loaded.summary, origin="cli")
    yield Progress(0.0, "Evaluating")
    ev = yield from rescaled(evaluate(loaded, clean, poisoned, target, scale), 0.0, 0.1)
    findings.evaluation = ev
    scale, target = ev.scale, ev.target

    yield Progress(0.1, "Fine-Pruning sweep")
    shape = loaded.input_shape
    x = load_arrays(clean, shape)
    xp = load_arrays(poisoned, shape) if poisoned is not None else None
    px, py = (xp.x, xp.y) if xp is not None else (None, None)
    findings.sweep = yield from rescaled(sweep(loaded, x.x, x.y, scale, x_poisoned=px, y_poisoned=py, target=target), 0.1, 0.3)
    if fine_tune_epochs > 0:
        settings = PruneSettings(epochs=fine_tune_epochs, seed=seed)
        result = yield from rescaled(repair(loaded, findings.sweep, x.x, x.y, settings, x_poisoned=px, y_poisoned=py), 0.3, 0.55)
        result.model = None  # the report does not save the repaired model; free it
        findings.prune = result

    findings.profile = yield from rescaled(calibrate(loaded, clean, StripSettings(overlays, seed=seed), scale=scale), 0.55, 0.7)
    target_source = scan_source if scan_source is not None else poisoned
    if target_source is not None:
        findings.scan = yield from rescaled(scan(loaded, findings.profile, target_source, thumbnails=False), 0.7, 0.85)
        yield Progress(0.85, "Reading the flagged images back")
        findings.flagged = flagged_images(target_source, shape, findings.scan)
        findings.inspections = yield from rescaled(inspect_flagged(loaded, findings.flagged, scale, top), 0.85, 1.0)
    else:
        findings.notes.append("No scan set and no poisoned set: STRIP was calibrated but scanned nothing.")
    if cleanse_settings is not None:
        from core.detect.model_level.cleanse import cleanse

        yield Progress(None, "Neural Cleanse")
        findings.cleanse = yield from cleanse(loaded, x, scale, cleanse_settings)
    yield Progress(1.0, "Analyses done")
    return findings


# ---------------------------------------------------------------- writing


def json_path_for(out: str | Path) -> Path:
    """The JSON written beside ``out`` (``report.html`` -> ``report.json``)."""
    out = Path(out)
    return out.with_suffix(".json") if out.suffix.lower() in (".html", ".htm") else out.with_name(out.name + ".json")


def write_report(findings: Findings, out: str | Path, inputs: Iterable[Any] = (), sections: Optional[Sequence[str]] = None) -> tuple[Path, Path]:
    """Write ``out`` (HTML) and its JSON beside it, each atomically; returns both paths.

    Refuses to write over any of the analyst's input files. ``sections``: which to write (default :data:`SECTIONS`,
    and the triage section when ``findings.triage`` is set; a triage report is ``(TRIAGE,)``).
    """
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise TrojanScopeError(f"the report must end in .html; received {out}")
    json_out = json_path_for(out)
    sources = [p for p in (*findings.inputs.values(), *inputs) if p]
    refuse_overwriting(out, *sources)
    refuse_overwriting(json_out, *sources)
    page, record = render(findings, sections)
    with atomic_path(json_out) as tmp:
        tmp.write_text(json.dumps(record, indent=2, allow_nan=False), encoding="utf-8")
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out, json_out


def render(findings: Findings, sections: Optional[Sequence[str]] = None) -> tuple[str, dict[str, Any]]:
    """(the HTML page, the JSON record) for ``findings``."""
    if sections is None:
        sections = SECTIONS + ((TRIAGE,) if findings.triage is not None else ())
    generated = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    record: dict[str, Any] = {"format": FORMAT, "version": FORMAT_VERSION, "generated_at": generated,
                              "inputs": dict(findings.inputs), "notes": list(findings.notes),
                              "conversions": list(findings.conversions), "sections": {}}
    parts = []
    for section in sections:
        body, data = _SECTION_RENDERERS[section](findings)
        record["sections"][section] = "run" if data is not None else "not run"
        record[section] = data
        title = _TITLES[section] if findings.origin == "gui" else _CLI_TITLES.get(section, _TITLES[section])
        parts.append(f'<section id="{section}"><h2>{title}</h2>\n{body}\n</section>')
    page = _PAGE.format(
        css=_CSS, generated=html.escape(generated), key=_key_findings(findings),
        model=html.escape(Path(findings.summary.path).name if findings.summary else
                          f"triage of {findings.triage.folder}" if findings.triage is not None else "no model"),
        sections="\n".join(parts),
    )
    return page, _clean_json(record)


_TITLES = {
    "summary": "Model",
    "evaluation": "Evaluation",
    "pruning": "Fine-Pruning",
    "strip": "STRIP run-time detection",
    "purification": "Purification: flagged inputs given their class back",
    "inspector": "Inspector: where the flagged images' decisions come from",
    "cleanse": "Neural Cleanse",
    "repair": "Repair (Verdict panel): unlearning and fine-pruning",
    "triage": "Triage: models ranked by suspicion",
}
_CLI_TITLES = {"repair": "Repair (the repair command): unlearning and fine-pruning"}


def _not_run(what: str, how: str) -> str:
    return f'<p class="not-run">Not run: {html.escape(what)}. {html.escape(how)}</p>'


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows)
    return f'<table class="kv">{cells}</table>'


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return "—" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def _entropy(value: float) -> str:
    """Trojaned inputs' entropies are often below 0.001 bits: keep them distinguishable from zero."""
    return f"{value:.3f}" if value >= 0.001 or value == 0 else f"{value:.0e}"


def _pct(value: Optional[float]) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


# ------------------------------------------------------------------ sections


def _summary(f: Findings) -> tuple[str, Optional[dict]]:
    s = f.summary
    if s is None:
        return _not_run("no model was loaded", "Open a model first."), None
    h, w, c = s.input_shape
    rows = [
        ("File", s.path), ("Format", s.format), ("SHA-256", s.sha256), ("Input", f"{h} × {w} × {c}"),
        ("Classes", s.num_classes), ("Parameters", f"{s.params:,}"),
        ("Conv layers", ", ".join(f"{layer.name} ({layer.channels})" for layer in s.conv_layers) or "none"),
        ("Saved by Keras", s.keras_version or "unknown"),
    ]
    if s.arch_path:
        rows.insert(2, ("Architecture from", s.arch_path))
    inputs = "".join(f"<li>{html.escape(k)}: <code>{html.escape(v)}</code></li>" for k, v in f.inputs.items())
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in f.notes)
    converted = "".join(f"<li>{html.escape(c)}</li>" for c in f.conversions)
    extra = (f"<h3>Inputs</h3><ul>{inputs}</ul>" if inputs else "") + (f"<h3>Notes</h3><ul>{notes}</ul>" if notes else "")
    extra += f"<h3>Data converted to fit the model (as the analyst allowed)</h3><ul>{converted}</ul>" if converted else ""
    return _table(rows) + extra, s.as_dict()


def _evaluation(f: Findings) -> tuple[str, Optional[dict]]:
    ev = f.evaluation
    if ev is None:
        return _not_run("the model was not evaluated", "Model & Data > Evaluate, or the evaluate command."), None
    clean_on = getattr(ev, "clean_measured_on", "") or f"{ev.n_clean} images"
    poisoned_on = getattr(ev, "poisoned_measured_on", "") or f"{ev.n_poisoned} suspected-poisoned images"
    rows = [
        ("Clean accuracy", f"{_pct(ev.clean_accuracy)} on {clean_on}" if ev.clean_accuracy is not None else None),
        ("Attack success rate", f"{_pct(ev.attack_success_rate)} on {poisoned_on}"
         if ev.attack_success_rate is not None else "not measured (no poisoned set)"),
        ("Attacker's target class", ev.target), ("Input scale", ev.scale_note or ev.scale),
        ("Unreadable files skipped", len(ev.skipped)),
    ]
    return _table(rows), ev.as_dict()


def _pruning(f: Findings) -> tuple[str, Optional[dict]]:
    prunes = f.all_prunes()
    last = prunes[-1][1] if prunes else None
    sw = f.sweep if f.sweep is not None else getattr(last, "sweep", None)
    if sw is None:
        return _not_run("no Fine-Pruning sweep", "Fine-Pruning > Run, or the prune command."), None
    count = _pruned_count(sw, last if last is not None and last.sweep is sw else None)
    figure = _img(_pruning_figure(sw, last if last is not None and last.sweep is sw else None), f"Pruning curve of {sw.layer}")
    stop = sw.curve[count]
    rule = sw.stop_rule if count == sw.stop else f"{count} channels picked by the analyst (the stop rule, {sw.stop_rule}, proposed {sw.stop})"
    rows = [("Layer", f"{sw.layer} ({sw.channels_total} channels)"), ("Stop rule", rule),
            ("Channels pruned", f"{count} of {sw.channels_total}"),
            ("Sweep measured on", f.measured_on.get("sweep") or f"{sw.n_clean} clean and {sw.n_poisoned} suspected-poisoned images")]
    data: dict[str, Any] = {
        "layer": sw.layer, "channels_total": sw.channels_total, "stop": sw.stop, "stop_rule": sw.stop_rule, "pruned": count,
        "pruned_channels": sw.channels_for(count), "curve": [p.as_dict() for p in sw.curve],
        "at_stop": {"clean_accuracy": stop.clean_accuracy, "attack_success_rate": stop.attack_success_rate},
    }
    tables = []
    if not prunes:
        stages = [("Unpruned (sweep)", sw.curve[0].clean_accuracy, sw.curve[0].attack_success_rate),
                  (f"Pruned {count} channels (sweep)", stop.clean_accuracy, stop.attack_success_rate)]
        tables.append(_stage_table(stages))
    runs = []
    for n, (origin, p) in enumerate(prunes, 1):
        held = f"{p.n_holdout} held-out clean images (never fine-tuned on)" if p.n_holdout else "the clean images fine-tuned on"
        stages = [("Before", p.before.clean_accuracy, p.before.attack_success_rate),
                  (f"After pruning {len(p.pruned_channels)} channels (zeroed, not yet fine-tuned)", p.after_prune.clean_accuracy,
                   p.after_prune.attack_success_rate),
                  (f"After fine-tuning {p.settings.get('epochs')} epochs", p.after_fine_tune.clean_accuracy,
                   p.after_fine_tune.attack_success_rate)]
        tables.append(f"<h3>Run {n}: {html.escape(origin)}, {len(p.pruned_channels)} channels of {html.escape(p.layer)}</h3>"
                      f"<p>Clean accuracy on {html.escape(held)}; attack success on the suspected-poisoned set.</p>"
                      + _stage_table(stages))
        d = {k: v for k, v in p.as_dict().items() if k in ("before", "after_prune", "after_fine_tune", "pruned_channels",
                                                            "saved", "n_holdout", "settings", "clean_accuracy_measured_on",
                                                            "after_prune_means", "layer")}
        d["origin"] = origin
        runs.append(d)
    if runs:
        data.update({k: v for k, v in runs[-1].items() if k in ("before", "after_prune", "after_fine_tune", "pruned_channels",
                                                                  "saved", "n_holdout", "settings")})
        data["runs"] = runs
    return figure + _table(rows) + "".join(tables), data


def _stage_table(stages: Sequence[tuple[str, Optional[float], Optional[float]]]) -> str:
    stage_rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{_pct(a)}</td><td>{_pct(b)}</td></tr>" for n, a, b in stages)
    return f'<table class="grid"><tr><th>Model</th><th>Clean accuracy</th><th>Attack success</th></tr>{stage_rows}</table>'


def _pruned_count(sw: Any, prune: Any) -> int:
    """Channels actually pruned: the repair's (the analyst may have moved the line), else the stop rule's."""
    return len(prune.pruned_channels) if prune is not None else int(sw.stop)


def _strip(f: Findings) -> tuple[str, Optional[dict]]:
    profile = f.strip_profile()
    if profile is None:
        return _not_run("STRIP was not calibrated", "STRIP > Calibrate and scan, or the strip command."), None
    parts = [_img(_strip_figure(profile, f.scan), "STRIP entropy histogram (last scan)")]
    # The threshold is the conservative order statistic (docs/scan.md); a profile saved before it says so in its notes.
    rows = [("Threshold", f"{profile.threshold:.4f} bits (entropy below it is flagged; set for FRR {profile.frr:.2%} "
                          f"with {profile.confidence:.0%} confidence on unseen clean inputs)"),
            ("False rejection on unseen clean inputs", profile.frr_estimate().describe()),
            ("Overlays", profile.n_overlays)]
    data: dict[str, Any] = {"threshold": profile.threshold, "frr": profile.frr, "overlays": profile.n_overlays,
                            "empirical_threshold": profile.empirical_threshold,
                            "normal_fit": {"mean": profile.fit_mean, "std": profile.fit_std},
                            "clean_entropies": [float(e) for e in profile.clean_entropies]}
    scans = f.all_scans()
    if not scans:
        rows.append(("Scan", "not run: nothing was scanned"))
    rows.append(("Calibration measured on", f.measured_on.get("strip") or f"{len(profile.clean_entropies)} clean images"))
    parts.append(_table(rows))
    listed = []
    for n, scan in enumerate(scans, 1):
        scanned = len(scan.rows)
        flagged_rows = sorted((r for r in scan.rows if r.flagged), key=lambda r: r.entropy)
        parts.append(f"<h3>Scan {n}: {html.escape(scan.source or 'the scan set')}</h3>")
        parts.append(_table([("Scanned", scanned),
                             ("Flagged (entropy below threshold)", f"{len(flagged_rows)} ({_pct(len(flagged_rows) / scanned if scanned else None)})"),
                             ("Unreadable files skipped", len(scan.skipped))]
                            + ([("Detectors", scan.detectors)] if scan.detectors else []) + [("Warning", w) for w in scan.warnings]))
        if flagged_rows:
            cells = "".join(f"<tr><td><code>{html.escape(item_name(r))}</code></td><td>{_entropy(r.entropy)}</td>"
                            f"<td>{r.predicted} ({r.confidence:.0%})</td></tr>" for r in flagged_rows[:MAX_FLAGGED_LISTED])
            more = (f"<p>… and {len(flagged_rows) - MAX_FLAGGED_LISTED} more (all in the JSON).</p>"
                    if len(flagged_rows) > MAX_FLAGGED_LISTED else "")
            parts.append('<table class="grid"><tr><th>Flagged file (HDF5/npz: file#item)</th><th>Entropy (bits)</th>'
                         f'<th>Model class</th></tr>{cells}</table>{more}')
        d = scan.as_dict()
        listed.append({"source": scan.source, "scanned": scanned, "flagged": len(flagged_rows),
                       "flagged_files": [{"file": item_name(r), "source": r.source, "index": r.index, "entropy": r.entropy,
                                          "predicted": r.predicted} for r in flagged_rows],
                       "skipped": d["skipped"], "warnings": d["warnings"], "detectors": scan.detectors})
    if scans:
        scan_dict = scans[-1].as_dict()
        data.update({k: scan_dict[k] for k in ("scanned", "flagged", "results", "skipped", "warnings")})
        data["source"] = scans[-1].source
        data["scans"] = listed
    if f.flagged:
        parts.append(f"<h3>Flagged images of the last scan, lowest entropy first ({len(f.flagged)} of {f.scan.flagged if f.scan else len(f.flagged)})</h3>")
        parts.append(_img(_flagged_figure(f.flagged, profile.num_classes), "Flagged images"))
    elif f.scan is not None and f.scan.flagged:
        parts.append("<p>The flagged images could not be read back for display.</p>")
    return "\n".join(parts), data


def item_name(row: Any) -> str:
    """A flagged file's name, with the item index for images inside HDF5/npz files (``data.h5#12``)."""
    source = str(getattr(row, "source", ""))
    if Path(source).suffix.lower() in (".h5", ".hdf5", ".npz"):
        return f"{source}#{int(row.index)}"
    return source


def _inspector(f: Findings) -> tuple[str, Optional[dict]]:
    if not f.inspections and not f.inspected:
        why = "no image was flagged by STRIP" if f.scan is not None and not f.scan.flagged else "no flagged image was inspected"
        return _not_run(why, "Inspector, or the inspect command, on a suspicious image."), None
    parts: list[str] = []
    data: dict[str, Any] = {}
    if f.inspected:
        parts.append("<h3>Images the analyst inspected</h3><p>The transplant test pastes the salient box onto clean images "
                     "of other classes: a trigger flips most of them; a random clean box of the same size (baseline) does not.</p>")
        parts.append(_img(_inspection_figure([ins for ins, _tr in f.inspected]), "Heat-maps of the inspected images"))
        rows, items = [], []
        for ins, tr in f.inspected:
            d = ins.as_dict()
            d["source"] = getattr(ins, "source", "")
            d["transplant"] = None if tr is None else tr.as_dict()
            items.append(d)
            if tr is None:
                result = "not run"
            else:
                verdict = "looks like a trigger" if tr.looks_like_trigger else "does not behave like a trigger"
                result = (f"{tr.flip_rate:.0%} of {tr.n} flipped to class {tr.suspect_class} (baseline {tr.baseline:.0%}): "
                          f"{verdict}; box {list(tr.box)} from the {tr.box_from or 'salient'} map")
            rows.append(f"<tr><td><code>{html.escape(d['source'] or '—')}</code></td><td>{ins.predicted} ({ins.confidence:.1%})</td>"
                        f"<td>{html.escape(str(d['box']))}</td><td>{html.escape(result)}</td></tr>")
        parts.append('<table class="grid"><tr><th>Image</th><th>Predicted</th><th>Salient box (r0, c0, r1, c1)</th>'
                     f'<th>Transplant test</th></tr>{"".join(rows)}</table>')
        if f.measured_on.get("transplant"):
            parts.append(f"<p>Transplant recipients: {html.escape(f.measured_on['transplant'])}.</p>")
        data["inspected"] = items
    if f.inspections:
        parts += ["<h3>The top flagged images</h3><p>Each row: the flagged image with its most salient box (green), then its "
                  "heat-maps. Occlusion repair: the box is covered and the image classified again; a trigger changes the class.</p>",
                  _img(_inspection_figure(f.inspections), "Heat-maps of the top flagged images")]
        items, rows = [], []
        for ins in f.inspections:
            d = ins.as_dict()
            d["source"] = getattr(ins, "source", "")
            items.append(d)
            rep = ins.repair
            repair = "—" if rep is None else (f"{'left' if rep.left_class else 'stayed in'} class {rep.suspect_class}: "
                                              f"now {rep.predicted} ({rep.confidence:.0%})")
            rows.append(f"<tr><td><code>{html.escape(d['source'] or '—')}</code></td><td>{ins.predicted} ({ins.confidence:.1%})</td>"
                        f"<td>{html.escape(str(d['box']))}</td><td>{html.escape(repair)}</td></tr>")
        parts.append('<table class="grid"><tr><th>Image</th><th>Predicted</th><th>Salient box (r0, c0, r1, c1)</th>'
                     f'<th>Occlusion repair</th></tr>{"".join(rows)}</table>')
        data["inspections"] = items
    return "\n".join(parts), data


def _purification(f: Findings) -> tuple[str, Optional[dict]]:
    from collections import Counter

    from core.repair.purify import CANNOT, METHOD_LABELS

    r = f.purification
    if r is None:
        return _not_run("no flagged input was purified", "STRIP > Scan with Purify flagged on, or the purify command."), None
    flagged = [(row, p) for row, p in zip(r.scan.rows, r.purified) if p.flagged]
    given = sum(p.purified_label is not None for _row, p in flagged)
    counts = Counter(p.method for _row, p in flagged)
    n = r.num_classes
    parts = ["<p>A flagged input gets its class back only when independent evidence agrees: the trigger cut out and "
             "inpainted (Telea and Navier-Stokes) moves the model to the same class under both fills and the clean "
             "reference networks agree; for a trigger that covers the whole image, every clean reference network "
             f"gives the same class. Otherwise it cannot be purified and keeps the reject class {n} (N).</p>"]
    parts.append(_table([
        ("Scanned", f"{len(r.purified)} images of {r.scan.source or 'the scan set'}"),
        ("Flagged", len(flagged)),
        ("Given a class back", f"{given} ({_pct(given / len(flagged) if flagged else None)} of the flagged)"),
        ("Cannot purify (reject class N)", counts.get(CANNOT, 0)),
        ("How", "; ".join(f"{METHOD_LABELS.get(m, m)}: {k}" for m, k in counts.most_common()) or "—"),
        ("Evidence", r.evidence),
        ("Measured on", f.measured_on.get("purification") or f"{len(r.purified)} images"),
    ]))
    shown = [(row, p) for row, p in flagged if p.before is not None][:MAX_PURIFIED_SHOWN]
    if shown:
        parts.append(f"<h3>Purified images ({len(shown)} of {len(flagged)}): original, region cut out, purified</h3>")
        parts.append(_img(_purified_figure(shown, n), "Flagged images, the regions cut out and the purified images"))
    listed = "".join(
        f"<tr><td><code>{html.escape(item_name(row))}</code></td><td>{p.label}</td>"
        f"<td>{'cannot purify → ' + str(n) if p.purified_label is None else p.purified_label}</td>"
        f"<td>{html.escape(METHOD_LABELS.get(p.method, p.method))}</td><td>{html.escape(p.reason)}</td></tr>"
        for row, p in flagged[:MAX_FLAGGED_LISTED])
    if listed:
        more = (f"<p>… and {len(flagged) - MAX_FLAGGED_LISTED} more (all in the JSON).</p>" if len(flagged) > MAX_FLAGGED_LISTED else "")
        parts.append('<table class="grid"><tr><th>Flagged file (HDF5/npz: file#item)</th><th>Model class</th><th>Purified</th>'
                     f'<th>How</th><th>Why</th></tr>{listed}</table>{more}')
    data = {"scanned": len(r.purified), "flagged": len(flagged), "purified": given, "cannot_purify": counts.get(CANNOT, 0),
            "methods": dict(counts), "evidence": r.evidence, "source": r.scan.source, "reject_class": n,
            "results": [{"file": item_name(row), "source": row.source, "index": row.index, **p.as_dict()} for row, p in flagged]}
    return "\n".join(parts), data


def _purified_figure(shown: Sequence[tuple[Any, Any]], num_classes: int) -> Any:
    """One row per flagged image: the original, the cut-out region in red, the purified image."""
    fig = _figure(2.2 * 3, 2.2 * len(shown))
    for k, (row, p) in enumerate(shown):
        before = _display(p.before).astype(np.float32)
        region = 0.6 * before
        if p.mask is not None:
            region[np.asarray(p.mask, bool)] = (230.0, 40.0, 40.0)
        tiles = [(before, f"{textwrap.fill(Path(item_name(row)).name, TITLE_WIDTH)}\nmodel: {p.label}"),
                 (region, "cut out" if p.mask is not None else "nothing cut out"),
                 (_display(p.after) if p.after is not None else None,
                  f"purified: {'cannot → ' + str(num_classes) if p.purified_label is None else p.purified_label}")]
        for c, (tile, title) in enumerate(tiles):
            ax = fig.add_subplot(len(shown), 3, 3 * k + c + 1)
            ax.imshow(np.clip(tile if tile is not None else np.full_like(before, 255.0), 0, 255).astype(np.uint8), interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    return fig


def _combined(v: Any) -> str:
    """The combined verdict as the Verdict panel shows it: headline, reason, one row per method."""
    level = v.level.replace(" ", "-")
    rows = "".join(f"<tr><th>{html.escape(e.method)}</th><td>{html.escape(e.level)}</td>"
                   f"<td>{html.escape(', '.join(map(str, e.classes)) or '-')}</td><td>{html.escape(e.summary)}</td></tr>"
                   for e in v.evidence)
    rate = f"<p><em>{html.escape(v.false_alarm[0].upper() + v.false_alarm[1:])}.</em></p>" if getattr(v, "false_alarm", "") else ""
    return (f'<p class="verdict {level}">{html.escape(v.summary)}</p>{rate}<p>{html.escape(v.reason)}</p>'
            f'<table class="kv"><tr><th>Method</th><th>Says</th><th>Classes</th><th>Evidence</th></tr>{rows}</table>')


def _cleanse(f: Findings) -> tuple[str, Optional[dict]]:
    c = f.cleanse
    if c is None and f.verdict is not None:
        return (_combined(f.verdict) + _not_run("Neural Cleanse was not run", "Verdict panel, or the cleanse command."),
                {"combined": f.verdict.as_dict()})
    if c is None:
        return _not_run("Neural Cleanse takes minutes per class and was not part of this report",
                        "Verdict panel, or the cleanse command."), None
    verdict = f'<p class="verdict {html.escape(c.verdict)}">{html.escape(c.describe())}</p>'
    if f.verdict is not None:  # the combined verdict leads; Neural Cleanse's own line becomes one piece of evidence
        verdict = _combined(f.verdict) + f"<p>Neural Cleanse alone: {html.escape(c.describe())}</p>"
    evidence = _table([
        ("Measured on", f.measured_on.get("cleanse") or f"{c.n_images} clean images"),
        ("Classes optimised", ", ".join(str(k) for k in c.candidates)),
        ("Median mask norm / MAD x 1.4826", f"{c.median:.1f} / {c.mad:.1f} px"),
        ("Anomaly threshold (index 2)", f"{c.threshold_norm:.1f} px"),
        ("Flagged classes", ", ".join(f"{k} ({c.norms[k]:.1f} px)" for k in c.flagged_classes) or "none"),
    ])
    data = c.as_dict() if f.verdict is None else {**c.as_dict(), "combined": f.verdict.as_dict()}
    return verdict + evidence + _img(_cleanse_figure(c), "Reversed-trigger norms per class"), data


def _repair(f: Findings) -> tuple[str, Optional[dict]]:
    if not f.repairs:
        if f.origin == "cli":
            return _not_run("the report command does not repair a model", "Run the repair command, or Verdict & Unlearning > Repair."), None
        return _not_run("no repair by unlearning or fine-pruning was run from the Verdict panel",
                        "Verdict & Unlearning > Repair, or the repair command."), None
    names = {"before": "Before", "after_prune": "After pruning (channels zeroed, not yet fine-tuned)",
             "after_fine_prune": "After fine-pruning (pruned and fine-tuned)", "after": "After the repair"}
    parts, runs = [], []
    for n, r in enumerate(f.repairs, 1):
        held = f"{r.n_holdout} held-out clean images (never trained on)" if r.n_holdout else "the clean images trained on"
        stages = [(names.get(s.stage, s.stage), s.metrics.clean_accuracy, s.metrics.attack_success_rate) for s in r.stages]
        parts.append(f"<h3>Repair {n}: {html.escape(r.method)}"
                     + (f", unlearning the triggers of class {', '.join(map(str, r.flagged_classes))}" if r.flagged_classes else "")
                     + "</h3>")
        parts.append(f"<p>Clean accuracy on {html.escape(held)}; attack success on {html.escape(r.asr_source)}."
                     + (f" Saved to <code>{html.escape(r.saved)}</code>." if r.saved else " Not saved.") + "</p>")
        parts.append(_stage_table(stages))
        runs.append(r.as_dict())
    return "\n".join(parts), {"repairs": runs}


TRIAGE_WORDS = {"backdoored": "Backdoored", "suspicious": "Suspicious", "no evidence": "No evidence found"}


def _triage(f: Findings) -> tuple[str, Optional[dict]]:
    t = f.triage
    if t is None:
        return _not_run("no folder of models was triaged", "Triage panel, or the triage command."), None
    from core.detect.model_level.verdict import targets_label

    total = len(t.rows) + len(t.skipped) + len(t.failed) + len(t.pending)
    state = ("complete" if t.complete else
             f"partial: {len(t.pending)} not judged yet" + (f", {len(t.failed)} failed (tried again by the next run)" if t.failed else ""))
    rows = [("Folder", t.folder), ("Model files", total), ("Judged", len(t.rows)), ("Refused", len(t.skipped)),
            ("Failed", len(t.failed)), ("Not judged yet", len(t.pending)), ("Table", state),
            ("Results store", t.store or "in memory (not kept)"), ("Settings id", (t.settings or "")[:16])]
    parts = [_table(rows)]
    cells = []
    for n, r in enumerate(t.rows, 1):
        level = r.level.replace(" ", "-")
        cells.append(f"<tr><td>{n}</td><td><code>{html.escape(_relative(r.source, t.folder))}</code></td>"
                     f'<td class="verdict {level}">{html.escape(TRIAGE_WORDS.get(r.level, r.level))}</td>'
                     f"<td>{html.escape(r.false_alarm or '-')}</td>"
                     f"<td>{r.score:.3f}</td><td>{html.escape(targets_label(r.targets, r.summary))}</td><td>{r.seconds:.1f}</td>"
                     f"<td>{html.escape(r.summary)}</td></tr>")
    if cells:
        parts.append('<table class="grid"><tr><th>#</th><th>Model file</th><th>Verdict</th><th>Clean models with this answer</th><th>Score</th><th>Targets</th>'
                     f'<th>Seconds</th><th>Why</th></tr>{"".join(cells)}</table>')
    for title, items in (("Refused (not judged, with the reason)", [(s.source, s.reason) for s in t.skipped]),
                         ("Failed (the work died; the next run tries again)", [(s.source, s.reason) for s in t.failed]),
                         ("Not judged yet", [(p, "") for p in t.pending])):
        if items:
            listed = "".join(f"<li><code>{html.escape(_relative(src, t.folder))}</code>{': ' + html.escape(why) if why else ''}</li>"
                             for src, why in items[:MAX_TRIAGE_LISTED])
            more = f"<p>… and {len(items) - MAX_TRIAGE_LISTED} more (all in the JSON).</p>" if len(items) > MAX_TRIAGE_LISTED else ""
            parts.append(f"<h3>{html.escape(title)}: {len(items)}</h3><ul>{listed}</ul>{more}")
    return "\n".join(parts), {**t.as_dict(), "details": t.details}


def _relative(source: str, folder: str) -> str:
    path, base = Path(source), Path(folder)
    return str(path.relative_to(base)) if path.is_relative_to(base) else source


def triage_csv(result: Any) -> str:
    """The ranked table as CSV: judged models in rank order, then refused, failed and not-yet-judged files.

    The verdict column is in words ("no evidence found", never "clean"); ``level`` is the machine value.
    """
    import csv

    from core.detect.model_level.verdict import targets_label

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rank", "source", "verdict", "level", "false_alarm", "score", "targets", "seconds", "summary", "num_classes",
                     "input_shape", "scale", "conversions", "status", "reason"])
    for n, r in enumerate(result.rows, 1):
        words = TRIAGE_WORDS.get(r.level, r.level).lower()
        writer.writerow([n, r.source, words, r.level, r.false_alarm, f"{r.score:.4f}", targets_label(r.targets, r.summary), f"{r.seconds:.1f}", r.summary,
                         r.num_classes, "x".join(map(str, r.input_shape)), r.scale, "; ".join(r.conversions), "judged", ""])
    for status, items in (("refused", result.skipped), ("failed", result.failed)):
        for s in items:
            writer.writerow(["", s.source, *[""] * 11, status, s.reason])
    for source in result.pending:
        writer.writerow(["", source, *[""] * 11, "pending", ""])
    return buffer.getvalue()


TRIAGE_OUTPUTS = (".csv", ".json", ".html", ".htm")


def write_triage(result: Any, out: str | Path, inputs: Iterable[Any] = ()) -> list[Path]:
    """Write the ranked table to ``out`` by its suffix: .csv, .json (the triage command's JSON), or .html (the report's
    triage section, and its JSON beside it). Atomic; never over an input file. Returns the paths written."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in TRIAGE_OUTPUTS:
        raise TrojanScopeError(f"the triage table is written as .csv, .json or .html; received {out}", fixed_by=("output",))
    sources = [p for p in (result.store, *inputs) if p]
    if suffix in (".html", ".htm"):
        return list(write_report(Findings(triage=result, origin="cli"), out, inputs=sources, sections=(TRIAGE,)))
    refuse_overwriting(out, *sources)
    text = triage_csv(result) if suffix == ".csv" else json.dumps(_clean_json(result.as_dict()), indent=2, allow_nan=False)
    with atomic_path(out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return [out]


_SECTION_RENDERERS = {"summary": _summary, "evaluation": _evaluation, "pruning": _pruning, "strip": _strip,
                      "purification": _purification, "inspector": _inspector, "cleanse": _cleanse, "repair": _repair,
                      TRIAGE: _triage}


def _key_findings(f: Findings) -> str:
    """The few lines a colleague reads first."""
    lines = []
    ev = f.evaluation
    if ev is not None and ev.clean_accuracy is not None:
        asr = f", attack success {_pct(ev.attack_success_rate)} on the suspected-poisoned set" if ev.attack_success_rate is not None else ""
        lines.append(f"Clean accuracy {_pct(ev.clean_accuracy)}{asr}.")
    if f.prune is not None:
        p = f.prune
        lines.append(f"Fine-Pruning ({len(p.pruned_channels)} channels of {p.layer} + fine-tuning): attack success "
                     f"{_pct(p.before.attack_success_rate)} → {_pct(p.after_fine_tune.attack_success_rate)}, clean accuracy "
                     f"{_pct(p.before.clean_accuracy)} → {_pct(p.after_fine_tune.clean_accuracy)}.")
    elif f.sweep is not None:
        s = f.sweep.curve[f.sweep.stop]
        lines.append(f"Pruning {f.sweep.stop} channels of {f.sweep.layer}: attack success {_pct(s.attack_success_rate)}, "
                     f"clean accuracy {_pct(s.clean_accuracy)}.")
    for scan in f.all_scans():
        lines.append(f"STRIP flagged {scan.flagged} of {len(scan.rows)} scanned images of {Path(scan.source).name or 'the scan set'}.")
    if f.purification is not None:
        flagged = [p for p in f.purification.purified if p.flagged]
        given = sum(p.purified_label is not None for p in flagged)
        lines.append(f"Purification gave {given} of {len(flagged)} flagged inputs a class back; {len(flagged) - given} cannot be "
                     f"purified (reject class {f.purification.num_classes}).")
    for ins, tr in f.inspected:
        if tr is not None:
            lines.append(f"Transplant test of {Path(ins.source).name or 'an image'}: {tr.flip_rate:.0%} flipped to class "
                         f"{tr.suspect_class} (baseline {tr.baseline:.0%}): "
                         + ("looks like a trigger." if tr.looks_like_trigger else "does not behave like a trigger."))
    if f.verdict is not None:
        lines.append(f"Verdict: {f.verdict.summary}")
    elif f.cleanse is not None:
        lines.append(f.cleanse.describe())
    for r in f.repairs:
        lines.append(f"Repair ({r.method}): attack success {_pct(r.before.attack_success_rate)} → {_pct(r.after.attack_success_rate)}, "
                     f"clean accuracy {_pct(r.before.clean_accuracy)} → {_pct(r.after.clean_accuracy)}.")
    if f.triage is not None:
        t = f.triage
        levels = [r.level for r in t.rows]
        lines.append(f"Triage of {t.folder}: {len(t.rows)} model(s) judged: {levels.count('backdoored')} backdoored, "
                     f"{levels.count('suspicious')} suspicious, {levels.count('no evidence')} with no evidence found; "
                     f"{len(t.skipped)} refused, {len(t.failed)} failed, {len(t.pending)} not judged yet.")
    if not lines:
        return '<p class="not-run">No analysis has been run yet.</p>'
    return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"


# ------------------------------------------------------------------- figures


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_data_uri(fig: Any) -> str:
    """The figure as a ``data:image/png;base64,...`` URI (Agg canvas)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(fig: Any, alt: str) -> str:
    return f'<figure><img src="{png_data_uri(fig)}" alt="{html.escape(alt)}"></figure>'


def _display(image: np.ndarray) -> np.ndarray:
    """Pixel values as stored -> 0..255 RGB for display (images stored as 0..1 are stretched)."""
    from core.inspect.overlay import as_rgb

    image = np.asarray(image, np.float32)
    if image.size and float(image.max()) <= 1.0:
        image = image * 255.0
    return as_rgb(image).astype(np.uint8)


def _pruning_figure(sw: Any, prune: Any) -> Any:
    fig = _figure(8.5, 3.6)
    ax = fig.add_subplot()
    frac = [100 * p.fraction for p in sw.curve]
    ax.plot(frac, [100 * p.clean_accuracy for p in sw.curve], color="#2860b0", lw=2, label="clean accuracy")
    if any(p.attack_success_rate is not None for p in sw.curve):
        ax.plot(frac, [100 * (p.attack_success_rate if p.attack_success_rate is not None else float("nan")) for p in sw.curve],
                color="#c0392b", lw=2, label="attack success rate")
    count = _pruned_count(sw, prune)
    stop = 100 * sw.curve[count].fraction
    ax.axvline(stop, color="#555", ls="--", lw=1)
    ax.annotate(f"pruned: {count}/{sw.channels_total}", (stop, 50), xytext=(4, 0), textcoords="offset points", fontsize=9, color="#333")
    if prune is not None and prune.after_fine_tune.clean_accuracy is not None:
        ax.scatter([stop], [100 * prune.after_fine_tune.clean_accuracy], marker="*", s=140, color="#2860b0", zorder=3,
                   label="after fine-tuning: clean")
        if prune.after_fine_tune.attack_success_rate is not None:
            ax.scatter([stop], [100 * prune.after_fine_tune.attack_success_rate], marker="*", s=140, color="#c0392b", zorder=3,
                       label="after fine-tuning: attack")
    ax.set_xlabel(f"channels of {sw.layer} pruned, least active on clean data first (%)")
    ax.set_ylabel("%")
    ax.set_ylim(-3, 103)
    ax.set_xlim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return fig


def _strip_figure(profile: Any, scan: Any) -> Any:
    fig = _figure(8.5, 3.4)
    ax = fig.add_subplot()
    clean = np.asarray(profile.clean_entropies, np.float64)
    scanned = np.asarray([r.entropy for r in scan.rows], np.float64) if scan is not None else np.zeros(0)
    both = np.concatenate([clean, scanned]) if len(scanned) else clean
    top = max(float(both.max()) if both.size else 1.0, profile.threshold) * 1.05 + 1e-6
    bins = np.linspace(min(0.0, profile.threshold), top, 41)
    ax.hist(clean, bins=bins, density=True, alpha=0.55, color="#2860b0", label=f"clean calibration ({len(clean)})")
    if len(scanned):
        ax.hist(scanned, bins=bins, density=True, alpha=0.55, color="#e67e22", label=f"scanned ({len(scanned)})")
    ax.axvline(profile.threshold, color="#c0392b", lw=2, label=f"threshold {profile.threshold:.3f} (FRR {profile.frr:.1%})")
    ax.set_xlabel("mean entropy over the blends (bits); trojaned inputs sit at the low end")
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _flagged_figure(flagged: Sequence[FlaggedImage], num_classes: int, columns: int = 8) -> Any:
    rows = math.ceil(len(flagged) / columns)
    fig = _figure(1.15 * columns, 1.35 * rows)
    for k, item in enumerate(flagged):
        ax = fig.add_subplot(rows, columns, k + 1)
        ax.imshow(_display(item.image), interpolation="nearest")
        ax.set_title(f"H={_entropy(item.row.entropy)}\nmodel: {item.row.predicted}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def _inspection_figure(inspections: Sequence[Any]) -> Any:
    from core.inspect.overlay import render

    names = ["image"] + [m for m in ("gradcam", "occlusion") if any(m in i.maps for i in inspections)]
    titles = {"image": "flagged image + box", "gradcam": "Grad-CAM", "occlusion": "occlusion"}
    fig = _figure(2.3 * len(names), 2.7 * len(inspections))
    for r, ins in enumerate(inspections):
        image = _display(ins.image).astype(np.float32)
        for c, name in enumerate(names):
            ax = fig.add_subplot(len(inspections), len(names), r * len(names) + c + 1)
            if name == "image":
                tile = render(image, None, ins.primary.box, zoom=4)
                name = textwrap.fill(Path(getattr(ins, "source", "") or "").name or "image", TITLE_WIDTH)
                ax.set_title(f"{name}\npredicted {ins.predicted} ({ins.confidence:.0%})", fontsize=8)
            elif name in ins.maps:
                smap = ins.maps[name]
                tile = render(image, smap.heat, smap.box, zoom=4)
                ax.set_title(f"{titles[name]}\n" + textwrap.fill(smap.detail, TITLE_WIDTH), fontsize=8)
            else:
                tile = np.full((4, 4, 3), 255, np.uint8)
            ax.imshow(tile, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
    return fig


def _cleanse_figure(c: Any) -> Any:
    """Mask norms per class (flagged in red) and, beside them, the reversed triggers of the flagged classes."""
    shown = [k for k in c.flagged_classes if k in c.triggers][:3]
    fig = _figure(8.5 + 1.8 * len(shown), 3.2)
    grid = fig.add_gridspec(1, 1 + len(shown), width_ratios=[4.5] + [1] * len(shown))
    ax = fig.add_subplot(grid[0, 0])
    classes = sorted(c.norms)
    colours = ["#c0392b" if k in c.flagged_classes else "#2860b0" for k in classes]
    ax.bar([str(k) for k in classes], [c.norms[k] for k in classes], color=colours)
    if math.isfinite(c.threshold_norm):
        ax.axhline(c.threshold_norm, color="#c0392b", ls="--", lw=1, label="anomaly index 2")
        ax.legend(fontsize=8)
    ax.set_xlabel("class")
    ax.set_ylabel("reversed trigger L1 norm (px)")
    ax.grid(alpha=0.3, axis="y")
    if len(classes) > 40:
        ax.set_xticks([])
    for n, k in enumerate(shown, 1):
        t = c.triggers[k]
        tile = fig.add_subplot(grid[0, n])
        tile.imshow(_display(t.fusion), interpolation="nearest")
        tile.set_title(f"class {k} trigger\n{t.norm:.0f} px, {t.attack_success:.0%} attack", fontsize=8)
        tile.set_xticks([])
        tile.set_yticks([])
    return fig


# ------------------------------------------------------------------- JSON


def _clean_json(value: Any) -> Any:
    """Plain JSON: NumPy scalars and arrays unwrapped, NaN and infinities as null (the triage store's rule)."""
    from core.detect.model_level.triage_work import plain_json

    return plain_json(value)


# ------------------------------------------------------------------- page

_CSS = """
body { font: 15px/1.45 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d2330; margin: 0; background: #f4f5f7; }
main { max-width: 1020px; margin: 0 auto; padding: 24px 28px 48px; background: white; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 20px; border-bottom: 2px solid #dfe3ea; padding-bottom: 4px; margin-top: 34px; }
h3 { font-size: 16px; margin: 18px 0 6px; }
.meta { color: #667; font-size: 13px; margin: 0 0 14px; }
.key { background: #eef3fb; border-left: 4px solid #2860b0; padding: 6px 16px; }
table { border-collapse: collapse; margin: 10px 0; font-size: 14px; }
table.kv th { text-align: left; font-weight: 600; padding: 3px 18px 3px 0; vertical-align: top; white-space: nowrap; }
table.kv td { padding: 3px 0; word-break: break-all; }
table.grid th, table.grid td { border: 1px solid #dfe3ea; padding: 4px 10px; text-align: left; }
table.grid th { background: #f4f5f7; }
figure { margin: 10px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eceef2; }
.not-run { color: #8a5a00; background: #fff6e0; border-left: 4px solid #e0a100; padding: 6px 12px; }
.verdict.backdoored { color: #8b1a10; font-weight: 600; }
.verdict.suspicious { color: #b26a00; font-weight: 600; } .verdict.no-evidence { color: #5f6368; font-weight: 600; } .verdict.clean { color: #1d6b2a; font-weight: 600; }
code { font-size: 13px; }
@media print { body { background: white; } main { padding: 0; } section { break-inside: avoid-page; } }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="TrojanScope">
<title>TrojanScope findings: {model}</title>
<style>{css}</style>
</head>
<body>
<main>
<h1>TrojanScope findings: {model}</h1>
<p class="meta">Generated {generated}. Figures are embedded; this file needs nothing else to open. The same numbers are in the JSON file beside it.</p>
<div class="key"><h3>Key findings</h3>{key}</div>
{sections}
</main>
</body>
</html>
"""
