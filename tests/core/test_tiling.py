"""The tile grid, ids, footprints, scales and the windowed reads on generated and real rasters."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from plugin.core.captioners.base import tile_image
from plugin.core.errors import Canceled, EngineError, RasterError, TilingError
from plugin.core.rasters.raster import RasterInfo, open_raster, sentinel2_vrt
from plugin.core.rasters.tiling import MAX_OUT_SIZE, TilingParams, footprint, iter_tiles, plan_tiles, read_tile, tile_id
from plugin.core.types import BandMap, PixelWindow
from tests.core import rasters


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("tiling"))


def _ring_area(ring: tuple[tuple[float, float], ...]) -> float:
    return 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:])))


def _covered(info: RasterInfo, refs: list) -> np.ndarray:
    cov = np.zeros((info.height, info.width), bool)
    for r in refs:
        w = r.window
        cov[w.row_off: w.row_off + w.height, w.col_off: w.col_off + w.width] = True
    return cov


def test_params_validate_and_round_trip() -> None:
    p = TilingParams(tile_size=256, overlap=0.25, scales=(4, 1, 2, 2), out_size=224, min_valid_fraction=0.3)
    assert p.scales == (1, 2, 4)
    assert TilingParams.from_dict(p.to_dict()) == p
    assert TilingParams.from_dict({}) == TilingParams()
    np_ints = TilingParams(tile_size=np.int64(256), scales=(np.int32(2), 1))  # type: ignore[arg-type]
    assert np_ints.tile_size == 256 and type(np_ints.tile_size) is int and np_ints.scales == (1, 2)
    for bad in (dict(tile_size=0), dict(overlap=1.0), dict(overlap=-0.1), dict(scales=()), dict(scales=(0,)),
                dict(out_size=2), dict(min_valid_fraction=1.5), dict(tile_size_units=-5.0), dict(tile_size=256.5),
                dict(scales=(1.5,)), dict(tile_size=True)):
        with pytest.raises(TilingError):
            TilingParams(**bad)  # type: ignore[arg-type]
    assert issubclass(TilingError, EngineError)


def test_grid_shifts_edge_tiles_inside_and_covers_everything(folder: str) -> None:
    info = open_raster(rasters.north_up(folder))  # 300 x 200
    refs = plan_tiles(info, TilingParams(tile_size=128))
    assert [(r.window.col_off, r.window.row_off) for r in refs] == [
        (0, 0), (128, 0), (172, 0), (0, 72), (128, 72), (172, 72)]
    assert all(r.window.width == r.window.height == 128 and r.scale == 1 for r in refs)
    assert _covered(info, refs).all()
    ov = plan_tiles(info, TilingParams(tile_size=128, overlap=0.5))
    assert sorted({r.window.col_off for r in ov}) == [0, 64, 128, 172]
    assert sorted({r.window.row_off for r in ov}) == [0, 64, 72]
    small = plan_tiles(info, TilingParams(tile_size=512, scales=(1, 2, 4)))
    assert [r.window for r in small] == [PixelWindow(0, 0, 300, 200)]  # one clipped tile, larger scales skipped


def test_tile_ids_are_stable_short_and_unique(folder: str, tmp_path: Path) -> None:
    p = rasters.north_up(folder, name="ids.tif")
    params = TilingParams(tile_size=64, overlap=0.5, scales=(1, 2))
    a = plan_tiles(open_raster(p), params)
    copy = tmp_path / "moved" / "other_name.tif"
    copy.parent.mkdir()
    shutil.copy(p, copy)
    b = plan_tiles(open_raster(str(copy)), params)
    assert [r.tile_id for r in a] == [r.tile_id for r in b]
    assert len({r.tile_id for r in a}) == len(a)
    assert all(len(r.tile_id) == 16 and int(r.tile_id, 16) >= 0 for r in a)
    w = PixelWindow(0, 0, 64, 64)
    assert tile_id("abc", w, 1) == tile_id("abc", PixelWindow(0, 0, 64, 64), 1) != tile_id("abc", w, 2)


def test_north_up_footprints_match_the_bounds(folder: str) -> None:
    p = rasters.north_up(folder)
    info = open_raster(p)
    refs = plan_tiles(info, TilingParams(tile_size=100))
    with rasterio.open(p) as ds:
        for r in refs:
            w = r.window
            left, bottom, right, top = rasterio.windows.bounds(Window(w.col_off, w.row_off, w.width, w.height), ds.transform)
            assert r.footprint == ((left, top), (right, top), (right, bottom), (left, bottom), (left, top))
        xs = [x for r in refs for x, _ in r.footprint]
        ys = [y for r in refs for _, y in r.footprint]
        assert min(xs) == ds.bounds.left and max(xs) == ds.bounds.right
        assert min(ys) == ds.bounds.bottom and max(ys) == ds.bounds.top
    gj = refs[0].footprint_geojson()
    assert gj["type"] == "Polygon" and gj["coordinates"][0][0] == gj["coordinates"][0][-1]


def test_rotated_footprint_follows_the_transform(folder: str) -> None:
    p = rasters.rotated(folder, angle_deg=30.0)  # 256 x 192, 2 m pixels rotated by 30 degrees
    info = open_raster(p)
    refs = plan_tiles(info, TilingParams(tile_size=64))
    with rasterio.open(p) as ds:
        t = ds.transform
        for r in refs:
            w = r.window
            ring = r.footprint
            assert ring[0] == ring[-1] and len(ring) == 5
            for (x, y), (col, row) in zip(ring, [(w.col_off, w.row_off), (w.col_off + w.width, w.row_off),
                                                 (w.col_off + w.width, w.row_off + w.height),
                                                 (w.col_off, w.row_off + w.height)]):
                ex, ey = t * (col, row)
                assert (x, y) == pytest.approx((ex, ey))
            assert _ring_area(ring) == pytest.approx(64 * 64 * 4.0)
            (x0, y0), (x1, y1) = ring[0], ring[1]
            assert np.degrees(np.arctan2(y1 - y0, x1 - x0)) == pytest.approx(30.0)
            # The tile centre lies where the transform puts the window's centre pixel.
            cx, cy = np.mean([q[0] for q in ring[:4]]), np.mean([q[1] for q in ring[:4]])
            assert (cx, cy) == pytest.approx(t * (w.col_off + w.width / 2, w.row_off + w.height / 2))


def test_no_crs_footprints_are_pixel_coordinates(folder: str) -> None:
    info = open_raster(rasters.no_crs(folder))  # 200 x 150
    refs = plan_tiles(info, TilingParams(tile_size=100))
    assert refs[-1].footprint == ((100.0, 50.0), (200.0, 50.0), (200.0, 150.0), (100.0, 150.0), (100.0, 50.0))
    tiles = list(iter_tiles(info, TilingParams(tile_size=100)))
    assert len(tiles) == 4 and all(t.pixel_size is None for t in tiles)
    with pytest.raises(TilingError, match="needs a raster with a CRS"):
        plan_tiles(info, TilingParams(tile_size_units=500.0))


def test_tile_size_in_ground_units(folder: str) -> None:
    info = open_raster(rasters.north_up(folder))  # 10 m pixels
    refs = plan_tiles(info, TilingParams(tile_size_units=1280.0))
    assert {(r.window.width, r.window.height) for r in refs} == {(128, 128)}
    geo = open_raster(rasters.geographic(folder))  # 0.0001 degree pixels: units are degrees
    assert plan_tiles(geo, TilingParams(tile_size_units=0.01))[0].window.width == 100
    with pytest.raises(TilingError, match="use a larger tile size"):
        plan_tiles(info, TilingParams(tile_size_units=30.0))


def test_scales_2_and_4_cover_2x_and_4x(folder: str) -> None:
    p = rasters.tiled_with_overviews(folder)  # 1024 x 768 uint16 with overviews 2, 4, 8
    info = open_raster(p)
    params = TilingParams(tile_size=128, scales=(1, 2, 4))
    refs = plan_tiles(info, params)
    by = {s: [r for r in refs if r.scale == s] for s in (1, 2, 4)}
    assert (len(by[1]), len(by[2]), len(by[4])) == (48, 12, 4)
    area1 = _ring_area(by[1][0].footprint)
    for s in (2, 4):
        assert {(r.window.width, r.window.height) for r in by[s]} == {(128 * s, 128 * s)}
        assert all(_ring_area(r.footprint) == pytest.approx(area1 * s * s) for r in by[s])
        assert _covered(info, by[s]).all()
    tiles = {t.ref.tile_id: t for t in iter_tiles(info, params)}
    assert len(tiles) == len(refs)
    with rasterio.open(p) as ds:
        for s in (2, 4):
            t = tiles[by[s][1].tile_id]
            assert t.rgb.shape == (128, 128, 3) and t.raw.shape == (3, 128, 128)
            assert t.pixel_size == pytest.approx(10.0 * s, rel=1e-3)  # geodesic metres (UTM scale ~0.9996)
            w = t.ref.window
            full = ds.read([1, 2, 3], window=Window(w.col_off, w.row_off, w.width, w.height)).astype(np.float64)
            block_mean = full.reshape(3, 128, s, 128, s).mean(axis=(2, 4))
            assert np.abs(t.raw - block_mean).max() <= 2.0  # averaged, from the overviews
    assert tiles[by[1][0].tile_id].pixel_size == pytest.approx(10.0, rel=1e-3)


def test_uint16_tiles_raw_rgb_and_nir(folder: str) -> None:
    p = rasters.uint16(folder)  # 260 x 210, 4 bands named R, G, B, NIR
    info = open_raster(p)
    tiles = list(iter_tiles(info, TilingParams(tile_size=128)))
    assert len(tiles) == 6  # columns 0, 128, 132 (shifted inside); rows 0, 82
    with rasterio.open(p) as ds:
        for t in tiles:
            w = t.ref.window
            data = ds.read([1, 2, 3, 4], window=Window(w.col_off, w.row_off, w.width, w.height))
            assert t.raw.dtype == np.float32 and t.raw.shape == (4, 128, 128)
            np.testing.assert_array_equal(t.raw, data.astype(np.float32))
            assert t.has_nir and t.valid.all() and t.rgb.dtype == np.uint8 and t.rgb.shape == (128, 128, 3)
            for c in range(3):
                lo, hi = info.stretch[c]
                want = np.clip((data[c] - lo) / (hi - lo) * 255.0, 0, 255)
                assert np.abs(t.rgb[..., c].astype(float) - want).max() <= 1.0
            # RGB is a channel-last view of contiguous planes (no per-pixel interleave while tiling);
            # what a VLM gets through tile_image is the same pixels, packed.
            assert t.rgb.transpose(2, 0, 1).flags.c_contiguous
            np.testing.assert_array_equal(np.asarray(tile_image(t)), t.rgb)
    allpix = np.concatenate([t.rgb.reshape(-1, 3) for t in tiles])
    assert 0.005 < (allpix == 255).mean() < 0.1 and 0.005 < (allpix == 0).mean() < 0.1  # ~2 % clipped each side


def test_float_nan_tiles_mark_invalid_and_skip_empty(folder: str) -> None:
    info = open_raster(rasters.float_nan(folder))  # left 60 % NaN, 200 x 200
    params = TilingParams(tile_size=50, min_valid_fraction=0.5)
    refs = plan_tiles(info, params)
    tiles = list(iter_tiles(info, params))
    assert len(refs) == 16 and len(tiles) == 8  # columns 0..100 all NaN (skipped), 100..150 60 % valid
    assert all(t.ref.window.col_off >= 100 for t in tiles)
    part = read_tile(info, refs[2])  # col 100..150: 120 is where NaN ends
    assert part.valid[:, :20].sum() == 0 and part.valid[:, 20:].all()
    assert np.isnan(part.raw[:, :, :20]).all() and np.isfinite(part.raw[:, :, 20:]).all()
    assert (part.rgb[:, :20] == 0).all() and part.rgb[:, 20:].any()
    strict = list(iter_tiles(info, TilingParams(tile_size=50, min_valid_fraction=0.7)))
    assert len(strict) == 4 and all(t.valid.all() for t in strict)


def test_nodata_values_and_internal_masks(folder: str) -> None:
    p = rasters.with_nodata(folder)  # bottom 70 % nodata=65535, plus pixel (5, 5)
    info = open_raster(p)
    tiles = list(iter_tiles(info, TilingParams(tile_size=50)))
    assert {t.ref.window.row_off for t in tiles} == {0}  # rows >= 60 nodata: only the top row of tiles
    first = tiles[0]
    assert not first.valid[5, 5] and first.valid.sum() == 50 * 50 - 1 and np.isnan(first.raw[:, 5, 5]).all()
    m = rasters.with_mask(folder)  # valid disc of radius 70 in a 200 x 200 raster
    minfo = open_raster(m)
    refs = plan_tiles(minfo, TilingParams(tile_size=50))
    kept = list(iter_tiles(minfo, TilingParams(tile_size=50, min_valid_fraction=0.5)))
    assert 0 < len(kept) < len(refs)
    with rasterio.open(m) as ds:
        mask = ds.read_masks(1) > 0
        for r in refs:
            w = r.window
            t = read_tile(minfo, r)
            np.testing.assert_array_equal(t.valid, mask[w.row_off: w.row_off + 50, w.col_off: w.col_off + 50])
            expect_kept = mask[w.row_off: w.row_off + 50, w.col_off: w.col_off + 50].mean() >= 0.5
            assert expect_kept == (r.tile_id in {k.ref.tile_id for k in kept})


def test_nodata_only_yields_nothing_but_reports_progress(folder: str) -> None:
    info = open_raster(rasters.nodata_only(folder))
    params = TilingParams(tile_size=64)
    calls: list[tuple[int, int]] = []
    tiles = list(iter_tiles(info, params, progress=lambda d, t, m: calls.append((d, t))))
    assert tiles == [] and calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert read_tile(info, plan_tiles(info, params)[0]).valid.sum() == 0


def test_one_band_gray_and_geographic(folder: str) -> None:
    info = open_raster(rasters.one_band(folder))
    t = next(iter_tiles(info, TilingParams(tile_size=64)))
    assert t.raw.shape == (3, 64, 64) and not t.has_nir
    assert (t.rgb[..., 0] == t.rgb[..., 1]).all() and (t.rgb[..., 1] == t.rgb[..., 2]).all()
    np.testing.assert_array_equal(t.raw[0], t.raw[2])
    geo = open_raster(rasters.geographic(folder))
    gt = list(iter_tiles(geo, TilingParams(tile_size=120)))
    # Ground size in metres, not degrees: 0.0001 deg is ~11.1 m north-south and ~7.7 m east-west at 46.5 N.
    lat = math.radians(46.5 - 60 * 0.0001)
    spherical = math.sqrt((6371008.8 * math.radians(1e-4)) ** 2 * math.cos(lat))
    assert len(gt) == 4 and gt[0].pixel_size == pytest.approx(spherical, rel=5e-3)
    lon, lat = gt[0].ref.footprint[0]
    assert (lon, lat) == pytest.approx((11.0, 46.5))


def test_refs_subset_cancel_and_out_size(folder: str) -> None:
    info = open_raster(rasters.north_up(folder))
    params = TilingParams(tile_size=64, out_size=32)
    refs = plan_tiles(info, params)
    sub = [refs[3], refs[0]]
    got = list(iter_tiles(info, params, refs=sub))
    assert [t.ref.tile_id for t in got] == [refs[3].tile_id, refs[0].tile_id]
    assert got[0].rgb.shape == (32, 32, 3) and got[0].pixel_size == pytest.approx(20.0, rel=1e-3)
    seen: list[str] = []
    with pytest.raises(Canceled):
        for t in iter_tiles(info, params, is_canceled=lambda: len(seen) >= 2):
            seen.append(t.ref.tile_id)
    assert len(seen) == 2
    assert read_tile(info, refs[0]).rgb.shape == (64, 64, 3)
    assert read_tile(info, refs[0], out_size=16).rgb.shape == (16, 16, 3)
    big = TilingParams(tile_size=4096)
    assert MAX_OUT_SIZE == 1024 and plan_tiles(info, big)[0].window.width == 300


def test_changed_file_is_a_raster_error(tmp_path: Path) -> None:
    p = rasters.north_up(str(tmp_path), name="changing.tif")
    info = open_raster(p)
    rasters.north_up(str(tmp_path), name="changing.tif", width=100, height=100)
    with pytest.raises(RasterError, match="changed since"):
        list(iter_tiles(info, TilingParams(tile_size=64)))
    gone = RasterInfo.from_dict({**info.to_dict(), "path": str(tmp_path / "gone.tif")})
    with pytest.raises(RasterError, match="cannot read raster"):
        list(iter_tiles(gone, TilingParams(tile_size=64)))


def test_footprint_function_on_window() -> None:
    info = RasterInfo("x.tif", "r", "x", 10, 10, 1, "uint8", "WKT", (2.0, 0.0, 100.0, 0.0, -2.0, 50.0),
                      BandMap(1, 1, 1), None, ((0.0, 255.0),) * 3, 2.0)
    assert footprint(info, PixelWindow(1, 2, 3, 4)) == ((102.0, 46.0), (108.0, 46.0), (108.0, 38.0), (102.0, 38.0),
                                                      (102.0, 46.0))


def test_real_sentinel2_scene(s2_dir: Path, tmp_path: Path) -> None:
    vrt = sentinel2_vrt(str(s2_dir), str(tmp_path / "s2.vrt"))
    info = open_raster(vrt)
    params = TilingParams(tile_size=512, scales=(1, 2))
    refs = plan_tiles(info, params)
    assert sum(r.scale == 1 for r in refs) == 16 and sum(r.scale == 2 for r in refs) == 4
    with rasterio.open(s2_dir / "s2_B04.jp2") as b4:
        left, bottom, right, top = b4.bounds
    for r in refs:
        xs, ys = [p[0] for p in r.footprint], [p[1] for p in r.footprint]
        assert left <= min(xs) and max(xs) <= right and bottom <= min(ys) and max(ys) <= top
    tiles = list(iter_tiles(info, params))
    assert len(tiles) == 20 and all(t.has_nir and t.raw.shape[0] == 4 for t in tiles)
    rgb = np.concatenate([t.rgb.reshape(-1, 3) for t in tiles if t.ref.scale == 1])
    assert 40 < rgb.mean() < 200 and rgb.std() > 20  # a stretched, not saturated, scene
    assert (rgb == 255).mean() < 0.1 and (rgb == 0).mean() < 0.1
    with rasterio.open(s2_dir / "s2_B08.jp2") as b8:
        w = tiles[5].ref.window
        np.testing.assert_array_equal(tiles[5].raw[3], b8.read(1, window=Window(w.col_off, w.row_off, 512, 512)))


def test_real_neon_rgb(neon_tif: Path) -> None:
    info = open_raster(str(neon_tif))
    tiles = list(iter_tiles(info, TilingParams(tile_size=200)))
    assert len(tiles) == 4 and all(t.pixel_size == pytest.approx(0.1, rel=2e-3) for t in tiles)
    with rasterio.open(neon_tif) as ds:
        full = ds.read()
    for t in tiles:
        w = t.ref.window
        data = full[:, w.row_off: w.row_off + 200, w.col_off: w.col_off + 200]
        valid = (data != 255).all(axis=0)
        np.testing.assert_array_equal(t.valid, valid)
        np.testing.assert_array_equal(t.rgb[valid], np.moveaxis(data, 0, -1)[valid])  # byte RGB shown as is
