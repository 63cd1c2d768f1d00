"""Helpers shared by the dock / heartbeat / project tests: load the plugin like QGIS, make rasters,
wait on Qt signals without blocking the event loop."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from qgis.core import QgsApplication, QgsCoordinateReferenceSystem, QgsProject, QgsRasterLayer

from scripts.plugin_loader import import_plugin_package as load_package

ROOT = Path(__file__).resolve().parents[2]


def load_plugin(iface) -> Any:
    plugin = load_package().classFactory(iface)
    plugin.initGui()
    return plugin


def wait_until(pred: Callable[[], bool], timeout: float = 120.0, what: str = "condition") -> None:
    """Spin the Qt event loop until `pred()` is true (task callbacks run on the main thread)."""
    t_end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > t_end:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        QgsApplication.processEvents()
        time.sleep(0.005)


class SignalCatcher:
    """Records the arguments of every emission of a signal."""

    def __init__(self, signal) -> None:
        self.calls: list[tuple] = []
        signal.connect(lambda *a: self.calls.append(a))

    def wait(self, n: int = 1, timeout: float = 120.0, what: str = "signal") -> tuple:
        wait_until(lambda: len(self.calls) >= n, timeout, what)
        return self.calls[n - 1]


def write_generated_raster(path: str) -> str:
    """A 4-band (R,G,B,NIR) uint16 GeoTIFF in EPSG:4326: water on the left, vegetation on the right.

    In a different CRS from the Sentinel-2 scene so that reprojection to the project CRS is exercised.
    Written with QGIS's own GDAL (osgeo): importing rasterio here would load a second GDAL library
    into the QGIS test process.
    """
    from osgeo import gdal, osr

    h, w = 640, 640
    rng = np.random.default_rng(7)
    left = np.zeros((h, w), bool)
    left[:, : w // 2] = True
    ds = gdal.GetDriverByName("GTiff").Create(path, w, h, 4, gdal.GDT_UInt16)
    ds.SetGeoTransform((-74.30, 0.0001, 0.0, 40.80, 0.0, -0.0001))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    ds.SetProjection(srs.ExportToWkt())
    # reflectance x 10000: water is dark with low NIR; vegetation has a strong NIR plateau
    for b, (water, veg) in enumerate(((300, 400), (500, 900), (700, 350), (150, 4500)), start=1):
        band = np.where(left, water, veg).astype(np.float64)
        ds.GetRasterBand(b).WriteArray(np.clip(band + rng.normal(0, 40, (h, w)), 1, 10000).astype(np.uint16))
    ds.FlushCache()
    ds = None
    return path


def sentinel2_vrt_path(s2_dir: Path, out_dir: Path) -> str:
    """The engine's Sentinel-2 VRT (B04 B03 B02 B08), built in the engine's Python (it uses rasterio)."""
    import subprocess

    out = out_dir / "s2_rgbn.vrt"
    code = "import sys; from plugin.core.rasters.raster import sentinel2_vrt; print(sentinel2_vrt(sys.argv[1], sys.argv[2]))"
    res = subprocess.run([sys.executable, "-c", code, str(s2_dir), str(out)], cwd=str(ROOT), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout.strip().splitlines()[-1]


def add_raster(path: str, name: str) -> QgsRasterLayer:
    layer = QgsRasterLayer(path, name)
    assert layer.isValid(), path
    QgsProject.instance().addMapLayer(layer)
    return layer


def engine_env() -> None:
    """Offline engine, and the default engine Python (another test may have left a custom one in the settings)."""
    from qgis.core import QgsSettings

    QgsSettings().remove("semantic_imagery_search/engine_python")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def set_spectral(plugin, tile_size: int = 512) -> None:
    """Spectral captioner, packaged embedder, given tile size, CPU: the fast offline configuration."""
    w = plugin.dock.index_widget.options_widget
    opts = w.options()
    opts.captioner_kind, opts.tile_size, opts.device, opts.embedder = "spectral", tile_size, "cpu", ""
    opts.overlap, opts.scales, opts.batch_size = 0.0, "1", 0
    w.set_options(opts)


def index_and_wait(plugin, update: bool = False, timeout: float = 300.0) -> dict:
    ctl = plugin.index_ctl
    done: list[dict] = []
    assert ctl.start_index(update=update), "indexing did not start"
    ctl.task.index_finished.connect(lambda r: done.append(r))
    wait_until(lambda: bool(done) and ctl.task is None, timeout, "the indexing job")
    # the info refresh that follows a job goes through the warm worker
    wait_until(lambda: not plugin.session.queue.busy, timeout, "the index info refresh")
    return done[0]


def search_and_wait(plugin, query: str, top: int = 10, only_extent: bool = False, timeout: float = 180.0) -> tuple:
    """Type the query and press Enter; returns (hits as dicts, error text) once they are on the map."""
    w = plugin.dock.search_widget
    catcher = SignalCatcher(plugin.search_ctl.search_finished)
    w.top_spin.setValue(top)
    w.extent_check.setChecked(only_extent)
    w.query_edit.setText(query)
    w.request_search()
    hits, error = catcher.wait(1, timeout, f"search {query!r}")
    return [h.to_dict() if hasattr(h, "to_dict") else h for h in hits], error


def current_shore_layer() -> QgsRasterLayer:
    """The Shore layer of the current project (a test re-opens the saved project: new layer objects)."""
    return QgsProject.instance().mapLayersByName("Shore")[0]


def indexed_shore_project(qgis_iface, folder: str, crs: str = "EPSG:3857", tile_size: int = 128):
    """A new project in `crs` with the generated "Shore" raster indexed by the dock (spectral
    captioner): (plugin, layer, canvas). The caller unloads the plugin and clears the project."""
    engine_env()
    project = QgsProject.instance()
    project.clear()
    project.setCrs(QgsCoordinateReferenceSystem(crs))
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem(crs))
    plugin = load_plugin(qgis_iface)
    layer = add_raster(write_generated_raster(os.path.join(folder, "shore.tif")), "Shore")
    canvas.setLayers([layer])
    set_spectral(plugin, tile_size=tile_size)
    report = index_and_wait(plugin)
    assert not report.get("error") and not report.get("canceled"), report
    return plugin, layer, canvas
