"""The search panel: query box, top-N, "only within current map extent", results list, export.

It only emits signals; the controller decides what a search means (worker, task, map), so the
panel can be tested and screenshotted without an engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qgis.PyQt.QtCore import QSize, Qt, QTimer, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from ..layouts import hbox
from ..settings.settings import SearchOptions
from .results_model import COL_CAPTION, COL_RANK, COL_RASTER, COL_SCALE, COL_SCORE, COL_THUMB, THUMB_SIZE, ResultsModel

if TYPE_CHECKING:  # numpy comes with core.types: not at QGIS start-up
    from ...core.types import Hit


class SearchWidget(QWidget):
    #: query text, options {"top", "only_extent", "fusion"}
    search_requested = pyqtSignal(str, dict)
    hit_selected = pyqtSignal(object)
    hit_activated = pyqtSignal(object)
    export_requested = pyqtSignal()
    zoom_requested = pyqtSignal()
    #: "More like this" on a result: the Hit whose tile is the example
    like_requested = pyqtSignal(object)
    #: the "tiles like the one I click" map tool was asked for
    like_tool_requested = pyqtSignal()
    surface_requested = pyqtSignal()

    def __init__(self, options: SearchOptions, parent=None, debounce_ms: int = 0) -> None:
        super().__init__(parent)
        self._fusion = options.fusion
        self.query_edit = QLineEdit(self)
        self.query_edit.setPlaceholderText("Describe what you look for, e.g. dense forest next to a river")
        self.query_edit.setClearButtonEnabled(True)
        self.search_button = QPushButton("Search", self)
        self.top_spin = QSpinBox(self)
        self.top_spin.setRange(1, 500)
        self.top_spin.setValue(max(1, min(500, int(options.top))))
        self.top_spin.setPrefix("top ")
        self.extent_check = QCheckBox("Only within current map extent", self)
        self.extent_check.setChecked(bool(options.only_extent))
        # the embedder's state in the engine: a first search is instant only once it is "ready"
        self.model_label = QLabel("", self)
        self.model_label.setToolTip("The text embedder that turns a query into a vector. It loads in the "
                                    "background when a project with an index opens, once per session.")

        self.model = ResultsModel(self)
        self.view = QTableView(self)
        self.view.setModel(self.model)
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.view.setWordWrap(True)
        self.view.verticalHeader().setVisible(False)
        # fixed row height: a long caption is clipped (full text in the tooltip and on double-click)
        self.view.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.view.verticalHeader().setDefaultSectionSize(THUMB_SIZE + 8)
        self.view.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.view.setIconSize(QSize(THUMB_SIZE, THUMB_SIZE))
        header = self.view.horizontalHeader()
        for col in (COL_RANK, COL_SCORE, COL_THUMB, COL_SCALE):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(COL_CAPTION, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(COL_RASTER, QHeaderView.ResizeMode.Interactive)
        self.view.setColumnWidth(COL_RASTER, 110)
        self.view.setColumnWidth(COL_THUMB, THUMB_SIZE + 8)

        self.export_button = QPushButton("Export results…", self)
        self.export_button.setEnabled(False)
        self.zoom_button = QPushButton("Zoom to results", self)
        self.zoom_button.setToolTip("Fit every result tile in the map view")
        self.zoom_button.setEnabled(False)
        self.surface_button = QPushButton("Score surface", self)
        self.surface_button.setToolTip("Every tile's score for this query as a raster layer: where the query "
                                       "matches across the whole scene (same colours as the results)")
        self.surface_button.setEnabled(False)
        self.info_label = QLabel("", self)
        self.info_label.setWordWrap(True)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(hbox((self.query_edit, 1), self.search_button))
        lay.addLayout(hbox(self.top_spin, (self.extent_check, 1), self.model_label))
        lay.addWidget(self.view, 1)
        lay.addLayout(hbox((self.info_label, 1), self.zoom_button, self.surface_button, self.export_button))

        # Enter runs the query; typing optionally runs it after a short pause (debounce).
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(max(0, debounce_ms))
        self._debounce.timeout.connect(self.request_search)
        if debounce_ms > 0:
            self.query_edit.textEdited.connect(lambda _t: self._debounce.start())
        self.query_edit.returnPressed.connect(self.request_search)
        self.search_button.clicked.connect(self.request_search)
        self.export_button.clicked.connect(self.export_requested)
        self.zoom_button.clicked.connect(self.zoom_requested)
        self.surface_button.clicked.connect(self.surface_requested)
        self.view.selectionModel().currentRowChanged.connect(self._on_current_changed)
        self.view.doubleClicked.connect(self._on_double_clicked)
        self._add_query_help()
        self._add_like_menu()

    def options(self) -> SearchOptions:
        return SearchOptions(top=self.top_spin.value(), only_extent=self.extent_check.isChecked(), fusion=self._fusion)

    def request_search(self) -> None:
        """Emit search_requested for a non-empty query (an empty one just says so)."""
        self._debounce.stop()
        text = self.query_edit.text().strip()
        if not text:
            self.info_label.setText("Type a description of what you look for.")
            return
        o = self.options()
        self.search_requested.emit(text, {"top": o.top, "only_extent": o.only_extent, "fusion": o.fusion})

    def set_model_state(self, state: str, seconds: float = 0.0) -> None:
        """"cold" / "loading" / "ready" / "failed: …" as a short coloured label."""
        if state == "ready":
            text, color = "● embedder ready", "#2e7d32"
        elif state == "loading":
            text, color = f"◌ loading embedder… {seconds:.0f} s", "#1565c0"
        elif state.startswith("failed"):
            text, color = "● embedder failed", "#c62828"
        else:
            text, color = "○ embedder loads on first search", "#666666"
        self.model_label.setText(text)
        self.model_label.setStyleSheet(f"color: {color};")
        if state.startswith("failed"):
            self.model_label.setToolTip(state)

    def set_busy(self, busy: bool, message: str = "") -> None:
        self.search_button.setEnabled(not busy)
        if message:
            self.info_label.setText(message)

    def show_hits(self, hits: list[Hit], message: str = "", warn: bool = False, query: str = "") -> None:
        """Fill the list; `warn` shows the message in orange (e.g. no confident match). The raster
        column is hidden when every hit comes from one raster."""
        self.model.set_hits(hits, query)
        self.view.setColumnHidden(COL_RASTER, self.model.single_raster())
        self.export_button.setEnabled(bool(hits))
        self.zoom_button.setEnabled(bool(hits))
        self.surface_button.setEnabled(bool(hits))
        self.info_label.setText(message)
        self.info_label.setStyleSheet("color: #b34700; font-weight: bold;" if warn else "")
        self.view.scrollToTop()

    def select_row(self, row: int) -> None:
        self.view.selectRow(row)

    def _on_current_changed(self, current, _previous) -> None:
        hit = self.model.hit(current.row()) if current.isValid() else None
        if hit is not None:
            self.hit_selected.emit(hit)

    def _on_double_clicked(self, index) -> None:
        hit = self.model.hit(index.row())
        if hit is not None:
            self.hit_activated.emit(hit)

    def keyPressEvent(self, event) -> None:  # noqa: N802 -- Escape clears the query, like QGIS's locator
        if event.key() == Qt.Key.Key_Escape:
            self.query_edit.clear()
        super().keyPressEvent(event)

    # --- query syntax help and "More like this" (issue 11) -------------------------------------
    def _add_query_help(self) -> None:
        """The negative-term syntax, where the user types."""
        from ...core.search.query import SYNTAX_HELP

        self.query_edit.setPlaceholderText(self.query_edit.placeholderText() + "  (-word excludes)")
        self.query_edit.setToolTip(SYNTAX_HELP)

    def _add_like_menu(self) -> None:
        from qgis.PyQt.QtWidgets import QToolButton

        self.view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.view.customContextMenuRequested.connect(self._on_context_menu)
        self.like_button = QToolButton(self)
        self.like_button.setText("Like…")
        self.like_button.setToolTip("Search by example: click a point on the map, get the tiles that look like it")
        self.like_button.clicked.connect(self.like_tool_requested)
        lay = self.layout()
        rows = [lay.itemAt(i).layout() for i in range(lay.count())] if lay is not None else []
        row = next((r for r in rows if r is not None and r.indexOf(self.query_edit) >= 0), None)
        if row is not None:  # beside the query box
            row.addWidget(self.like_button)

    def like_menu(self, row: int):
        """The context menu of a result row (None off the rows): "More like this"."""
        from qgis.PyQt.QtWidgets import QMenu

        hit = self.model.hit(row) if row >= 0 else None
        if hit is None:
            return None
        menu = QMenu(self)
        act = menu.addAction("More like this")
        act.setToolTip("Rank the tiles that look like this one (its own ground at other scales left out)")
        act.triggered.connect(lambda _checked=False, h=hit: self.like_requested.emit(h))
        return menu

    def _on_context_menu(self, pos) -> None:
        menu = self.like_menu(self.view.indexAt(pos).row())
        if menu is not None:
            menu.exec(self.view.viewport().mapToGlobal(pos))
