"""Tiles carry float32 planes only for captioners that read them (issue 12): `TileImage.raw` is lazy."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from plugin.core.rasters.raster import open_raster
from plugin.core.rasters.tiling import TilingParams, iter_tiles
from plugin.core.types import TileImage
from tests.core import rasters


def test_raw_is_made_on_first_access_with_nan_where_invalid(tmp_path) -> None:
    path = rasters.with_nodata(str(tmp_path))  # uint16, bottom 70 % nodata=65535, plus pixel (5, 5)
    info = open_raster(path)
    tiles = list(iter_tiles(info, TilingParams(tile_size=50)))
    assert tiles and all(t._raw is None for t in tiles), "no float planes until someone asks"
    assert all(t._pixel_size_fn is not None for t in tiles), "no geodesic size until someone asks"
    assert tiles[0].pixel_size == pytest.approx(10.0, rel=1e-2) and tiles[0]._pixel_size_fn is None
    first = tiles[0]
    raw = first.raw
    assert raw.dtype == np.float32 and raw.shape == (3, 50, 50) and first._raw is raw and first._bands is None
    assert np.isnan(raw[:, 5, 5]).all() and np.isfinite(raw[:, ~np.isnan(raw[0])]).all()
    w = first.ref.window
    with rasterio.open(path) as ds:
        want = ds.read([1, 2, 3], window=Window(w.col_off, w.row_off, w.width, w.height)).astype(np.float32)
    ok = first.valid
    np.testing.assert_array_equal(raw[:, ok], want[:, ok])
    assert first.raw is raw, "made once"


def test_eager_raw_and_assignment_still_work() -> None:
    from plugin.core.types import PixelWindow, TileRef

    ref = TileRef("r:0:0:4", "r", PixelWindow(0, 0, 4, 4), 1, ((0, 0), (4, 0), (4, 4), (0, 4), (0, 0)))
    rgb, valid = np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), bool)
    t = TileImage(ref=ref, rgb=rgb, raw=np.ones((3, 4, 4), np.float32), valid=valid)
    assert t.raw.sum() == 48
    t.raw = t.raw[:, :2]
    assert t.raw.shape == (3, 2, 4)
    lazy = TileImage(ref=ref, rgb=rgb, valid=valid, bands=np.full((3, 4, 4), 7, np.uint16))
    assert lazy.raw.dtype == np.float32 and (lazy.raw == 7).all()
    with pytest.raises(ValueError):
        TileImage(ref=ref, rgb=rgb, valid=valid)
