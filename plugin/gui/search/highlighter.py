"""Hits on the map: the temporary results layer (replaced on each search), zoom and flash.

The layer itself is built by qgis_io.hits_layer (footprints reprojected to the project CRS); this
class owns its life in the project so that a new search, a cleared project or unloading the
plugin never leaves a stale results layer behind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor

if TYPE_CHECKING:  # numpy comes with core.types: not at QGIS start-up
    from ...core.search.score_scale import ScoreScale
    from ...core.types import Hit

RESULTS_PROPERTY = "semantic_imagery_search/results"


def hit_geometry(hit: Hit, dest_crs: QgsCoordinateReferenceSystem, project: Optional[QgsProject] = None) -> QgsGeometry:
    """The hit's footprint polygon in `dest_crs` (left as is when the raster has no CRS)."""
    ring = hit.footprint.get("coordinates", [[]])[0]
    geom = QgsGeometry.fromPolygonXY([[QgsPointXY(float(x), float(y)) for x, y in ring]])
    if hit.crs:
        src = QgsCoordinateReferenceSystem.fromWkt(hit.crs)
        if src.isValid() and dest_crs.isValid() and src != dest_crs:
            xform = QgsCoordinateTransform(src, dest_crs, project or QgsProject.instance())
            geom.transform(xform)
    return geom


class Highlighter:
    def __init__(self, canvas, project: Optional[QgsProject] = None) -> None:
        self.canvas = canvas
        self.project = project or QgsProject.instance()
        self._layer_id: Optional[str] = None

    @property
    def layer(self) -> Optional[QgsVectorLayer]:
        return self.project.mapLayer(self._layer_id) if self._layer_id else None

    def dest_crs(self) -> QgsCoordinateReferenceSystem:
        crs = self.project.crs()
        if not crs.isValid() and self.canvas is not None:
            crs = self.canvas.mapSettings().destinationCrs()
        return crs

    def show_hits(self, hits: list[Hit], name: str = "Search results", scale: Optional[ScoreScale] = None,
                  query: str = "", keep_in_view: bool = True) -> Optional[QgsVectorLayer]:
        """Replace the results layer with one holding `hits`; returns the new layer (None if no hits).

        With `keep_in_view`, the canvas zooms to the hits when none of them is visible (after the
        user zoomed onto one result, the next query's hits are often elsewhere) and stays put when
        at least one is.
        """
        from ...qgis_io.hits_layer import hits_to_layer

        self.clear()
        if not hits:
            return None
        layer = hits_to_layer(hits, self.dest_crs(), name=name, scale=scale, query=query)
        layer.setCustomProperty(RESULTS_PROPERTY, True)
        self.project.addMapLayer(layer, False)
        self.project.layerTreeRoot().insertLayer(0, layer)
        self._layer_id = layer.id()
        if self.canvas is not None:
            if not (keep_in_view and self.keep_in_view()):
                self.canvas.refresh()
        return layer

    def _canvas_geometries(self) -> list[QgsGeometry]:
        layer = self.layer
        if layer is None or self.canvas is None:
            return []
        dest = self.canvas.mapSettings().destinationCrs()
        xform = None
        if layer.crs().isValid() and dest.isValid() and layer.crs() != dest:
            xform = QgsCoordinateTransform(layer.crs(), dest, self.project)
        out = []
        for f in layer.getFeatures():
            g = QgsGeometry(f.geometry())
            if xform is not None:
                g.transform(xform)
            out.append(g)
        return out

    def visible_count(self) -> int:
        """How many hits intersect the canvas's visible extent."""
        if self.canvas is None:
            return 0
        view = QgsGeometry.fromRect(self.canvas.extent())
        return sum(1 for g in self._canvas_geometries() if not g.isEmpty() and g.intersects(view))

    def keep_in_view(self) -> bool:
        """Zoom to the results when none is visible; True when the canvas moved."""
        if self.canvas is None or self.layer is None or self.visible_count() > 0:
            return False
        return self.zoom_to_results()

    def zoom_to_results(self) -> bool:
        """Fit every hit in the canvas (with a margin); False when there is nothing to show."""
        geoms = [g for g in self._canvas_geometries() if not g.isEmpty()]
        if self.canvas is None or not geoms:
            return False
        rect = QgsRectangle(geoms[0].boundingBox())
        for g in geoms[1:]:
            rect.combineExtentWith(g.boundingBox())
        rect.scale(1.15)
        self.canvas.setExtent(rect)
        self.canvas.refresh()
        return True

    def focus(self, hit: Hit, zoom: bool = True) -> QgsGeometry:
        """Zoom to the tile (with a margin) and flash it; returns the geometry in the canvas CRS."""
        crs = self.canvas.mapSettings().destinationCrs() if self.canvas is not None else self.dest_crs()
        geom = hit_geometry(hit, crs, self.project)
        if self.canvas is None or geom.isEmpty():
            return geom
        if zoom:
            rect = geom.boundingBox()
            rect.scale(2.0)
            self.canvas.setExtent(rect)
            self.canvas.refresh()
        self.canvas.flashGeometries([geom], crs, QColor(255, 200, 0, 255), QColor(255, 200, 0, 0), 3, 400)
        return geom

    def clear(self) -> None:
        """Remove our results layer (and any leftover one restored from a saved project)."""
        ids = [lid for lid, lyr in self.project.mapLayers().items() if lyr.customProperty(RESULTS_PROPERTY)]
        if self._layer_id and self._layer_id not in ids and self.project.mapLayer(self._layer_id):
            ids.append(self._layer_id)
        if ids:
            self.project.removeMapLayers(ids)
        self._layer_id = None

    def forget(self) -> None:
        """The project was cleared: the layer is gone already."""
        self._layer_id = None
