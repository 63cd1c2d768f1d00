"""The index panel: the project's raster layers (checkable, with state and band map) and the job buttons.

States shown per row: "not indexed", "indexing x%", "indexed", "stale" (the index holds tiles
from a raster whose layer was removed or changed, or an interrupted job; "Update" fixes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtGui import QBrush, QColor, QFont
from qgis.PyQt.QtWidgets import (
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..layouts import hbox
from ..settings.settings import IndexOptions
from .index_options_widget import IndexOptionsWidget

KEY_ROLE = Qt.ItemDataRole.UserRole + 1
_STATE_COLORS = {"indexed": "#2e7d32", "stale": "#b26a00", "indexing": "#1565c0", "not indexed": "#666666"}


@dataclass
class LayerRow:
    """One row: a project layer (key = layer id) or an indexed raster without a layer (key = "raster:<id>")."""

    key: str
    name: str
    state: str = "not indexed"
    band_map: str = ""
    checkable: bool = True


class IndexWidget(QWidget):
    index_requested = pyqtSignal()
    update_requested = pyqtSignal()
    cancel_requested = pyqtSignal()
    clear_requested = pyqtSignal()

    def __init__(self, options: IndexOptions, parent=None) -> None:
        super().__init__(parent)
        self._running = False
        self._engine_problem: Optional[str] = None
        self.layer_list = QListWidget(self)
        self.layer_list.setToolTip("Raster layers of the project; checked layers are indexed by “Index”")
        self.band_edit = QLineEdit(self)
        self.band_edit.setPlaceholderText("R,G,B[,NIR] 1-based, e.g. 4,3,2,8")
        self.band_edit.setEnabled(False)
        self.options_widget = IndexOptionsWidget(options, self)
        self.index_button = QPushButton("Index", self)
        self.index_button.setToolTip("Caption and embed the checked layers (tiles already indexed are skipped)")
        self.update_button = QPushButton("Update", self)
        self.update_button.setToolTip("Index what changed in the project's rasters and drop removed ones")
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setEnabled(False)
        self.clear_button = QPushButton("Clear", self)
        self.clear_button.setToolTip("Remove every raster from this project's index")
        # shown only while a job runs: the phase (starting the engine, loading models, captioning
        # x/N tiles, rate, time left) and a bar that moves with the tiles
        self.progress_bar = QProgressBar(self)
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setVisible(False)
        self.phase_label = QLabel("", self)
        self.phase_label.setWordWrap(True)
        self.phase_label.setVisible(False)

        band_form = QFormLayout()
        band_form.addRow("Band map", self.band_edit)
        opts_box = QGroupBox("Captioning and tiling", self)
        QVBoxLayout(opts_box).addWidget(self.options_widget)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.layer_list, 1)
        lay.addLayout(band_form)
        lay.addWidget(opts_box)
        lay.addLayout(hbox(self.index_button, self.update_button, self.cancel_button, self.clear_button))
        lay.addWidget(self.phase_label)
        lay.addWidget(self.progress_bar)

        self._rows: dict[str, LayerRow] = {}
        self.layer_list.currentItemChanged.connect(self._on_current_changed)
        self.band_edit.editingFinished.connect(self._on_band_edited)
        self.index_button.clicked.connect(self.index_requested)
        self.update_button.clicked.connect(self.update_requested)
        self.cancel_button.clicked.connect(self.cancel_requested)
        self.clear_button.clicked.connect(self._confirm_clear)

    # --- rows --------------------------------------------------------------------------------
    def set_rows(self, rows: list[LayerRow]) -> None:
        """Replace the list, keeping check marks and edited band maps of rows that stay."""
        checked = {k for k in self._rows if self._item(k) is not None and self._is_checked(k)}
        edited = {k: r.band_map for k, r in self._rows.items()}
        current = self.current_key()
        self.layer_list.clear()
        self._rows = {}
        for row in rows:
            if row.key in edited and edited[row.key]:
                row.band_map = edited[row.key]
            self._rows[row.key] = row
            item = QListWidgetItem(self.layer_list)
            item.setData(KEY_ROLE, row.key)
            if row.checkable:
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                keep = row.key in checked or row.key not in edited
                item.setCheckState(Qt.CheckState.Checked if keep else Qt.CheckState.Unchecked)
            else:
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsUserCheckable)
                font = QFont(item.font())
                font.setItalic(True)
                item.setFont(font)
            self._paint(item, row)
        if current and self._item(current) is not None:
            self.select_key(current)
        elif self.layer_list.count():
            self.layer_list.setCurrentRow(0)  # the band map box shows the first layer's guess

    def set_state(self, key: str, state: str) -> None:
        row = self._rows.get(key)
        item = self._item(key)
        if row is None or item is None:
            return
        row.state = state
        self._paint(item, row)

    def state(self, key: str) -> Optional[str]:
        row = self._rows.get(key)
        return row.state if row else None

    def rows(self) -> list[LayerRow]:
        return list(self._rows.values())

    def rows_by_key(self) -> dict[str, LayerRow]:
        return dict(self._rows)

    def checked_keys(self) -> list[str]:
        return [k for k, r in self._rows.items() if r.checkable and self._is_checked(k)]

    def set_checked(self, key: str, checked: bool) -> None:
        item = self._item(key)
        if item is not None and self._rows[key].checkable:
            item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)

    def band_map_text(self, key: str) -> str:
        row = self._rows.get(key)
        return row.band_map if row else ""

    def set_band_map_text(self, key: str, text: str) -> None:
        if key in self._rows:
            self._rows[key].band_map = text
            if key == self.current_key():
                self.band_edit.setText(text)

    def current_key(self) -> Optional[str]:
        item = self.layer_list.currentItem()
        return item.data(KEY_ROLE) if item is not None else None

    def select_key(self, key: str) -> None:
        item = self._item(key)
        if item is not None:
            self.layer_list.setCurrentItem(item)

    #: tooltips of Index and Update while they can run
    _JOB_TIPS = {"index": "Caption and embed the checked layers (tiles already indexed are skipped)",
                 "update": "Index what changed in the project's rasters and drop removed ones"}

    @property
    def engine_problem(self) -> Optional[str]:
        """Why the engine cannot run a job now (None when it can)."""
        return self._engine_problem

    def set_engine_problem(self, problem: Optional[str]) -> None:
        """Index and Update need the engine: disabled, with the reason in their tooltips, while it is not ready."""
        self._engine_problem = problem
        self.set_running(self._running)

    def set_running(self, running: bool) -> None:
        """During a job the options and band maps are frozen (they would not apply to it anyway)."""
        self._running = running
        problem = self._engine_problem
        for name, b in (("index", self.index_button), ("update", self.update_button)):
            b.setEnabled(not running and problem is None)
            b.setToolTip(self._JOB_TIPS[name] if problem is None else f"Not available: {problem} Fix: Set up engine…")
        self.clear_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)
        self.cancel_button.setText("Cancel")
        self.options_widget.setEnabled(not running)
        self.band_edit.setEnabled(not running and bool(self._rows.get(self.current_key() or "")))
        self.progress_bar.setVisible(running)
        self.phase_label.setVisible(running)
        if running:
            self.progress_bar.setRange(0, 0)  # busy until the first tile is done
            self.phase_label.setText("Starting…")

    def set_progress(self, text: str, done: int = 0, total: int = 0) -> None:
        """The phase line and the bar; total 0 = a phase without a count (busy indicator)."""
        self.phase_label.setText(text)
        if total > 0:
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(min(done, total))
            self.progress_bar.setFormat(f"{done}/{total} tiles (%p%)")
        else:
            self.progress_bar.setRange(0, 0)

    def set_cancelling(self) -> None:
        self.cancel_button.setEnabled(False)
        self.cancel_button.setText("Cancelling…")
        self.phase_label.setText("Cancelling… (what is done is kept)")

    def options(self) -> IndexOptions:
        return self.options_widget.options()

    # --- internals ---------------------------------------------------------------------------
    def _item(self, key: str) -> Optional[QListWidgetItem]:
        for i in range(self.layer_list.count()):
            it = self.layer_list.item(i)
            if it.data(KEY_ROLE) == key:
                return it
        return None

    def _is_checked(self, key: str) -> bool:
        it = self._item(key)
        return it is not None and it.checkState() == Qt.CheckState.Checked

    def _paint(self, item: QListWidgetItem, row: LayerRow) -> None:
        item.setText(f"{row.name}  —  {row.state}")
        base = row.state.split(" ")[0] if not row.state.startswith("not") else "not indexed"
        item.setForeground(QBrush(QColor(_STATE_COLORS.get(base, "#000000"))))
        item.setToolTip(f"{row.name}: {row.state}" + (f"\nband map {row.band_map}" if row.band_map else ""))

    def _on_current_changed(self, current, _previous) -> None:
        key = current.data(KEY_ROLE) if current is not None else None
        row = self._rows.get(key) if key else None
        self.band_edit.setEnabled(bool(row and row.checkable))
        self.band_edit.setText(row.band_map if row else "")

    def _on_band_edited(self) -> None:
        key = self.current_key()
        if key in self._rows:
            self._rows[key].band_map = self.band_edit.text().strip()

    def _confirm_clear(self) -> None:
        answer = QMessageBox.question(
            self, "Clear search index", "Remove every raster from this project's search index?"
        )
        if answer == QMessageBox.StandardButton.Yes:
            self.clear_requested.emit()
