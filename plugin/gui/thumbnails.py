"""Thumbnails of hits, read from the raster FILE with the engine's reader in a background QgsTask.

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
_infos: OrderedDict[str, object] = OrderedDict()

if TYPE_CHECKING:  # numpy comes with core.types: not at QGIS start-up
    from ..core.types import Hit


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


def read_thumbnail_rgb(hit: Hit, size: int = THUMB_PIXELS):
    """(H, W, 3) uint8 of the hit's tile, stretched like the captioner saw it. Runs off the main thread."""
    from ..core.raster import open_raster
    from ..core.tiling import read_tile
    from ..core.types import TileRef

    info = _infos.get(hit.raster)
    if info is None:
        info = open_raster(hit.raster)
        _infos[hit.raster] = info
        while len(_infos) > 16:
            _infos.popitem(last=False)
    ring = hit.footprint.get("coordinates", [[]])[0]
    ref = TileRef(hit.tile_id, hit.raster_id, hit.window, hit.scale, tuple((float(x), float(y)) for x, y in ring))
    return read_tile(info, ref, size).rgb


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
