"""What the user does with a result set besides looking at it: export it to a GeoPackage (and add
that to the map), draw the query's score surface. A mixin of SearchController (search_controller.py
keeps the query -> results path), using its session, widget, highlighter, last query and signals.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional

from qgis.PyQt.QtWidgets import QFileDialog

from ..messages import report_error, report_exception, report_info

if TYPE_CHECKING:  # numpy comes with core.types: not at QGIS start-up
    from ...core.search.score_scale import ScoreScale
    from ...core.types import Hit
    from ..session import EngineSession
    from .highlighter import Highlighter
    from .search_widget import SearchWidget


class ResultActions:
    session: EngineSession
    widget: SearchWidget
    highlighter: Highlighter
    hits: list[Hit]
    last_query: str
    surface_finished: Any
    _closed: bool

    def score_scale(self) -> ScoreScale:
        """The fixed score scale of the index's embedder (calibrated; see core/search/score_scale.py)."""
        from ...core.search.score_scale import scale_for

        return scale_for((self.session.info or {}).get("embedder"))

    # --- score surface -------------------------------------------------------------------------
    def score_surface(self, query: Optional[str] = None) -> None:
        """Every tile's fused score for the query as raster layers (one per indexed raster), in the
        index folder's `surfaces/`, styled on the embedder's fixed score scale."""
        query = (query or self.last_query).strip()
        if not query:
            report_info(self.session.iface, "Run a search first: the surface is drawn for its query")
            return
        try:
            index_dir = self.session.index_dir()
        except Exception as exc:
            report_exception(self.session.iface, exc, "Score surface")
            return
        self.widget.surface_button.setEnabled(False)
        self.widget.set_busy(True, f"Scoring every tile for “{query}”…")
        args = {"index_dir": index_dir, "query": query, "out_dir": os.path.join(index_dir, "surfaces")}
        self.session.queue.call("surface", args, lambda result, error: self._on_surface(query, result, error),
                                key="surface")

    def _on_surface(self, query: str, result: Any, error: str) -> None:
        if self._closed:
            return
        self.widget.set_busy(False, "")
        self.widget.surface_button.setEnabled(bool(self.hits))
        if error:
            report_error(self.session.iface, f"Score surface failed: {error}")
            self.surface_finished.emit([], error)
            return
        from ...qgis_io.surface_layer import surface_layer

        layers = []
        for item in result or []:
            layer = surface_layer(item["path"], f"Score surface: {query} ({item['name']})"[:90], self.score_scale())
            if layer.isValid():
                layer.setCustomProperty("semantic_imagery_search/surface_query", query)
                self.session.project.addMapLayer(layer)
                layers.append(layer)
        best = max((i["max"] for i in result or [] if i.get("max") is not None), default=None)
        msg = f"Score surface for “{query}”: {len(layers)} layer(s)" + (f", best {best:.2f}" if best is not None else "")
        self.widget.info_label.setText(msg)
        self.surface_finished.emit(layers, "")

    def export_slug(self) -> str:
        """The query as a file and layer name part: "sandy beach!" -> "sandy_beach"."""
        import re

        return re.sub(r"[^a-z0-9]+", "_", self.last_query.lower()).strip("_")[:48] or "results"

    def default_export_path(self) -> str:
        """In the project's folder (else the user's home), named after the query."""
        folder = self.session.project.absolutePath() or os.path.expanduser("~")
        return os.path.join(folder, f"search_{self.export_slug()}.gpkg")

    def export_dialog(self) -> None:
        path, _filter = QFileDialog.getSaveFileName(self.widget, "Export search results", self.default_export_path(),
                                                    "GeoPackage (*.gpkg)")
        if path:
            self.export_to(path)

    def export_to(self, path: str) -> Optional[str]:
        """Write the results (and the query, in the layer metadata) and offer to add the file to the map."""
        layer = self.highlighter.layer
        if layer is None:
            report_info(self.session.iface, "Nothing to export: run a search first")
            return None
        if not path.lower().endswith(".gpkg"):
            path += ".gpkg"
        try:
            from ...qgis_io.hits_layer import export_layer_gpkg

            out = export_layer_gpkg(layer, path, layer_name=f"search_{self.export_slug()}")
        except Exception as exc:
            report_exception(self.session.iface, exc, "Export results")
            return None
        self._offer_add_to_map(out)
        return out

    def _offer_add_to_map(self, path: str) -> None:
        from qgis.core import Qgis
        from qgis.PyQt.QtWidgets import QPushButton

        from ..messages import TITLE, log

        text = f"Results for “{self.last_query}” written to {path}"
        log(text)
        try:
            bar = self.session.iface.messageBar()
            item = bar.createMessage(TITLE, text)
            button = QPushButton("Add to map", item)
            button.clicked.connect(lambda _c=False, p=path: (self.add_export_to_map(p), bar.popWidget(item)))
            item.layout().addWidget(button)
            bar.pushWidget(item, Qgis.Success, 20)
        except Exception:  # no message bar (closing): the log has it
            pass

    def add_export_to_map(self, path: str):
        """The exported GeoPackage as a project layer, styled like the results layer."""
        from qgis.core import QgsVectorLayer

        name = f"search_{self.export_slug()}"
        layer = QgsVectorLayer(f"{path}|layername={name}", f"Search: {self.last_query}"[:80], "ogr")
        if not layer.isValid():
            layer = QgsVectorLayer(path, f"Search: {self.last_query}"[:80], "ogr")
        if not layer.isValid():
            report_info(self.session.iface, f"Could not open {path}")
            return None
        src = self.highlighter.layer
        if src is not None:
            layer.setRenderer(src.renderer().clone())
            if src.labeling() is not None:
                layer.setLabeling(src.labeling().clone())
                layer.setLabelsEnabled(True)
        self.session.project.addMapLayer(layer)
        return layer
