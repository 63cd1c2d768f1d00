"""A point on the map -> the search-by-example spec of the raster pixel under it ("RASTER:COL,ROW").

The engine names a tile by a full-resolution pixel of an indexed raster (core/search/similar.py); here a
canvas click becomes that pixel: the top-most visible raster layer whose extent holds the point,
the point taken into the layer's CRS, then into its pixel grid (north-up rasters).
"""

from __future__ import annotations

from typing import Optional, Sequence

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
)

from ..core.errors import EngineError
from .layers import layer_file_path


def pixel_at(layer: QgsRasterLayer, point: QgsPointXY, crs: QgsCoordinateReferenceSystem) -> Optional[tuple[int, int]]:
    """(col, row) of the layer's pixel under `point` (given in `crs`); None outside the raster."""
    p = QgsPointXY(point)
    if crs.isValid() and layer.crs().isValid() and crs != layer.crs():
        try:
            p = QgsCoordinateTransform(crs, layer.crs(), QgsProject.instance()).transform(p)
        except Exception:  # noqa: BLE001 -- a point that cannot be projected there is not on that raster
            return None
    ext = layer.extent()
    if not ext.contains(p) or layer.width() <= 0 or layer.height() <= 0:
        return None
    col = int((p.x() - ext.xMinimum()) / ext.width() * layer.width())
    row = int((ext.yMaximum() - p.y()) / ext.height() * layer.height())
    return min(col, layer.width() - 1), min(row, layer.height() - 1)


def like_spec_at(point: QgsPointXY, crs: QgsCoordinateReferenceSystem,
                 layers: Sequence[QgsRasterLayer]) -> Optional[str]:
    """"PATH:COL,ROW" for the first of `layers` (top-most first) under the point; None if none is."""
    for layer in layers:
        if not isinstance(layer, QgsRasterLayer):
            continue
        px = pixel_at(layer, point, crs)
        if px is None:
            continue
        try:
            path = layer_file_path(layer)
        except EngineError:
            continue
        return f"{path}:{px[0]},{px[1]}"
    return None
