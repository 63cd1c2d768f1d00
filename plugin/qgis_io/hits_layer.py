"""Hits -> a memory polygon layer in the project CRS, and its export to a GeoPackage.

Why a real layer rather than rubber bands: users inspect attributes, export, and use the results in
Processing. Each feature is exactly a hit's footprint with its vertices reprojected from the raster's
CRS (no densifying, so the geometry matches the engine's footprint one vertex for one vertex).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsField,
    QgsFields,
    QgsFillSymbol,
    QgsGeometry,
    QgsGraduatedSymbolRenderer,
    QgsPalLayerSettings,
    QgsPointXY,
    QgsProject,
    QgsRendererRange,
    QgsVectorFileWriter,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtCore import QVariant
from qgis.PyQt.QtGui import QColor

from ..core.errors import EngineError
from ..core.types import Hit

FIELDS = (
    ("rank", QVariant.Int), ("score", QVariant.Double), ("caption", QVariant.String), ("raster", QVariant.String),
    ("raster_name", QVariant.String), ("tile_id", QVariant.String), ("scale", QVariant.Int),
)
#: Low to high score: pale yellow to red.
_COLORS = ("#ffffb2", "#fecc5c", "#fd8d3c", "#f03b20", "#bd0026")


def footprint_geometry(hit: Hit) -> QgsGeometry:
    """The hit's footprint (GeoJSON Polygon in the raster CRS) as a QgsGeometry, not reprojected."""
    try:
        rings = hit.footprint["coordinates"]
        polys = [[QgsPointXY(float(x), float(y)) for x, y, *_ in ring] for ring in rings]
    except (KeyError, TypeError, ValueError) as exc:
        raise EngineError(f"hit {hit.rank}: footprint is not a GeoJSON polygon ({exc})") from None
    return QgsGeometry.fromPolygonXY(polys)


def _transform(crs_text: Optional[str], dest: QgsCoordinateReferenceSystem,
               cache: dict[str, Optional[QgsCoordinateTransform]]) -> Optional[QgsCoordinateTransform]:
    """None when no reprojection applies (same CRS, or a raster without a CRS: pixel coordinates)."""
    key = crs_text or ""
    if key not in cache:
        src = QgsCoordinateReferenceSystem.fromWkt(key) if key else QgsCoordinateReferenceSystem()
        if key and not src.isValid():
            src = QgsCoordinateReferenceSystem(key)
        if not src.isValid() or not dest.isValid() or src == dest:
            cache[key] = None
        else:
            cache[key] = QgsCoordinateTransform(src, dest, QgsProject.instance().transformContext())
    return cache[key]


def hits_fields() -> QgsFields:
    fields = QgsFields()
    for n, t in FIELDS:
        fields.append(QgsField(n, t))
    return fields


def hit_features(hits: Sequence[Hit], dest_crs: QgsCoordinateReferenceSystem,
                 fields: Optional[QgsFields] = None) -> list[QgsFeature]:
    """One feature per hit: its footprint with every vertex reprojected to `dest_crs`, and its attributes."""
    fields = fields or hits_fields()
    cache: dict[str, Optional[QgsCoordinateTransform]] = {}
    feats = []
    for h in hits:
        geom = footprint_geometry(h)
        ct = _transform(h.crs, dest_crs, cache)
        if ct is not None:
            geom.transform(ct)
        f = QgsFeature(fields)
        f.setGeometry(geom)
        f.setAttributes([int(h.rank), float(h.score), h.caption, h.raster, h.raster_name or os.path.basename(h.raster),
                         h.tile_id, int(h.scale)])
        feats.append(f)
    return feats


def hits_crs(hits: Sequence[Hit]) -> QgsCoordinateReferenceSystem:
    """The CRS of the first hit's raster (for outputs without a project CRS, e.g. qgis_process)."""
    for h in hits:
        if h.crs:
            crs = QgsCoordinateReferenceSystem.fromWkt(h.crs)
            if crs.isValid():
                return crs
    return QgsCoordinateReferenceSystem()


def hits_to_layer(hits: Sequence[Hit], dest_crs: QgsCoordinateReferenceSystem, name: str = "Search results") -> QgsVectorLayer:
    """A memory layer with one polygon per hit, reprojected to `dest_crs`, styled by score, labelled by rank."""
    uri = "Polygon"
    if dest_crs.isValid() and dest_crs.authid():
        uri += f"?crs={dest_crs.authid()}"
    layer = QgsVectorLayer(uri, name, "memory")
    if dest_crs.isValid() and not dest_crs.authid():
        layer.setCrs(dest_crs)
    layer.dataProvider().addAttributes(list(hits_fields()))
    layer.updateFields()
    layer.dataProvider().addFeatures(hit_features(hits, dest_crs, layer.fields()))
    layer.updateExtents()
    style_hits_layer(layer, [float(h.score) for h in hits])
    return layer


def style_hits_layer(layer: QgsVectorLayer, scores: Sequence[float]) -> None:
    """Graduated outline colours by score (five equal classes) and the rank as a label."""
    lo, hi = (min(scores), max(scores)) if scores else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 1e-6, hi + 1e-6
    step = (hi - lo) / len(_COLORS)
    ranges = []
    for i, color in enumerate(_COLORS):
        a, b = lo + i * step, (hi if i == len(_COLORS) - 1 else lo + (i + 1) * step)
        fill = QColor(color)
        fill.setAlpha(60)
        symbol = QgsFillSymbol.createSimple({"color": fill.name(QColor.HexArgb), "outline_color": color, "outline_width": "0.8"})
        symbol.setOpacity(1.0)
        ranges.append(QgsRendererRange(a, b, symbol, f"{a:.3f} - {b:.3f}"))
    layer.setRenderer(QgsGraduatedSymbolRenderer("score", ranges))
    pal = QgsPalLayerSettings()
    pal.fieldName = "rank"
    pal.enabled = True
    layer.setLabeling(QgsVectorLayerSimpleLabeling(pal))
    layer.setLabelsEnabled(True)


def export_layer_gpkg(layer: QgsVectorLayer, path: str, layer_name: Optional[str] = None) -> str:
    """Write `layer` to a GeoPackage with QgsVectorFileWriter; returns the path written."""
    if not path.lower().endswith(".gpkg"):
        path += ".gpkg"
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    opts = QgsVectorFileWriter.SaveVectorOptions()
    opts.driverName = "GPKG"
    opts.fileEncoding = "UTF-8"
    opts.layerName = layer_name or "search_results"
    result = QgsVectorFileWriter.writeAsVectorFormatV3(layer, path, QgsProject.instance().transformContext(), opts)
    err, msg = result[0], result[1] if len(result) > 1 else ""
    if err != QgsVectorFileWriter.NoError:
        raise EngineError(f"cannot write {path}: {msg or err}")
    return path
