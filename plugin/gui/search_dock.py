"""The "Semantic Imagery Search" dock: a Search tab, an Index tab and one status line.

Only layout lives here; the controller wires the panels to the engine.
"""

from __future__ import annotations

from qgis.gui import QgsDockWidget
from qgis.PyQt.QtWidgets import QHBoxLayout, QLabel, QTabWidget, QToolButton, QVBoxLayout, QWidget

from .index.index_widget import IndexWidget
from .search.search_widget import SearchWidget
from .settings.settings import IndexOptions, SearchOptions

OBJECT_NAME = "SemanticImagerySearchDock"


class SearchDock(QgsDockWidget):
    def __init__(self, index_options: IndexOptions, search_options: SearchOptions, parent=None) -> None:
        super().__init__("Semantic Imagery Search", parent)
        self.setObjectName(OBJECT_NAME)
        body = QWidget(self)
        self.tabs = QTabWidget(body)
        self.search_widget = SearchWidget(search_options, self.tabs)
        self.index_widget = IndexWidget(index_options, self.tabs)
        self.tabs.addTab(self.search_widget, "Search")
        self.tabs.addTab(self.index_widget, "Index")
        self.status_label = QLabel("No index yet", body)
        self.status_label.setWordWrap(True)
        self.status_label.setStyleSheet("color: #444;")
        self.settings_button = QToolButton(body)
        self.settings_button.setText("⚙")
        self.settings_button.setToolTip("Settings: server API key, where indexing runs (this computer or a Ray cluster); the engine is set up in Set up engine…")
        lay = QVBoxLayout(body)
        lay.setContentsMargins(4, 4, 4, 4)
        lay.addWidget(self.tabs, 1)
        status_row = QWidget(body)
        srl = QHBoxLayout(status_row)
        srl.setContentsMargins(0, 0, 0, 0)
        srl.addWidget(self.status_label, 1)
        srl.addWidget(self.settings_button)
        lay.addWidget(status_row)
        self.setWidget(body)

    def set_status(self, text: str) -> None:
        self.status_label.setText(text)
        self.status_label.setToolTip(text)
