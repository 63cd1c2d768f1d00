"""Search panel logic: query -> warm worker (SearchTask) -> results list, results layer, thumbnails.

The first search starts the worker and loads the embedder (seconds); the panel says so instead
of looking frozen. Later searches reuse it. A query typed while one runs replaces any queued one.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Optional

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QObject, QTimer, pyqtSignal

from ..messages import report_error, report_exception
from ..session import EngineSession
from ..settings.settings import save_search_options
from .caption_dialog import CaptionDialog
from .highlighter import Highlighter
from .result_actions import ResultActions
from .search_widget import SearchWidget
from .thumbnails import ThumbnailTask, cached

if TYPE_CHECKING:  # numpy comes with core.types: not at QGIS start-up
    from ...core.types import Hit


class SearchController(ResultActions, QObject):
    #: emitted on the main thread once hits are in the list and on the map (hits, error)
    search_finished = pyqtSignal(list, str)
    #: the engine itself failed (worker would not start, died, lacks packages): one line
    engine_failed = pyqtSignal(str)
    #: score surface layers added to the project (possibly none) and an error line
    surface_finished = pyqtSignal(list, str)

    def __init__(self, session: EngineSession, widget: SearchWidget, canvas, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self.widget = widget
        self.canvas = canvas
        self.highlighter = Highlighter(canvas, session.project)
        self.hits: list[Hit] = []
        self.last_query = ""
        self.last_seconds = 0.0
        self._t0 = 0.0
        self._thumb_task: Optional[ThumbnailTask] = None
        self._dialogs: list[CaptionDialog] = []
        self._closed = False
        widget.search_requested.connect(self.search)
        widget.hit_selected.connect(self.focus_hit)
        widget.hit_activated.connect(self.show_variants)
        widget.export_requested.connect(self.export_dialog)
        widget.zoom_requested.connect(self.zoom_to_results)
        widget.like_requested.connect(self.search_like)
        widget.like_tool_requested.connect(self.start_like_tool)
        widget.surface_requested.connect(lambda: self.score_surface())
        session.embedder_state_changed.connect(self._show_model_state)
        self._model_timer = QTimer(self)
        self._model_timer.setInterval(1000)
        self._model_timer.timeout.connect(lambda: self._show_model_state(self.session.embedder_state))
        self._show_model_state(session.embedder_state)

    # --- search ------------------------------------------------------------------------------
    def search_options(self, opts: dict) -> dict:
        """Engine keywords for a query: top, fusion and, when asked, the canvas extent in the project CRS."""
        out: dict[str, Any] = {"top": int(opts.get("top", 10)), "fusion": str(opts.get("fusion", "max"))}
        if opts.get("only_extent") and self.canvas is not None:
            ext = self.canvas.extent()
            out["bbox"] = [ext.xMinimum(), ext.yMinimum(), ext.xMaximum(), ext.yMaximum()]
            crs = self.canvas.mapSettings().destinationCrs()
            out["bbox_crs"] = crs.toWkt() if crs.isValid() else None
        if opts.get("like"):
            out["like"] = str(opts["like"])
        return out

    def start_like_tool(self):
        """A map tool: the next click on the canvas searches for tiles like the one under it."""
        from qgis.gui import QgsMapToolEmitPoint

        tool = QgsMapToolEmitPoint(self.canvas)
        tool.canvasClicked.connect(lambda point, _button: self.search_like_at(point))
        self._like_tool = tool
        self.canvas.setMapTool(tool)
        return tool

    def search_like_at(self, point) -> Optional[str]:
        """Search by example from a map point (canvas CRS); says so when no indexed raster is there."""
        from ...qgis_io.map_point import like_spec_at

        if self.canvas.mapTool() is getattr(self, "_like_tool", None):
            self.canvas.unsetMapTool(self._like_tool)
        layers = [lyr for lyr in self.canvas.layers() if lyr.type() == lyr.RasterLayer]
        like = like_spec_at(point, self.canvas.mapSettings().destinationCrs(), layers)
        if like is None:
            self.widget.info_label.setText("No raster layer under that point: click on an indexed raster.")
            return None
        self.search("tiles like the clicked one", {"top": self.widget.top_spin.value(),
                                                   "only_extent": self.widget.extent_check.isChecked(), "like": like})
        return like

    def search_like(self, hit: Hit) -> None:
        """Search by example: the tiles most like this hit's tile (by its raster id and centre pixel)."""
        w = hit.window
        like = f"{hit.raster_id}:{w.col_off + w.width // 2},{w.row_off + w.height // 2},{hit.scale}"
        self.search(f"tiles like #{hit.rank}", {"top": self.widget.top_spin.value(),
                                                "only_extent": self.widget.extent_check.isChecked(), "like": like})

    def search(self, query: str, opts: Optional[dict] = None) -> None:
        opts = opts or {"top": self.widget.top_spin.value(), "only_extent": self.widget.extent_check.isChecked()}
        try:
            save_search_options(self.widget.options())
            index_dir = self.session.index_dir()
            options = self.search_options(opts)
        except Exception as exc:
            report_exception(self.session.iface, exc, "Search")
            return
        self.last_query = query
        self.widget.set_busy(True, self.waiting_text())
        from ...tasks.search_task import SearchTask

        def make(client: Any) -> Any:
            self._t0 = time.perf_counter()
            task = SearchTask(client, index_dir, query, options)
            task.search_finished.connect(self._on_finished)
            return task

        self.session.queue.submit(make, key="search")

    def waiting_text(self) -> str:
        """What the wait for a search is really made of, said before it starts."""
        s = self.session
        if s.embedder_ready():
            return "Searching…"
        if s.embedder_state == "loading":
            return (f"Waiting for the embedder to finish loading ({time.monotonic() - s.embedder_since:.0f} s so far; "
                    "once per session)…")
        return "Starting the engine and loading the embedder (first search of the session, several seconds)…"

    def _show_model_state(self, state: str) -> None:
        if self._closed:
            return
        self.widget.set_model_state(state, time.monotonic() - self.session.embedder_since)
        if state.startswith("failed: ") and is_engine_failure(state):
            self.engine_failed.emit(state[len("failed: "):])
        if state == "loading":
            self._model_timer.start()
        else:
            self._model_timer.stop()

    def _on_finished(self, hit_dicts: list, error: str) -> None:
        if self._closed:
            return
        self.last_seconds = time.perf_counter() - self._t0
        self.widget.set_busy(False)
        if not error:
            self.session.set_embedder_state("ready")  # a search loads it when no preload did
        if error:
            if is_engine_failure(error):
                self.engine_failed.emit(error.splitlines()[0])
            self.widget.show_hits(self.hits, f"Search failed: {error.splitlines()[0]}")
            report_error(self.session.iface, f"Search failed: {error}")
            self.search_finished.emit([], error)
            return
        from ...core.types import Hit

        try:
            hits = [h if isinstance(h, Hit) else Hit.from_dict(h) for h in hit_dicts]
            self.show_results(hits)
        except Exception as exc:
            report_exception(self.session.iface, exc, "Showing results")
            self.search_finished.emit([], str(exc))
            return
        self.search_finished.emit(hits, "")

    def show_results(self, hits: list[Hit]) -> None:
        """List, results layer and thumbnails for `hits` (also used by the screenshot script)."""
        self.hits = hits
        scale = self.score_scale()
        self.widget.model.set_scale(scale)
        warn = False
        if hits:
            from ...core.search.score_scale import match_strength

            top = max(hits, key=lambda h: match_strength(h.score, h.extra))
            best = match_strength(top.score, top.extra)  # the cosine: what the scale means
            warn = not scale.confident(best)
            msg = (f"{len(hits)} result(s) for “{self.last_query}” in {self.last_seconds * 1000:.0f} ms · "
                   f"{scale.verdict(best, top.score - best)}")
            from .result_text import shared_match

            common = shared_match([h.caption for h in hits], self.last_query)
            if common:
                msg += f" · most match on “{common[:120]}”"
        else:
            msg = f"No results for “{self.last_query}”"
        self.widget.show_hits(hits, msg, warn=warn, query=self.last_query)
        self.highlighter.show_hits(hits, name=f"Search results: {self.last_query}"[:80] if self.last_query else "Search results",
                                   scale=scale, query=self.last_query)
        for h in hits:
            img = cached(h.tile_id)
            if img is not None:
                self.widget.model.set_thumbnail(h.tile_id, img)
        self._load_thumbnails(hits)

    def _load_thumbnails(self, hits: list[Hit]) -> None:
        if self._thumb_task is not None:
            try:
                self._thumb_task.cancel()
            except RuntimeError:
                pass
        task = ThumbnailTask(hits, self._on_thumbnail)
        if not task.hits:
            return
        self._thumb_task = task
        task.taskCompleted.connect(self._thumb_done)
        task.taskTerminated.connect(self._thumb_done)
        QgsApplication.taskManager().addTask(task)

    def _thumb_done(self) -> None:
        self._thumb_task = None

    def _on_thumbnail(self, tile_id: str, image) -> None:
        if not self._closed:
            self.widget.model.set_thumbnail(tile_id, image)

    # --- result actions ----------------------------------------------------------------------
    def zoom_to_results(self) -> bool:
        try:
            return self.highlighter.zoom_to_results()
        except Exception as exc:
            report_exception(self.session.iface, exc, "Zoom to results")
            return False

    def focus_hit(self, hit: Hit) -> None:
        try:
            self.highlighter.focus(hit)
        except Exception as exc:
            report_exception(self.session.iface, exc, "Zoom to result")

    def show_variants(self, hit: Hit) -> CaptionDialog:
        from .caption_dialog import load_variants

        try:
            variants = load_variants(self.session.index_dir(), hit)
        except Exception as exc:  # the dialog still shows the best variant
            report_exception(self.session.iface, exc, "Reading caption variants")
            variants = None
        dlg = CaptionDialog(hit, variants, parent=self.widget, query=self.last_query)
        self._dialogs = [d for d in self._dialogs if d.isVisible()] + [dlg]
        self._place_beside_dock(dlg)
        dlg.show()
        return dlg

    def _place_beside_dock(self, dlg: CaptionDialog) -> None:
        """Left of the dock (over the map edge), top-aligned with it, never off the screen's left."""
        from qgis.PyQt.QtCore import QPoint

        top_left = self.widget.mapToGlobal(QPoint(0, 0))
        dlg.move(max(0, top_left.x() - dlg.width() - 12), max(0, top_left.y()))

    def clear(self) -> None:
        self.hits = []
        self.widget.show_hits([], "")
        self.highlighter.forget()

    def close(self) -> None:
        self._closed = True
        self._model_timer.stop()
        for d in self._dialogs:
            try:
                d.close()
            except RuntimeError:
                pass
        if self._thumb_task is not None:
            try:
                self._thumb_task.cancel()
            except RuntimeError:
                pass
        try:
            self.highlighter.clear()
        except RuntimeError:
            pass


def is_engine_failure(error: str) -> bool:
    """The engine process, not the query or the index, is what failed."""
    low = error.lower()
    return "engine worker" in low or "no module named" in low or "cannot start" in low
