"""Ground sizes in captions come from geodesic metres, for any CRS, and not at all without a CRS."""

from __future__ import annotations

import math
import re

import pytest
from rasterio.transform import from_origin

from plugin.core.captioners import make_captioner
from plugin.core.rasters.geodesy import ellipsoid_distance_m, window_ground_size_m
from plugin.core.rasters.raster import open_raster
from plugin.core.rasters.tiling import TilingParams, iter_tiles
from tests.core import rasters


def _spans_m(caption: str) -> float:
    m = re.search(r"spans about ([\d.]+) (km|m) across", caption)
    assert m, caption
    return float(m.group(1)) * (1000.0 if m.group(2) == "km" else 1.0)


def test_ellipsoid_distances_match_known_lengths() -> None:
    # One degree of latitude at the equator is 110,574 m and at the pole 111,694 m on WGS84;
    # one degree of longitude at the equator is 111,320 m.
    assert ellipsoid_distance_m(0, -0.5, 0, 0.5) == pytest.approx(110574, rel=2e-4)
    assert ellipsoid_distance_m(0, 89.0, 0, 90.0) == pytest.approx(111694, rel=2e-4)
    assert ellipsoid_distance_m(0, 0, 1, 0) == pytest.approx(111320, rel=2e-4)
    assert ellipsoid_distance_m(179.9995, 10, -179.9995, 10) == pytest.approx(ellipsoid_distance_m(0, 10, 0.001, 10))


def test_epsg4326_tile_captions_say_metres_not_zero(tmp_path) -> None:
    info = open_raster(rasters.geographic(str(tmp_path)))  # 0.0001 deg pixels at 46.5 N
    tiles = list(iter_tiles(info, TilingParams(tile_size=120)))
    w, h = window_ground_size_m(info.crs_wkt, info.transform, 0, 0, 120, 120)  # type: ignore[misc]
    assert w == pytest.approx(120 * 1e-4 * 111320 * math.cos(math.radians(46.494)), rel=5e-3)  # ~920 m
    assert h == pytest.approx(120 * 1e-4 * 111150, rel=5e-3)  # ~1.33 km
    cap = make_captioner("spectral", variants=1)
    text = cap.caption(tiles[:1])[0][0].caption
    assert "about 0 m" not in text
    assert _spans_m(text) == pytest.approx(120 * tiles[0].pixel_size, rel=0.05)
    assert 900 < _spans_m(text) < 1400


def test_projected_metres_and_feet_and_no_crs(tmp_path) -> None:
    utm = open_raster(rasters.north_up(str(tmp_path)))
    (t_utm,) = list(iter_tiles(utm, TilingParams(tile_size=200)))[:1]
    assert t_utm.pixel_size == pytest.approx(10.0, rel=1e-3)
    # A US state plane in survey feet: 10 ft pixels are ~3.05 m on the ground.
    feet = rasters.write_raster(str(tmp_path / "feet.tif"), rasters.pattern(3, 64, 64), crs="EPSG:2263",
                                transform=from_origin(980000.0, 200000.0, 10.0, 10.0))
    (t_ft,) = list(iter_tiles(open_raster(feet), TilingParams(tile_size=64)))
    assert t_ft.pixel_size == pytest.approx(3.048, rel=5e-3)
    nc = open_raster(rasters.no_crs(str(tmp_path)))
    tiles = list(iter_tiles(nc, TilingParams(tile_size=100)))
    assert tiles and all(t.pixel_size is None for t in tiles)
    for variant in make_captioner("spectral").caption(tiles[:1])[0]:
        assert not re.search(r"\bspans\b|\d+(\.\d+)? ?(m|km)\b", variant.caption), variant.caption


def test_tile_pixel_sizes_come_one_proj_call_per_row_with_the_per_window_numbers(tmp_path, monkeypatch) -> None:
    import rasterio.warp

    from plugin.core.rasters.geodesy import window_pixel_m

    info = open_raster(rasters.geographic(str(tmp_path)))  # 0.0001 deg pixels: sizes change with latitude
    params = TilingParams(tile_size=40, scales=(1, 2))
    tiles = list(iter_tiles(info, params))
    want = [window_pixel_m(info.crs_wkt, info.transform, t.ref.window.col_off, t.ref.window.row_off,
                           t.ref.window.width, t.ref.window.height, t.valid.shape) for t in tiles]
    calls = []
    real = rasterio.warp.transform
    monkeypatch.setattr(rasterio.warp, "transform", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = [t.pixel_size for t in tiles]
    assert got == pytest.approx(want, rel=1e-12) and len(set(round(g, 6) for g in got)) > 2
    rows = {(t.ref.window.row_off, t.ref.window.height) for t in tiles}
    assert len(calls) == len(rows) < len(tiles)
