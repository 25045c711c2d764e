"""The STRIP panel's scan column: the scan and export buttons, the flagged-only and purify switches, the live table with its row menu, the large-image dialog."""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6.QtCore import QModelIndex, QSize, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QDialog,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QPushButton,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from gui.images import to_pixmap
from gui.strip_table import ACCEPTED, FLAGGED, SCORE_HEADER, THUMB_PX, FlaggedFilter, StripTableModel, display_name


class ScanView(QWidget):
    """The scanned rows; the panel connects the scan and export buttons and answers the two row signals."""

    send_requested = Signal(int)  # a source row for the Inspector
    show_requested = Signal(int)  # a source row to show large

    def __init__(self) -> None:
        super().__init__()
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        box = QGroupBox("Scan")
        row = QVBoxLayout(box)
        buttons = QHBoxLayout()
        self.scan_loaded_button = QPushButton("Scan loaded set")
        self.scan_loaded_button.setToolTip("Scan the 'folder to scan' opened with the model (the demo's PNG folder)")
        self.scan_folder_button = QPushButton("Scan folder…")
        self.scan_folder_button.setToolTip("A folder of images, searched recursively")
        self.scan_file_button = QPushButton("Scan HDF5/npz…")
        for b in (self.scan_loaded_button, self.scan_folder_button, self.scan_file_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        row.addLayout(buttons)
        tools = QHBoxLayout()
        self.purify_check = QCheckBox("Purify flagged")
        self.purify_check.setChecked(True)
        self.purify_check.setToolTip(
            "After the scan, give each flagged input its true class back: the trigger cut out and inpainted (the trigger the "
            "flagged inputs share, the verdict's reversed trigger, or a salient box), accepted only when the fills and the "
            "clean reference model agree; the clean reference's answer for image-wide triggers; otherwise 'cannot purify' "
            "and the reject class")
        tools.addWidget(self.purify_check)
        self.only_flagged = QCheckBox("Flagged only")
        self.export_csv_button = QPushButton("Export CSV…")
        self.export_json_button = QPushButton("Export JSON…")
        self.counts = QLabel("")
        tools.addWidget(self.only_flagged)
        tools.addWidget(self.counts, 1)
        tools.addWidget(self.export_csv_button)
        tools.addWidget(self.export_json_button)
        row.addLayout(tools)
        column.addWidget(box)

        self.model = StripTableModel()
        self.proxy = FlaggedFilter()
        self.proxy.setSourceModel(self.model)
        self.only_flagged.toggled.connect(self.proxy.set_only_flagged)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.horizontalHeader().setSortIndicator(StripTableModel.THUMB, Qt.SortOrder.AscendingOrder)  # scan order
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setDefaultSectionSize(THUMB_PX + 4)
        self.table.verticalHeader().setVisible(False)
        self.table.setIconSize(QSize(THUMB_PX, THUMB_PX))
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(StripTableModel.FILE, QHeaderView.ResizeMode.Stretch)
        for col, width in ((StripTableModel.THUMB, THUMB_PX + 16), (StripTableModel.ENTROPY, 80), (StripTableModel.PREDICTED, 90),
                           (StripTableModel.VERDICT, 110), (StripTableModel.PURIFIED, 170)):
            header.resizeSection(col, width)
        self.table.doubleClicked.connect(self.open_row)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.customContextMenuRequested.connect(self._row_menu)
        column.addWidget(self.table, 1)
        self.skipped_label = QLabel("")
        self.skipped_label.setWordWrap(True)
        column.addWidget(self.skipped_label)

    def set_score_header(self, method: str) -> None:
        """The score column is named after the line's detector, wide enough for its name."""
        self.model.HEADERS = [*StripTableModel.HEADERS[:2], SCORE_HEADER.get(method, "Score"), *StripTableModel.HEADERS[3:]]
        self.model.headerDataChanged.emit(Qt.Orientation.Horizontal, 0, len(self.model.HEADERS) - 1)
        header = self.table.horizontalHeader()  # the score's name is the column's widest text ("Disbelief x certainty")
        header.resizeSection(StripTableModel.ENTROPY, max(80, header.sectionSizeHint(StripTableModel.ENTROPY)))

    def open_row(self, proxy_index: QModelIndex) -> None:
        """Double-click: a flagged row goes to the Inspector (tab switches, inspection starts); others show large."""
        r = self.proxy.mapToSource(proxy_index).row()
        if self.model.is_flagged(r):
            self.send_requested.emit(r)
        else:
            self.show_requested.emit(r)

    def _row_menu(self, pos: Any) -> None:
        index = self.table.indexAt(pos)
        if not index.isValid():
            return
        r = self.proxy.mapToSource(index).row()
        menu = QMenu(self)
        menu.addAction("Send to Inspector", lambda: self.send_requested.emit(r))
        menu.addAction("Show image…", lambda: self.show_requested.emit(r))
        self.row_menu = menu
        menu.popup(self.table.viewport().mapToGlobal(pos))

    def show_image(self, r: int, image: np.ndarray) -> QDialog:
        """Row ``r``'s image large, with its score and verdict; the dialog is open when returned."""
        row = self.model.rows[r]
        flagged = self.model.is_flagged(r)
        dialog = QDialog(self)
        dialog.setWindowTitle(display_name(row))
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        v = QVBoxLayout(dialog)
        picture = QLabel()
        picture.setPixmap(to_pixmap(image, 336))
        picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
        caption = QLabel(
            f"{row.source} (item {row.index})<br>{SCORE_HEADER.get(self.model.detector, 'score').lower()} {self.model.entropy[r]:.4f}"
            f"{' (flagged by ' + self.model.flagged_by(r) + ')' if flagged else ''}, model class {row.predicted} ({row.confidence:.0%}) → "
            f"<b style='color:{(FLAGGED if flagged else ACCEPTED).name()}'>{'FLAGGED, label ' + str(self.model.num_classes) if flagged else 'accepted'}</b>"
        )
        purified = self.model.purification(r)
        if purified is not None:
            caption.setText(caption.text() + f"<br>Purified: {self.model.purified_text(r)}: {purified.reason}")
            caption.setWordWrap(True)
        caption.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        send = QPushButton("Send to Inspector")
        send.clicked.connect(lambda: (dialog.close(), self.send_requested.emit(r)))
        v.addWidget(picture)
        v.addWidget(caption)
        v.addWidget(send)
        dialog.open()
        return dialog
