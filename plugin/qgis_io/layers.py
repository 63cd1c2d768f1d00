"""Raster layers -> plain `RasterSource` values (path, band map, name), resolved on the main thread.

Why here and not in the task: a layer and its data provider belong to the main thread; the task only
gets the file path and reads it with rasterio in the worker process. The band map follows what the
user sees (the layer's renderer), plus a NIR band when one is named like one.
"""

from __future__ import annotations

import os
import re
from typing import Optional

from qgis.core import (
    QgsMapLayer,
    QgsMultiBandColorRenderer,
    QgsProject,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsSingleBandGrayRenderer,
    QgsSingleBandPseudoColorRenderer,
)

from ..core.errors import EngineError, RasterError
from ..core.rasters.rasterpath import is_remote
from ..core.types import BandMap, RasterSource

_NIR_NAME = re.compile(r"\bnir\b|near[ _-]?infra|\bB0?8\b|\bband[ _]?8\b", re.IGNORECASE)


def layer_file_path(layer: QgsMapLayer) -> str:
    """The file (or GDAL /vsi path) behind a GDAL raster layer; EngineError for anything else."""
    if not isinstance(layer, QgsRasterLayer):
        raise EngineError(f"{layer.name()}: not a raster layer")
    provider = layer.providerType()
    if provider != "gdal":
        raise EngineError(f"{layer.name()}: a {provider} layer is not a file; save it as a GeoTIFF to index it")
    parts = QgsProviderRegistry.instance().decodeUri("gdal", layer.source())
    path = str(parts.get("path") or layer.source())
    if is_remote(path):  # /vsicurl/, /vsis3/, plain URLs: passed through, read by rasterio
        return path
    if not os.path.isfile(path):
        raise RasterError(f"{layer.name()}: file not found: {path}")
    return os.path.abspath(path)


def _band_names(layer: QgsRasterLayer) -> list[str]:
    return [str(layer.bandName(i) or "") for i in range(1, layer.bandCount() + 1)]


def guess_band_map(layer: QgsRasterLayer) -> BandMap:
    """R, G, B from the layer's renderer (gray for one-band styles), NIR from a band named like one."""
    count = max(1, int(layer.bandCount()))
    renderer = layer.renderer()
    rgb: Optional[tuple[int, int, int]] = None
    if isinstance(renderer, QgsMultiBandColorRenderer):
        bands = (renderer.redBand(), renderer.greenBand(), renderer.blueBand())
        if all(1 <= b <= count for b in bands):
            rgb = (int(bands[0]), int(bands[1]), int(bands[2]))
    elif isinstance(renderer, QgsSingleBandGrayRenderer):
        b = renderer.grayBand()
        if 1 <= b <= count:
            rgb = (int(b),) * 3
    elif isinstance(renderer, QgsSingleBandPseudoColorRenderer):
        b = renderer.band()
        if 1 <= b <= count:
            rgb = (int(b),) * 3
    base = BandMap(*rgb) if rgb else BandMap.default_for(count)
    nir = None
    if count >= 4:
        for i, name in enumerate(_band_names(layer), start=1):
            label = name.split(":", 1)[1] if ":" in name else name
            if i not in base.rgb and _NIR_NAME.search(label):
                nir = i
                break
    return BandMap(base.red, base.green, base.blue, nir)


def raster_source_from_layer(layer: QgsMapLayer, band_map: Optional[BandMap] = None) -> RasterSource:
    """What the engine needs to index a layer: its file, a band map that fits it, its name."""
    path = layer_file_path(layer)
    assert isinstance(layer, QgsRasterLayer)
    bm = band_map or guess_band_map(layer)
    try:
        bm.check(layer.bandCount())
    except ValueError as exc:
        raise RasterError(f"{layer.name()}: {exc}") from None
    return RasterSource(path, bm, layer.name())


def project_raster_layers(project: Optional[QgsProject] = None) -> list[QgsRasterLayer]:
    """The project's raster layers, by name (the dock and the algorithms list these)."""
    project = project or QgsProject.instance()
    layers = [lyr for lyr in project.mapLayers().values() if isinstance(lyr, QgsRasterLayer)]
    return sorted(layers, key=lambda lyr: (lyr.name().lower(), lyr.id()))
