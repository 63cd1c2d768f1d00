"""A QGIS layer whose source is a URL or /vsicurl/ path indexes as what it is (the dock and Processing
resolve layers with `raster_source_from_layer`), read over a loopback Range server."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsRasterLayer

from plugin.core.indexing import index_info, index_rasters
from plugin.core.rasters.raster import open_raster
from plugin.core.rasters.tiling import TilingParams
from plugin.core.types import RasterSource
from plugin.qgis_io.layers import raster_source_from_layer
from tests.core import rasters
from tests.core.range_server import GDAL_HTTP_ENV, RangeServer


def test_url_and_vsicurl_layers_become_remote_sources(qgis_new_project, tmp_path: Path, monkeypatch):
    for k, v in GDAL_HTTP_ENV.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "www").mkdir()
    local = rasters.write_raster(str(tmp_path / "www" / "aerial.tif"), rasters.pattern(3, 128, 128), crs="EPSG:32618")
    with RangeServer(str(tmp_path / "www")) as srv:
        url = srv.url("aerial.tif")
        for source in ("/vsicurl/" + url, url):
            layer = QgsRasterLayer(source, "Aerial (remote)", "gdal")
            assert layer.isValid(), source
            src = raster_source_from_layer(layer)
            assert src.path in (source, "/vsicurl/" + url) and src.name == "Aerial (remote)"
            assert open_raster(src.path).raster_id == open_raster(local).raster_id
        # What the index task sends the worker: the plain source, indexed from the server.
        rep = index_rasters(str(tmp_path / "idx"), [RasterSource.from_dict(src.to_dict())],
                            tiling=TilingParams(tile_size=64), captioner_options={"variants": 1})
        assert rep.rasters[0]["tiles_new"] == 4 and srv.ranged_gets() > 0
    assert index_info(str(tmp_path / "idx"))["rasters"][0]["path"] == src.path
