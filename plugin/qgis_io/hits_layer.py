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
    QgsProperty,
    QgsRendererRange,
    QgsTextBufferSettings,
    QgsTextFormat,
    QgsVectorFileWriter,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QVariant
from qgis.PyQt.QtGui import QColor, QFont

from ..core.errors import EngineError
from ..core.search.score_scale import ScoreScale, match_strength, scale_for
from ..core.types import Hit

FIELDS = (
    ("rank", QVariant.Int), ("score", QVariant.Double), ("caption", QVariant.String), ("raster", QVariant.String),
    ("raster_name", QVariant.String), ("tile_id", QVariant.String), ("scale", QVariant.Int),
    ("similarity", QVariant.Double),
)
#: Custom property holding the query of a results layer.
QUERY_PROPERTY = "semantic_imagery_search/query"


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
                         h.tile_id, int(h.scale), match_strength(h.score, h.extra)])
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


def hits_to_layer(hits: Sequence[Hit], dest_crs: QgsCoordinateReferenceSystem, name: str = "Search results",
                  scale: Optional[ScoreScale] = None, query: str = "") -> QgsVectorLayer:
    """A memory layer with one polygon per hit, reprojected to `dest_crs`, styled on the embedder's fixed
    score scale, labelled by rank; the query goes into the layer's metadata (and so into an export)."""
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
    style_hits_layer(layer, [float(h.score) for h in hits], scale)
    if query:
        set_query_metadata(layer, query, scale)
    return layer


def set_query_metadata(layer: QgsVectorLayer, query: str, scale: Optional[ScoreScale] = None) -> None:
    """The query in the layer's title, abstract and keywords (GeoPackage export keeps layer metadata)."""
    md = layer.metadata()
    md.setTitle(f"Semantic Imagery Search: {query}")
    scale_text = f"; scores on the {scale.embedder} scale (weak < {scale.weak:.2f}, strong >= {scale.strong:.2f})" if scale else ""
    md.setAbstract(f"Tiles matching the query \u201c{query}\u201d{scale_text}.")
    md.addKeywords("query", [query])
    layer.setMetadata(md)
    layer.setCustomProperty(QUERY_PROPERTY, query)


def style_hits_layer(layer: QgsVectorLayer, scores: Sequence[float], scale: Optional[ScoreScale] = None) -> None:
    """Outline colours on a fixed score scale (the same numbers mean the same colour for every query)
    and the rank as a haloed label inside each tile. `scores` is kept for callers; the classes no
    longer depend on them."""
    scale = scale or scale_for(None)
    ranges = []
    for i, (lo, hi, text, color) in enumerate(scale.ranges()):
        fill = QColor(color)
        fill.setAlpha(0 if i == 0 else 50 + 15 * i)
        props = {"color": fill.name(QColor.HexArgb), "outline_color": color, "outline_width": "0.5" if i == 0 else "0.9"}
        if i == 0:
            props["outline_style"] = "dash"
        ranges.append(QgsRendererRange(lo, hi, QgsFillSymbol.createSimple(props), text))
    # Colours on the calibrated scale: the similarity (cosine), not the hybrid score's word bonus.
    renderer = QgsGraduatedSymbolRenderer("similarity", ranges)
    layer.setRenderer(renderer)
    layer.setLabeling(QgsVectorLayerSimpleLabeling(rank_label_settings()))
    layer.setLabelsEnabled(True)


#: Where a rank label sits: inset from a corner of its own tile by 15 % of the tile's size -- the
#: north-west corner at odd scales, the north-east one at even scales -- so a tile and the larger tile
#: it nests in never share a label spot (their centroids fall on shared corners).
LABEL_POINT = ("make_point(if(\"scale\" % 2 = 0, x_max($geometry) - 0.15 * (x_max($geometry) - x_min($geometry)), "
               "x_min($geometry) + 0.15 * (x_max($geometry) - x_min($geometry))), "
               "y_max($geometry) - 0.15 * (y_max($geometry) - y_min($geometry)))")
#: Ranks up to this one are always labelled, even where labels collide.
ALWAYS_LABEL_TOP = 10


def rank_label_settings() -> QgsPalLayerSettings:
    fmt = QgsTextFormat()
    font = QFont()
    font.setBold(True)
    fmt.setFont(font)
    fmt.setSize(11)
    fmt.setColor(QColor("#111111"))
    buf = QgsTextBufferSettings()
    buf.setEnabled(True)
    buf.setSize(1.2)
    buf.setColor(QColor(255, 255, 255, 235))
    fmt.setBuffer(buf)
    pal = QgsPalLayerSettings()
    pal.fieldName = "rank"
    pal.enabled = True
    pal.setFormat(fmt)
    pal.placement = QgsPalLayerSettings.OverPoint
    pal.geometryGenerator = LABEL_POINT
    pal.geometryGeneratorEnabled = True
    pal.geometryGeneratorType = QgsWkbTypes.PointGeometry
    obstacle = pal.obstacleSettings()
    obstacle.setIsObstacle(False)
    pal.setObstacleSettings(obstacle)
    props = pal.dataDefinedProperties()
    props.setProperty(QgsPalLayerSettings.AlwaysShow, QgsProperty.fromExpression(f'"rank" <= {ALWAYS_LABEL_TOP}'))
    props.setProperty(QgsPalLayerSettings.Priority, QgsProperty.fromExpression('max(0, 10 - "rank" + 1)'))
    pal.setDataDefinedProperties(props)
    return pal


def export_layer_gpkg(layer: QgsVectorLayer, path: str, layer_name: Optional[str] = None) -> str:
    """Write `layer` to a GeoPackage with QgsVectorFileWriter; returns the path written."""
    if not path.lower().endswith(".gpkg"):
        path += ".gpkg"
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    opts = QgsVectorFileWriter.SaveVectorOptions()
    opts.driverName = "GPKG"
    opts.fileEncoding = "UTF-8"
    opts.layerName = layer_name or "search_results"
    opts.layerMetadata = layer.metadata()  # the query travels with the file (title, abstract, keywords)
    opts.saveMetadata = True
    result = QgsVectorFileWriter.writeAsVectorFormatV3(layer, path, QgsProject.instance().transformContext(), opts)
    err, msg = result[0], result[1] if len(result) > 1 else ""
    if err != QgsVectorFileWriter.NoError:
        raise EngineError(f"cannot write {path}: {msg or err}")
    return path
