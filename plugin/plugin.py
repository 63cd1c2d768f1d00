"""QGIS entry point: initGui/unload wiring only.

Start-up stays cheap (no torch, transformers, rasterio or engine imports): the dock is built from
plain Qt widgets and everything heavy runs later in the engine worker process.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from qgis.core import QgsApplication, QgsProject
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from .gui.messages import log

MENU = "&Semantic Imagery Search"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ICON = os.path.join(ROOT, "resources", "icon.svg")


class SemanticImagerySearchPlugin:
    def __init__(self, iface: Any) -> None:
        self.iface = iface
        self.action: Optional[QAction] = None
        self.dock: Any = None
        self.session: Any = None
        self.index_ctl: Any = None
        self.search_ctl: Any = None
        self.watcher: Any = None
        self.provider: Any = None

    def initGui(self) -> None:  # noqa: N802 (QGIS API)
        from .gui.index.index_controller import IndexController
        from .gui.project_watcher import ProjectWatcher
        from .gui.search.search_controller import SearchController
        from .gui.search_dock import SearchDock
        from .gui.session import EngineSession
        from .gui.settings.settings import load_index_options, load_search_options

        main = self.iface.mainWindow()
        self.action = QAction(QIcon(ICON), "Semantic Imagery Search", main)
        self.action.setObjectName("SemanticImagerySearchAction")
        self.action.setCheckable(True)
        self.action.setToolTip("Find imagery by describing it in words")
        self.iface.addPluginToMenu(MENU, self.action)
        self.iface.addToolBarIcon(self.action)

        project = QgsProject.instance()
        self.dock = SearchDock(load_index_options(), load_search_options(), main)
        self.session = EngineSession(self.iface, project)
        self.search_ctl = SearchController(self.session, self.dock.search_widget, self.iface.mapCanvas())
        self.index_ctl = IndexController(self.session, self.dock.index_widget, self.dock.set_status)
        self.watcher = ProjectWatcher(self.session, self.index_ctl, self.search_ctl)
        self.dock.settings_button.clicked.connect(self.show_settings)
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.action.toggled.connect(self.dock.setUserVisible)
        self.dock.visibilityChanged.connect(self._sync_action)
        self.dock.hide()
        self.index_ctl.refresh_rows()
        self._init_engine_ui()
        self.initProcessing()

    def _init_engine_ui(self) -> None:
        """"Set up engine…" / "Check engine" menu actions and the dock banner (gui/settings/engine_dialog.py)."""
        from .gui.settings.engine_dialog import EngineBanner, quick_engine_problem

        main = self.iface.mainWindow()
        self.engine_dialog: Any = None
        self.engine_actions: list[QAction] = []
        for text, slot in (("Set up engine…", self.show_engine_dialog), ("Check engine", self.check_engine)):
            act = QAction(text, main)
            act.triggered.connect(lambda _checked=False, f=slot: f())
            self.iface.addPluginToMenu(MENU, act)
            self.engine_actions.append(act)
        self.engine_banner = EngineBanner(self.show_engine_dialog, self.dock)
        self.dock.widget().layout().insertWidget(0, self.engine_banner)
        self._set_engine_problem(quick_engine_problem())
        # the engine breaking later (worker dies, packages removed) shows up there too
        self.search_ctl.engine_failed.connect(self._set_engine_problem)

    def _set_engine_problem(self, problem: Optional[str]) -> None:
        """Searching needs the engine; the results list, export and the index panel stay usable."""
        if problem is not None or self.engine_banner.problem is not None:  # keep a green "ready" showing
            self.engine_banner.set_problem(problem)
        self.dock.search_widget.search_button.setEnabled(problem is None)
        self.dock.search_widget.query_edit.setEnabled(problem is None)
        self.dock.index_widget.set_engine_problem(problem)  # no job starts a worker that cannot run

    def _on_engine_changed(self, result: dict) -> None:
        if self.dock is None:
            return
        self.engine_banner.set_check(result)
        self._set_engine_problem(self.engine_banner.problem)
        if result.get("ok"):  # what the old engine could not read (the index's state) is asked again
            self.session.refresh_info()

    def show_engine_dialog(self) -> Any:
        from .gui.settings.engine_dialog import EngineDialog

        if self.engine_dialog is None:
            self.engine_dialog = EngineDialog(self.iface.mainWindow())
            self.engine_dialog.engine_changed.connect(self._on_engine_changed)
        self.engine_dialog.show()
        self.engine_dialog.raise_()
        return self.engine_dialog

    def check_engine(self) -> Any:
        from .qgis_io.engine import engine_python

        dlg = self.show_engine_dialog()
        return dlg.check(engine_python())

    def initProcessing(self) -> None:  # noqa: N802 (QGIS API: qgis_process calls it instead of initGui)
        """Register the Processing provider once; `qgis_process.bin` calls only this."""
        if self.provider is None:
            self._register_provider()

    def _register_provider(self) -> None:
        try:
            from .processing.provider import SearchProvider

            self.provider = SearchProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)
        except Exception as exc:  # the dock stays usable without Processing
            self.provider = None
            log(f"Processing provider not registered: {exc}")

    def _sync_action(self, visible: bool) -> None:
        if self.action is not None and self.action.isChecked() != visible:
            self.action.blockSignals(True)
            self.action.setChecked(visible)
            self.action.blockSignals(False)

    def show_dock(self) -> None:
        if self.dock is not None:
            self.dock.setUserVisible(True)
            if not self.dock.isVisible():
                self.dock.show()
            self.dock.raise_()

    def show_settings(self) -> None:
        from .gui.settings.settings_dialog import SettingsDialog

        dlg = SettingsDialog(self.dock)
        if dlg.exec_() and dlg.authcfg:
            opts = self.dock.index_widget.options()
            opts.authcfg = dlg.authcfg
            self.dock.index_widget.options_widget.set_options(opts)

    def unload(self) -> None:
        """Leave nothing behind: signals, tasks, the worker process, the results layer, the dock, the action."""
        for obj in (self.watcher, self.index_ctl, self.search_ctl, self.session):
            if obj is not None:
                try:
                    obj.close()
                except Exception as exc:
                    log(f"unload: {exc}")
        if self.provider is not None:
            try:
                QgsApplication.processingRegistry().removeProvider(self.provider)
            except Exception as exc:
                log(f"unload provider: {exc}")
            self.provider = None
        for act in getattr(self, "engine_actions", []):
            self.iface.removePluginMenu(MENU, act)
            act.deleteLater()
        self.engine_actions = []
        if getattr(self, "engine_dialog", None) is not None:
            self.engine_dialog.close()
            self.engine_dialog.deleteLater()
            self.engine_dialog = None
        if self.dock is not None:
            self.iface.removeDockWidget(self.dock)
            self.dock.setParent(None)
            self.dock.deleteLater()
            self.dock = None
        if self.action is not None:
            self.iface.removePluginMenu(MENU, self.action)
            self.iface.removeToolBarIcon(self.action)
            self.action.deleteLater()
            self.action = None
        self.watcher = self.index_ctl = self.search_ctl = self.session = None
