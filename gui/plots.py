"""Plot helpers shared by the panels: a legend that sits under the plot, never over its data."""

from __future__ import annotations

from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QSizeF, Qt

LEGEND_ROW = 4  # PlotItem's grid: 0 title, 1 top axis, 2 view box, 3 bottom axis; the legend goes under them
LEGEND_HEIGHT = 22


class _Legend(pg.LegendItem):
    """A legend that never asks for more width than the plot has (its entries' widths would widen the plot past its view)."""

    def sizeHint(self, which: Qt.SizeHint, constraint: QSizeF = QSizeF()) -> Any:  # noqa: N802 (Qt API)
        hint = super().sizeHint(which, constraint)
        return QSizeF(0, hint.height()) if which == Qt.SizeHint.MinimumSize else hint


def legend_below(plot: pg.PlotWidget, columns: int = 2) -> pg.LegendItem:
    """A one-line legend under ``plot``'s x-axis label; curves made later with ``name=`` join it.

    A legend inside the view box covers whatever bars or curves pass under it
    (and which part that is depends on the data); below the axis it covers nothing.
    """
    item = plot.getPlotItem()
    legend = _Legend(colCount=columns, labelTextColor="k", horSpacing=12, verSpacing=-6)
    legend.layout.setContentsMargins(8, 0, 0, 0)
    legend.setMaximumHeight(LEGEND_HEIGHT)
    item.layout.addItem(legend, LEGEND_ROW, 0, 1, 3)  # under the left axis too: the plot's full width
    item.legend = legend  # PlotItem.plot(name=...) and addItem add their entries here
    return legend


def titled_plot(title: str, xlabel: str, ylabel: str, legend: bool = True) -> pg.PlotWidget:
    """A white plot with a title, axis labels, a light grid and (by default) a legend under it, never over the curves."""
    plot = pg.PlotWidget(background="w")
    plot.setTitle(title, color="k")
    plot.setLabel("bottom", xlabel)
    plot.setLabel("left", ylabel)
    plot.showGrid(x=True, y=True, alpha=0.25)
    if legend:
        legend_below(plot)
    return plot
