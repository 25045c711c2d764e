"""The STRIP panel's scan rows: the table model (verdicts at the current threshold, purified labels), the flagged-only filter, and what is read off the rows (names, images, exports, the report's scan result)."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtGui import QColor

from core.detect.input_level import scanner
from core.detect.input_level import strip
from core.repair import purify
from gui.images import to_pixmap

THUMB_PX = 40
FLAGGED = QColor("#b3261e")
ACCEPTED = QColor("#1b7f3a")
PURIFIED = QColor("#1f5fa8")
SHORT_METHODS = {purify.KEPT: "kept", purify.SHARED: "shared trigger", purify.TRIGGER: "reversed trigger", purify.BOX: "salient box",
                 purify.REFERENCE: "clean reference", purify.CANNOT: "cannot purify"}
SCORE_HEADER = {"strip": "Entropy", "features": "Distance", "scaleup": "SCALE-UP", "masking": "Mask drop", "target_features": "Target distance",
                "reference": "Disbelief x certainty"}


def primary_score(row: Any, name: str) -> float:
    """The score of the histogram's detector for a STRIP row or a scanner row."""
    return float(row.entropy) if isinstance(row, strip.StripRow) else float(row.scores[name])


def flagged_by_others(row: Any, name: str) -> bool:
    return isinstance(row, scanner.ScannerRow) and any(d != name for d in row.flagged_by)


class StripTableModel(QAbstractTableModel):
    """Scanned rows; verdicts follow the current threshold, not the one at scan time."""

    HEADERS = ["Image", "File", "Entropy", "Predicted", "Verdict", "Purified"]
    THUMB, FILE, ENTROPY, PREDICTED, VERDICT, PURIFIED = range(6)

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[Any] = []  # strip.StripRow or scanner.ScannerRow
        self.purified: dict[int, purify.Purified] = {}  # row -> its purification (flagged rows of a scan with purification)
        self.thumbs: list[np.ndarray] = []
        self.names: list[str] = []
        self.entropy = np.zeros(1024)  # the line's detector's score; doubles when full (cheap appends, vectorised verdicts)
        self.others = np.zeros(1024, bool)  # flagged by another detector (combined mode)
        self.threshold = 0.0
        self.tail = "low"  # low: below the line is flagged (STRIP); high: above (feature space)
        self.detector = "strip"
        self.num_classes = 0

    # -- feeding
    def clear(self) -> None:
        self.beginResetModel()
        self.rows, self.thumbs, self.names = [], [], []
        self.purified = {}
        self.endResetModel()

    def append(self, rows: list[Any], thumbs: list[np.ndarray]) -> None:
        if not rows:
            return
        n = len(self.rows)
        while n + len(rows) > len(self.entropy):
            self.entropy = np.concatenate([self.entropy, np.zeros_like(self.entropy)])
            self.others = np.concatenate([self.others, np.zeros_like(self.others)])
        self.entropy[n : n + len(rows)] = [primary_score(r, self.detector) for r in rows]
        self.others[n : n + len(rows)] = [flagged_by_others(r, self.detector) for r in rows]
        self.beginInsertRows(QModelIndex(), n, n + len(rows) - 1)
        self.rows.extend(rows)
        self.thumbs.extend(thumbs)
        self.names.extend(display_name(r) for r in rows)
        self.endInsertRows()

    def set_purified(self, positions: Any, purified: Any) -> None:
        """Rows ``positions`` got their purification (the scan's second pass)."""
        for r, p in zip(positions, purified):
            self.purified[int(r)] = p
        if positions:
            self.dataChanged.emit(self.index(min(positions), self.VERDICT), self.index(max(positions), self.PURIFIED))

    def purification(self, row: int) -> Optional[purify.Purified]:
        """The row's purification while it is flagged (a row the line no longer flags needs none)."""
        return self.purified.get(row) if self.is_flagged(row) else None

    def set_threshold(self, threshold: float) -> None:
        self.threshold = float(threshold)
        if self.rows:
            self.dataChanged.emit(self.index(0, self.PREDICTED), self.index(len(self.rows) - 1, self.PURIFIED))

    # -- reading
    def entropies(self) -> np.ndarray:
        return self.entropy[: len(self.rows)]

    def flagged_mask(self) -> np.ndarray:
        e = self.entropies()
        beyond = e < self.threshold if self.tail == "low" else e > self.threshold
        return beyond | self.others[: len(self.rows)]

    def is_flagged(self, row: int) -> bool:
        beyond = self.entropy[row] < self.threshold if self.tail == "low" else self.entropy[row] > self.threshold
        return bool(beyond or self.others[row])

    def flagging(self, row: int) -> list[str]:
        """The detectors that flag the row, the shown one at the current (perhaps dragged) threshold."""
        r = self.rows[row]
        beyond = self.entropy[row] < self.threshold if self.tail == "low" else self.entropy[row] > self.threshold
        return ([self.detector] if beyond else []) + [d for d in getattr(r, "flagged_by", ()) if d != self.detector]

    def flagged_by(self, row: int) -> str:
        """Which detectors flag the row at the current threshold, e.g. 'STRIP+feature space'."""
        return "+".join(scanner.LABELS[d] for d in self.flagging(row))

    def guarded_label(self, row: int) -> int:
        """The guarded classifier's answer: the model's class, or for a flagged row its purified class (N without one)."""
        if not self.is_flagged(row):
            return self.rows[row].predicted
        p = self.purified.get(row)
        return self.num_classes if p is None else p.guarded(self.num_classes)

    def purified_text(self, row: int) -> str:
        """'→ 3 (98%, shared trigger)', 'cannot purify → 10', 'not purified' for a row flagged after the scan; '' when not flagged."""
        if not self.is_flagged(row):
            return ""
        p = self.purified.get(row)
        if p is None:
            return "not purified" if self.purified else ""
        if p.purified_label is None:
            return f"cannot purify → {self.num_classes}"
        return f"→ {p.purified_label} ({p.confidence:.0%}, {SHORT_METHODS.get(p.method, p.method)})"

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802 (Qt API)
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self.HEADERS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: N802
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.HEADERS[section]
        return None

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        r, c = index.row(), index.column()
        row = self.rows[r]
        if role == Qt.ItemDataRole.DisplayRole:
            if c == self.FILE:
                return self.names[r]
            if c == self.ENTROPY:
                return f"{self.entropy[r]:.4f}"
            if c == self.PREDICTED:
                return f"{row.predicted} ({row.confidence:.0%})"
            if c == self.VERDICT:
                if not self.is_flagged(r):
                    return "accepted"
                p = self.purified.get(r)
                return "FLAGGED" if p is not None and p.purified_label is not None else f"FLAGGED → {self.num_classes}"
            if c == self.PURIFIED:
                return self.purified_text(r)
        elif role == Qt.ItemDataRole.DecorationRole and c == self.THUMB and r < len(self.thumbs) and self.thumbs[r].size:
            return to_pixmap(self.thumbs[r], THUMB_PX)
        elif role == Qt.ItemDataRole.ForegroundRole and c == self.VERDICT:
            return FLAGGED if self.is_flagged(r) else ACCEPTED
        elif role == Qt.ItemDataRole.ForegroundRole and c == self.PURIFIED:
            p = self.purification(r)
            return PURIFIED if p is not None and p.purified_label is not None else FLAGGED
        elif role == Qt.ItemDataRole.ToolTipRole and c == self.PURIFIED and self.purification(r) is not None:
            return self.purification(r).reason
        elif role == Qt.ItemDataRole.ToolTipRole:
            scores = ", ".join(f"{scanner.LABELS[k]} {v:.4f}" for k, v in getattr(row, "scores", {"strip": getattr(row, "entropy", 0.0)}).items())
            by = f"; flagged by {self.flagged_by(r)}" if self.is_flagged(r) else ""
            return f"{row.source} (item {row.index}): {scores}{by}"
        elif role == Qt.ItemDataRole.UserRole:  # sort keys
            if c == self.FILE:
                return self.names[r]
            if c == self.ENTROPY:
                return float(self.entropy[r])
            if c == self.PREDICTED:
                return row.predicted
            if c == self.PURIFIED:
                return self.guarded_label(r)
            return float(self.entropy[r]) if c == self.VERDICT else r
        return None


class FlaggedFilter(QSortFilterProxyModel):
    """Sorting by value, and the 'flagged only' filter."""

    def __init__(self) -> None:
        super().__init__()
        self.only_flagged = False
        self.setSortRole(Qt.ItemDataRole.UserRole)

    def set_only_flagged(self, on: bool) -> None:
        self.only_flagged = on
        self.invalidateFilter()

    def filterAcceptsRow(self, row: int, parent: QModelIndex) -> bool:  # noqa: N802
        return not self.only_flagged or self.sourceModel().is_flagged(row)


def display_name(row: Any) -> str:
    """The file name, or file#item for images inside an HDF5/npz file."""
    name = Path(row.source).name
    return name if Path(row.source).suffix.lower() not in (".h5", ".hdf5", ".npz") else f"{name}#{row.index}"


def full_image(model: StripTableModel, r: int, loaded: Optional[Any]) -> np.ndarray:
    """The model's view of row ``r``'s input: re-read image files; arrays keep their stored copy."""
    row = model.rows[r]
    path = Path(row.source)
    if loaded is not None and path.is_file() and path.suffix.lower() not in (".h5", ".hdf5", ".npz"):
        from core.intake.data import ImageUnreadable, conform, read_image

        try:
            return conform(read_image(path)[None].astype(np.float32), loaded.input_shape)[0]
        except ImageUnreadable:
            pass
    return model.thumbs[r].astype(np.float32)


def result_rows(model: StripTableModel) -> list[dict[str, Any]]:
    """Every row as a dict, with its verdict at the model's current threshold."""
    out = []
    for i, row in enumerate(model.rows):
        d = row.as_dict()
        d["flagged"] = model.is_flagged(i)
        d["flagged_by"] = model.flagged_by(i)
        d["label"] = model.guarded_label(i)
        p = model.purification(i)
        if model.purified:
            d.update({"purified_label": None if p is None else p.purified_label, "purify_method": None if p is None else p.method,
                      "purify_reason": None if p is None else p.reason})
        out.append(d)
    return out


def export_text(kind: str, rows: list[dict[str, Any]], p: scanner.ScanProfile, threshold: Optional[float], skipped: list, source: str) -> str:
    """The rows as JSON (with the profile's thresholds and false-rejection estimate) or CSV."""
    if kind == "json":
        est = p.frr_estimate()
        return json.dumps({
            "method": p.method, "threshold": threshold, "thresholds": p.thresholds(), "frr": est.bound,
            "frr_estimate": est.as_dict(), "num_classes": p.num_classes, "scanned": len(rows), "flagged": sum(r["flagged"] for r in rows),
            "results": rows, "skipped": [s.as_dict() for s in skipped], "source": source,
        }, indent=1, allow_nan=False)
    buffer = io.StringIO()
    fields = ["source", "index", "entropy", "scores", "flagged", "flagged_by", "label", "predicted", "confidence"]
    if any("purified_label" in r for r in rows):
        fields += ["purified_label", "purify_method", "purify_reason"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def detectors_line(current: scanner.ScanProfile, model: StripTableModel) -> str:
    """Every detector of the method with its threshold and how many rows it flagged: the report's STRIP section
    would otherwise describe only STRIP's threshold beside a combined scan's verdicts."""
    counts = Counter(name for i in range(len(model.rows)) for name in model.flagging(i))
    parts = [f"{scanner.LABELS[name]} {'below' if det.tail == 'low' else 'above'} {det.threshold:.4g}: {counts[name]} flagged"
             for name, det in current.detectors.items()]
    return (f"an image is flagged when any of {len(parts)} detectors flags it ({'; '.join(parts)}); "
            f"false rejection of the calibrated method on unseen clean inputs: {current.frr_estimate().describe()}")


def scan_result(profile: scanner.ScanProfile, current: scanner.ScanProfile, model: StripTableModel, part: str, skipped: list,
                source: str) -> strip.ScanResult:
    """A scan as the report's STRIP section reads it: STRIP rows with the method's verdicts at the model's threshold.

    ``part`` is empty for a finished scan, else what stopped it; ``current`` is the method at the line the verdicts were read at."""
    rows = [strip.StripRow(r.source, r.index, primary_score(r, "strip"), model.is_flagged(i), model.guarded_label(i),
                           r.predicted, r.confidence) for i, r in enumerate(model.rows)]
    warnings = [f"scan incomplete{part}: {len(rows)} rows"] if part else []
    if profile.method != "strip":
        warnings.append(f"verdicts from the {scanner.LABELS[profile.method]} method, not STRIP alone")
    published = profile.detectors["strip"]  # with the line the verdicts above were read at
    if model.detector == "strip":
        published = published.with_threshold(model.threshold)
    detectors = detectors_line(current, model) if profile.method != "strip" else ""
    return strip.ScanResult(published, rows, list(skipped), warnings, source, detectors)
