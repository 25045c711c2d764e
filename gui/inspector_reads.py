"""The Inspector's reads on the worker thread: the pixel scale, measured once per model and clean set, and the clean images, read once per source."""

from __future__ import annotations

from typing import Any

from core.jobs import Job

CLEAN_LIMIT = 5000  # clean images read for the transplant test and the mean fill


class CachedReads:
    """Sub-jobs (``yield from``) that read what inspections and transplants share; :meth:`forget` when the model changes."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self._clean: tuple[Any, Any] = (None, None)  # (source, Arrays)
        self._scale: tuple[Any, Any, str] = (None, None, "")  # (model, source, scale)

    def forget(self) -> None:
        self._clean = (None, None)
        self._scale = (None, None, "")

    def scale_job(self) -> Job[str]:
        """The pixel scale: the analyst's choice, or measured once on clean data for ``auto``."""
        from core.evaluate import choose_scale
        from core.jobs import Progress

        loaded, clean = self.state.loaded, self.state.clean_for_calibration()
        if self.state.scale != "auto":
            return self.state.scale
        model, source, scale = self._scale
        if model is loaded and source is clean and scale:
            return scale
        yield Progress(None, "Choosing the input scale")
        scale, _note = choose_scale(loaded, clean, "auto")
        self._scale = (loaded, clean, scale)
        return scale

    def clean_job(self) -> Job[Any]:
        """Clean images (up to :data:`CLEAN_LIMIT`), read once per source."""
        from core.intake.data import load_arrays
        from core.errors import DataError
        from core.jobs import Progress

        clean = self.state.data.get("clean_test") or self.state.clean_for_calibration()
        if clean is None:
            raise DataError("the transplant test and the mean fill need clean data: open clean test or validation data first")
        source, arrays = self._clean
        if source is clean:
            return arrays
        yield Progress(None, f"Reading clean images from {clean.path.name}")
        arrays = load_arrays(clean, self.state.loaded.input_shape, CLEAN_LIMIT)
        if len(arrays) == 0:
            raise DataError(f"{clean.path}: no readable clean images")
        self._clean = (clean, arrays)
        return arrays
