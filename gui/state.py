"""What the analyst has opened, and what the session has computed on it, shared by every panel.

Panels read the model and data from here and listen to its signals instead of
talking to each other, so a new panel never needs to know the old ones.

Results live in one place too (:class:`SessionResults`): each panel publishes
its last result together with what it was measured on (the model's sha256 and
the data sets, by role), and the report, the Verdict and the Inspector read
them from here -- never out of another panel's attributes. Opening another
model clears every result (they described a different network); opening other
data marks the results measured on the old data stale, and says so.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from PySide6.QtCore import QObject, Signal

from core.intake.data import Conversion, DataSource
from core.intake.models import LoadedModel

ROLES = {
    "clean_valid": "Clean validation data",
    "clean_test": "Clean test data",
    "poisoned": "Suspected-poisoned data",
    "scan": "Folder to scan",
}


class Kind(str, enum.Enum):
    """The kinds of result a session holds, and the type each carries."""

    EVALUATION = "evaluation"  # core.evaluate.EvalResult
    SWEEP = "sweep"  # core.repair.pruning.SweepResult
    PRUNE = "prune"  # core.repair.pruning.PruneResult (Fine-Pruning panel: pruned + fine-tuned)
    REPAIR = "repair"  # core.repair.repair.RepairResult (Verdict panel: unlearn / fine-prune / both)
    STRIP_PROFILE = "strip_profile"  # core.detect.input_level.strip.StripProfile
    SCAN = "scan"  # core.detect.input_level.strip.ScanResult (every scan of the session)
    INSPECTION = "inspection"  # core.inspect.trigger.Inspection
    TRANSPLANT = "transplant"  # core.inspect.trigger.Transplant (of the inspection published just before)
    CLEANSE = "cleanse"  # core.detect.model_level.cleanse.CleanseResult
    VERDICT = "verdict"  # core.detect.model_level.verdict.Verdict (Verdict panel: the detectors and the measured attack success, combined)
    PURIFICATION = "purification"  # core.repair.purify.PurifyResult (STRIP panel: a scan whose flagged inputs were purified)


# Kinds that keep every result of the session; the others keep only the last one.
ACCUMULATING = {Kind.PRUNE, Kind.REPAIR, Kind.SCAN, Kind.INSPECTION, Kind.TRANSPLANT}


@dataclass
class Published:
    """One result and what it was measured on."""

    kind: Kind
    value: Any
    model_sha256: str
    data: dict[str, str] = field(default_factory=dict)  # role -> path of the data set used
    note: str = ""  # what the figures were measured on, in words (shown beside them)
    stale: str = ""  # why it no longer describes what is open ("" = current)
    parent: Optional["Published"] = None  # e.g. the inspection a transplant belongs to


class SessionResults(QObject):
    """The typed registry of the session's results (see :class:`Kind`)."""

    changed = Signal(str)  # the Kind's value; "" when everything was cleared

    def __init__(self) -> None:
        super().__init__()
        self._items: dict[Kind, list[Published]] = {k: [] for k in Kind}

    def publish(self, kind: Kind, value: Any, model_sha256: str, data: Optional[dict[str, str]] = None,
                note: str = "", parent: Optional[Published] = None) -> Published:
        entry = Published(Kind(kind), value, model_sha256, dict(data or {}), note, "", parent)
        if entry.kind in ACCUMULATING:
            self._items[entry.kind].append(entry)
        else:
            self._items[entry.kind] = [entry]
        self.changed.emit(entry.kind.value)
        return entry

    def latest(self, kind: Kind, current_only: bool = False) -> Optional[Published]:
        items = [e for e in self._items[Kind(kind)] if not (current_only and e.stale)]
        return items[-1] if items else None

    def value(self, kind: Kind) -> Any:
        """The last current (not stale) result of ``kind``, or None."""
        entry = self.latest(kind, current_only=True)
        return None if entry is None else entry.value

    def all(self, kind: Kind) -> list[Published]:
        return list(self._items[Kind(kind)])

    def entries(self) -> Iterable[Published]:
        for kind in Kind:
            yield from self._items[kind]

    def clear(self) -> None:
        self._items = {k: [] for k in Kind}
        self.changed.emit("")

    def mark_stale(self, role: str, reason: str) -> int:
        """Mark every result measured on data ``role`` stale; returns how many."""
        count = 0
        for entry in self.entries():
            if role in entry.data and not entry.stale:
                entry.stale = reason
                count += 1
        if count:
            self.changed.emit("")
        return count


class AppState(QObject):
    model_changed = Signal()
    data_changed = Signal(str)  # the role that changed
    results_stale = Signal(str)  # a line saying what was cleared or marked stale, for the status bar
    data_refused = Signal(str, str)  # role, why: a data set that could not be opened or does not fit the model

    def __init__(self) -> None:
        super().__init__()
        self.loaded: Optional[LoadedModel] = None
        self.data: dict[str, DataSource] = {}
        self.scale = "auto"
        self.target: Optional[int] = None
        self.results = SessionResults()
        self.opened_with: dict[str, str] = {}  # role -> sha256 of the model open when the data was opened
        self.conversion = Conversion()  # what the analyst allowed to convert in data that does not fit the model

    def set_model(self, loaded: LoadedModel) -> None:
        """A new model: nothing computed on the old one describes it, so every result goes.

        Data sets stay open (a clean set often serves several models), but those
        opened with another model are named, never silently reused.
        """
        had = sum(1 for _ in self.results.entries())
        previous = self.loaded
        self.loaded = loaded
        self.results.clear()
        self.model_changed.emit()
        lines = []
        if had:
            lines.append(f"New model: {had} result(s) of the previous model cleared")
        carried = self.carried_over()
        if previous is not None and carried:
            lines.append("still open from the previous model: " + ", ".join(
                f"{ROLES.get(r, r).lower()} ({self.data[r].path.name})" for r in carried) + " -- reopen any that belong to another model")
        if lines:
            self.results_stale.emit("; ".join(lines))

    def carried_over(self) -> list[str]:
        """Roles whose data was opened while another model was loaded."""
        sha = self.loaded.summary.sha256 if self.loaded is not None else ""
        return [r for r in self.data if self.opened_with.get(r, sha) != sha]

    def set_data(self, role: str, source: Optional[DataSource]) -> None:
        old = self.data.get(role)
        if source is None:
            self.data.pop(role, None)
            self.opened_with.pop(role, None)
        else:
            self.data[role] = source
            self.opened_with[role] = self.loaded.summary.sha256 if self.loaded is not None else ""
        if old is not None and (source is None or str(source.path) != str(old.path)):
            stale = self.results.mark_stale(role, f"{ROLES.get(role, role)} changed from {old.path.name}")
            if stale:
                self.results_stale.emit(f"{ROLES.get(role, role)} changed: {stale} result(s) measured on "
                                        f"{old.path.name} are marked stale")
        self.data_changed.emit(role)

    def set_conversion(self, conversion: Conversion) -> None:
        """Allow (or stop allowing) resizing and channel conversion of every open data set."""
        self.conversion = conversion
        for role, source in self.data.items():
            source.allow(conversion)
            self.data_changed.emit(role)

    def unfit(self) -> dict[str, str]:
        """Roles whose data does not fit the open model (shape or labels), with the reason: nothing runs on them."""
        from core.errors import DataError
        from core.intake.fit import check_fit

        if self.loaded is None:
            return {}
        out = {}
        for role, source in self.data.items():
            try:
                check_fit(self.loaded, source.allow(self.conversion), ROLES.get(role, role).lower(), read_pixels=False)
            except DataError as exc:
                out[role] = str(exc)
        return out

    def clean_for_calibration(self) -> Optional[DataSource]:
        """Clean validation data if opened, else clean test data."""
        return self.data.get("clean_valid") or self.data.get("clean_test")

    # --------------------------------------------------------- publishing

    def publish(self, kind: Kind, value: Any, roles: Iterable[str] = (), note: str = "",
                parent: Optional[Published] = None) -> Optional[Published]:
        """Publish ``value`` as measured on the open model and the data of ``roles``."""
        if self.loaded is None:
            return None
        data = {r: str(self.data[r].path) for r in roles if r in self.data}
        return self.results.publish(kind, value, self.loaded.summary.sha256, data, note, parent)

    def calibration_role(self) -> Optional[str]:
        """The role :meth:`clean_for_calibration` reads."""
        return "clean_valid" if "clean_valid" in self.data else ("clean_test" if "clean_test" in self.data else None)


def measured_on(n_holdout: int, state: AppState) -> str:
    """How the repair panels name the images their clean accuracies were measured on."""
    source = state.clean_for_calibration()
    name = source.path.name if source is not None else "the clean data"
    if not n_holdout:
        return f"the clean images of {name} it was trained on (no hold-out)"
    return f"{n_holdout} held-out clean images of {name} (never trained on)"
