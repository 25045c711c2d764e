"""Each model-level detector reduced to one number and the class it points to.

The verdict (core.detect.model_level.verdict) compares these numbers with
what clean models give (core.detect.model_level.levels). They are computed
from plain dictionaries -- class -> mask norm, maximum margin, warp -- so
that the zoo's benchmarks recompute them from cached JSON with the very code
the product runs.

- ``nc``: Neural Cleanse. How many spreads the smallest trigger lies below
  the median trigger (its anomaly index, small side only).
- ``mmbd``: MM-BD. How many spreads the largest maximum margin lies above the
  median, on a log scale (large side only): a backdoor target can be pushed
  far beyond every other class.
- ``warp``: warp inversion. How far the smallest warp lies below the next
  smallest, on a log scale.
- ``ls``: the label-specific check. The smallest one-class trigger over the
  smallest untargeted trigger: about 0.3-0.5 on clean models, above 1 when one
  trigger moves every class to a class of its own (all-to-all).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from core.detect.model_level.cleanse import MAD_CONSISTENCY, MIN_RELATIVE_SPREAD, anomaly_indices

DETECTORS = ("nc", "mmbd", "warp", "ls")
NAMES = {"nc": "Neural Cleanse", "mmbd": "MM-BD", "warp": "warp inversion", "ls": "label-specific check"}
MARGIN_FLOOR = 1e-3  # a class that can never win has a margin <= 0: its log is taken at this floor


def nc_statistic(norms: dict[int, float]) -> tuple[float, Optional[int]]:
    """(anomaly index of the smallest trigger below the median, its class); (0, None) when none lies below."""
    if len(norms) < 3:
        return 0.0, None
    indices, median, _mad = anomaly_indices(norms)
    small = {c: indices[c] for c in norms if norms[c] < median}
    if not small:
        return 0.0, None
    top = max(small, key=lambda c: small[c])
    value = float(small[top])
    return (value if np.isfinite(value) else 1e6), int(top)


def mmbd_statistic(margins: dict[int, float]) -> tuple[float, Optional[int]]:
    """(how many spreads the largest log-margin lies above the median log-margin, its class)."""
    if len(margins) < 3:
        return 0.0, None
    logs = {c: float(np.log(max(m, MARGIN_FLOOR))) for c, m in margins.items()}
    values = np.array(list(logs.values()))
    median = float(np.median(values))
    spread = max(MAD_CONSISTENCY * float(np.median(np.abs(values - median))), float(np.log1p(MIN_RELATIVE_SPREAD)))
    top = max(logs, key=lambda c: logs[c])
    return max(0.0, (logs[top] - median) / spread), int(top)


def warp_statistic(shifts: dict[int, float]) -> tuple[float, Optional[int]]:
    """(log of the second smallest warp over the smallest, the smallest's class): how far one class stands apart.

    Not a deviation from the median: on many models several classes are never reached within the warp's bound
    (they all read as the bound), the median sits on the bound and the spread is nil, so any reached class
    would look like an outlier. A backdoor target is far below even the next easiest class.
    """
    if len(shifts) < 3:
        return 0.0, None
    order = sorted(shifts, key=lambda c: shifts[c])
    first, second = shifts[order[0]], shifts[order[1]]
    return float(np.log(max(second, 1e-6) / max(first, 1e-6))), int(order[0])


def ls_statistic(ratio: Optional[float], reached: bool = True) -> tuple[Optional[float], Optional[int]]:
    """(smallest one-class trigger / untargeted trigger, None): high when one trigger moves every class its own way."""
    if ratio is None:
        return None, None
    if not reached or not np.isfinite(ratio) or ratio <= 0:
        return 0.0, None
    return float(1.0 / ratio), None
