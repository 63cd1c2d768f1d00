"""Follows the project's life: a read project reconnects to its index, a first save adopts the
temporary index, a cleared project drops results and state. No layer or file work happens here
beyond what qgis_io does (cheap, main thread)."""

from __future__ import annotations

from qgis.PyQt.QtCore import QObject

from .index.index_controller import IndexController
from .messages import report_exception
from .search.search_controller import SearchController
from .session import EngineSession


class ProjectWatcher(QObject):
    def __init__(self, session: EngineSession, index_ctl: IndexController, search_ctl: SearchController, parent=None):
        super().__init__(parent)
        self.session, self.index_ctl, self.search_ctl = session, index_ctl, search_ctl
        p = session.project
        self._connections = [
            (p.readProject, self.on_read),
            (p.projectSaved, self.on_saved),
            (p.cleared, self.on_cleared),
        ]
        for sig, slot in self._connections:
            sig.connect(slot)
        # QGIS may have opened a project before the plugin loaded: reconnect to its index now, which
        # also preloads the embedder when it holds one (the first search is then instant)
        try:
            from ..qgis_io.project_index import recorded_index_dir

            if p.fileName() and recorded_index_dir(p):
                session.refresh_info()
        except Exception as exc:
            report_exception(session.iface, exc, "Opening the project's search index")

    def on_read(self, *_args) -> None:
        """Reconnect to the project's recorded index and show what it holds."""
        try:
            self.search_ctl.clear()
            self.search_ctl.highlighter.clear()  # an empty results layer restored from the file
            self.index_ctl.forget_layers()
            self.session.reset()
            self.session.index_dir()
            self.session.refresh_info()
        except Exception as exc:
            report_exception(self.session.iface, exc, "Opening the project's search index")

    def on_saved(self) -> None:
        """The first save of an unsaved project moves its temporary index beside the project file."""
        try:
            from ..qgis_io.project_index import adopt_index_on_save

            new_dir = adopt_index_on_save(self.session.project)
        except Exception as exc:
            report_exception(self.session.iface, exc, "Moving the search index beside the project")
            return
        if new_dir:
            self.session.set_index_dir(new_dir)
            self.session.refresh_info()

    def on_cleared(self) -> None:
        self.search_ctl.clear()
        self.index_ctl.forget_layers()
        self.session.reset()
        self.index_ctl.refresh_rows()

    def close(self) -> None:
        for sig, slot in self._connections:
            try:
                sig.disconnect(slot)
            except (TypeError, RuntimeError):
                pass
