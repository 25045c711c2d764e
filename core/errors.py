"""User-facing errors.

Anything an analyst can cause by handing us a bad file or a bad setting raises a
subclass of :class:`TrojanScopeError`. Its message is one line that names the
file, layer or image and says what was expected, so the CLI can print it and
exit 2 and the GUI can show it in a dialog; anything else is a bug (exit 1).

The message speaks of what the analyst gave ("the output path", "the
attacker's target class"), never of a command-line flag: the same message
reaches the GUI, where there are no flags. ``fixed_by`` names the settings that
would fix it; the CLI adds their flags (``cli.common.SETTING_FLAGS``).
"""

from __future__ import annotations


class TrojanScopeError(Exception):
    """A problem with the analyst's input, explained in one line."""

    def __init__(self, message: str = "", *, fixed_by: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.fixed_by = fixed_by


class UnsafeModelError(TrojanScopeError):
    """The file carries something that could run code or reach other files."""


class ModelError(TrojanScopeError):
    """The model cannot be read or is not an image classifier we can analyse."""


class WeightsOnlyError(ModelError):
    """The file holds weights but no architecture: the analyst must name a model file that has one."""


class DataError(TrojanScopeError):
    """A data file or folder cannot be read, or does not fit the model."""


class JobCancelled(Exception):
    """Raised inside a job when the analyst pressed Cancel."""
