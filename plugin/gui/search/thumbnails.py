"""Thumbnails of hits, read from the raster FILE (GDAL) in a background QgsTask.

Never from a layer's data provider (not thread-safe) and never on the main thread; results are kept
in a small in-memory LRU so scrolling back through results or repeating a query costs nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Callable, Optional

from qgis.core import QgsTask
from qgis.PyQt.QtGui import QImage

THUMB_PIXELS = 96
_CACHE_MAX = 512
_cache: OrderedDict[str, QImage] = OrderedDict()
_infos: OrderedDict[str, list] = OrderedDict()

if TYPE_CHECKING:  # numpy comes with core.types: not at QGIS start-up
    from ...core.types import Hit


def cached(tile_id: str) -> Optional[QImage]:
    img = _cache.get(tile_id)
    if img is not None:
        _cache.move_to_end(tile_id)
    return img


def _remember(tile_id: str, img: QImage) -> None:
    _cache[tile_id] = img
    _cache.move_to_end(tile_id)
    while len(_cache) > _CACHE_MAX:
        _cache.popitem(last=False)


def clear_cache() -> None:
    _cache.clear()
    _infos.clear()


def _stretch(path: str, ds, bands: list[int]):
    """Raster-wide 2-98 % stretch per band from a decimated read (once per raster), like the captioner's."""
    import numpy as np

    st = _infos.get(path)
    if st is None:
        scale = max(1.0, max(ds.RasterXSize, ds.RasterYSize) / 512.0)
        bx, by = max(1, int(ds.RasterXSize / scale)), max(1, int(ds.RasterYSize / scale))
        st = []
        for b in bands:
            band = ds.GetRasterBand(b)
            arr = band.ReadAsArray(0, 0, ds.RasterXSize, ds.RasterYSize, bx, by).astype("float64")
            nodata = band.GetNoDataValue()
            valid = np.isfinite(arr) & ((arr != nodata) if nodata is not None else True)
            vals = arr[valid]
            lo, hi = (np.percentile(vals, (2, 98)) if vals.size else (0.0, 1.0))
            st.append((float(lo), float(hi) if hi > lo else float(lo) + 1.0))
        _infos[path] = st
        while len(_infos) > 32:
            _infos.popitem(last=False)
    return st


def read_thumbnail_rgb(hit: Hit, size: int = THUMB_PIXELS):
    """(H, W, 3) uint8 of the hit's tile, read from the raster FILE off the main thread.

    GDAL through osgeo (QGIS's own GDAL), not rasterio: a rasterio wheel brings a second GDAL
    library into QGIS's process, and two GDALs in one process can crash it. One dataset per call
    and thread, never a layer's data provider.
    """
    import numpy as np
    from osgeo import gdal

    ds = gdal.Open(hit.raster, gdal.GA_ReadOnly)
    if ds is None:
        raise OSError(f"cannot open {hit.raster}")
    bands = [1, 2, 3] if ds.RasterCount >= 3 else [1, 1, 1]
    stretch = _stretch(hit.raster, ds, bands)
    w = hit.window
    x0, y0 = max(0, w.col_off), max(0, w.row_off)
    x1, y1 = min(ds.RasterXSize, w.col_off + w.width), min(ds.RasterYSize, w.row_off + w.height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"tile window outside {hit.raster}")
    f = size / float(max(x1 - x0, y1 - y0))
    bx, by = max(1, round((x1 - x0) * f)), max(1, round((y1 - y0) * f))
    out = np.zeros((by, bx, 3), dtype=np.uint8)
    for c, (b, (lo, hi)) in enumerate(zip(bands, stretch)):
        arr = ds.GetRasterBand(b).ReadAsArray(x0, y0, x1 - x0, y1 - y0, bx, by)
        if arr is None:
            raise OSError(f"cannot read band {b} of {hit.raster}")
        out[..., c] = np.clip((np.nan_to_num(arr.astype("float64")) - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    ds = None
    return out


def rgb_to_qimage(rgb) -> QImage:
    import numpy as np

    arr = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    h, w = arr.shape[:2]
    return QImage(arr.tobytes(), w, h, 3 * w, QImage.Format.Format_RGB888).copy()


class ThumbnailTask(QgsTask):
    """Reads the thumbnails of a list of hits; `on_ready(tile_id, QImage)` is called on the main thread."""

    def __init__(self, hits: list[Hit], on_ready: Callable[[str, QImage], None], size: int = THUMB_PIXELS) -> None:
        super().__init__("Semantic Imagery Search: thumbnails", QgsTask.Flag.CanCancel)
        self.hits = [h for h in hits if cached(h.tile_id) is None]
        self.on_ready = on_ready
        self.size = size
        self.images: list[tuple[str, QImage]] = []
        self.errors: list[str] = []

    def run(self) -> bool:
        for i, hit in enumerate(self.hits):
            if self.isCanceled():
                return False
            try:
                self.images.append((hit.tile_id, rgb_to_qimage(read_thumbnail_rgb(hit, self.size))))
            except Exception as exc:  # a missing file must not stop the other thumbnails
                self.errors.append(f"{hit.raster}: {exc}")
            self.setProgress(100.0 * (i + 1) / max(1, len(self.hits)))
        return True

    def finished(self, result: bool) -> None:
        for tile_id, img in self.images:
            _remember(tile_id, img)
            try:
                self.on_ready(tile_id, img)
            except RuntimeError:  # the dock was closed meanwhile
                return
