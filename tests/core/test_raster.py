"""open_raster, fingerprints, band maps, the raster-wide stretch and the band-stacking VRTs."""

from __future__ import annotations

import json
import os
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio

from plugin.core.errors import EngineError, RasterError
from plugin.core.rasters import raster_io
from plugin.core.rasters.raster import RasterInfo, build_band_vrt, open_raster, sentinel2_vrt
from plugin.core.types import BandMap
from tests.core import rasters

S2_BANDS = ("B04", "B03", "B02", "B08")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("rasters"))


def _full_percentiles(path: str, bands: list[int]) -> list[tuple[float, float]]:
    """Reference stretch: 2-98 % of every valid pixel, computed independently with numpy."""
    with rasterio.open(path) as ds:
        out = []
        for b in bands:
            arr = ds.read(b).astype(np.float64)
            m = ds.read_masks(b) > 0
            m &= np.isfinite(arr)
            lo, hi = np.percentile(arr[m], [2, 98])
            out.append((float(lo), float(hi)))
    return out


def test_open_north_up_describes_the_file(folder: str) -> None:
    p = rasters.north_up(folder)
    info = open_raster(p)
    assert (info.width, info.height, info.count, info.dtype) == (300, 200, 3, "uint8")
    assert info.band_map == BandMap(1, 2, 3)
    assert info.crs_wkt is not None and "33N" in info.crs_wkt
    assert info.transform == (10.0, 0.0, 500000.0, 0.0, -10.0, 4650000.0)
    assert info.pixel_size == pytest.approx(10.0)
    assert info.stretch == ((0.0, 255.0),) * 3  # byte imagery keeps its display range
    assert info.name == "north_up" and info.path == os.path.abspath(p)
    assert len(info.raster_id) == 20 and int(info.raster_id, 16) >= 0
    again = RasterInfo.from_dict(json.loads(info.to_json()))
    assert again == info


def test_errors_are_one_line_raster_errors(folder: str, tmp_path: Path) -> None:
    with pytest.raises(RasterError, match="not found"):
        open_raster(str(tmp_path / "missing.tif"))
    junk = tmp_path / "junk.tif"
    junk.write_text("this is not a GeoTIFF\n")
    with pytest.raises(RasterError, match="cannot read raster") as exc:
        open_raster(str(junk))
    assert "\n" not in str(exc.value)
    with pytest.raises(RasterError, match="folder"):
        open_raster(str(tmp_path))
    p = rasters.north_up(folder, name="bm.tif")
    with pytest.raises(RasterError, match="asks for band 5 but the raster has 3"):
        open_raster(p, BandMap(3, 2, 1, 5))
    assert issubclass(RasterError, EngineError)


def test_truncated_file_is_a_raster_error(folder: str, tmp_path: Path) -> None:
    src = rasters.tiled_with_overviews(folder)
    bad = tmp_path / "truncated.tif"
    data = Path(src).read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(RasterError):
        open_raster(str(bad))


def test_raster_id_is_stable_across_copy_rename_and_overviews(folder: str, tmp_path: Path) -> None:
    p = rasters.north_up(folder, name="orig.tif", seed=11)
    rid = open_raster(p).raster_id
    moved = tmp_path / "elsewhere" / "renamed_copy.tif"
    moved.parent.mkdir()
    shutil.copy(p, moved)
    assert open_raster(str(moved)).raster_id == rid
    # Same pixels re-encoded as a tiled, compressed file with overviews: same content, same id.
    with rasterio.open(p) as ds:
        data, prof = ds.read(), ds.profile
    cog = str(tmp_path / "as_cog.tif")
    rasters.write_raster(cog, data, transform=prof["transform"], crs=prof["crs"].to_string(), tiled=True,
                         blockxsize=128, blockysize=128, compress="deflate", overviews=(2, 4))
    assert open_raster(cog).raster_id == rid
    # Different pixels -> different id, even with the same name and georeferencing.
    other = rasters.north_up(str(tmp_path), name="orig.tif", seed=12)
    assert open_raster(other).raster_id != rid
    # Same pixels, shifted georeferencing -> different id.
    shifted = str(tmp_path / "shifted.tif")
    rasters.write_raster(shifted, data, transform=prof["transform"] @ rasterio.Affine.translation(1, 0),
                         crs=prof["crs"].to_string())
    assert open_raster(shifted).raster_id != rid


def test_band_maps_default_and_guessed(folder: str) -> None:
    gray = open_raster(rasters.one_band(folder))
    assert gray.band_map == BandMap(1, 1, 1) and gray.band_map.is_gray
    assert len(gray.stretch) == 3 and gray.stretch[0] == gray.stretch[1] == gray.stretch[2]
    named = open_raster(rasters.uint16(folder))  # descriptions red, green, blue, nir
    assert named.band_map == BandMap(1, 2, 3, 4)
    explicit = open_raster(rasters.uint16(folder), BandMap(4, 3, 2))
    assert explicit.band_map == BandMap(4, 3, 2) and len(explicit.stretch) == 3


def test_uint16_stretch_is_the_raster_wide_2_98_percentile(folder: str) -> None:
    p = rasters.uint16(folder)
    info = open_raster(p)
    ref = _full_percentiles(p, [1, 2, 3, 4])
    assert len(info.stretch) == 4
    for (lo, hi), (rlo, rhi) in zip(info.stretch, ref):
        assert lo == pytest.approx(rlo) and hi == pytest.approx(rhi)
        assert 0 < lo < hi < 10000


def test_float_nan_and_nodata_values_are_excluded_from_the_stretch(folder: str) -> None:
    p = rasters.float_nan(folder)
    info = open_raster(p)
    assert info.dtype == "float32" and info.nodata is None
    ref = _full_percentiles(p, [1, 2, 3])
    assert all(np.isfinite(v) for s in info.stretch for v in s)
    for (lo, hi), (rlo, rhi) in zip(info.stretch, ref):
        assert lo == pytest.approx(rlo, rel=1e-5) and hi == pytest.approx(rhi, rel=1e-5)
    q = rasters.with_nodata(folder)
    nd = open_raster(q)
    assert nd.nodata == 65535.0
    assert all(hi < 10001 for _, hi in nd.stretch)
    for (lo, hi), (rlo, rhi) in zip(nd.stretch, _full_percentiles(q, [1, 2, 3])):
        assert lo == pytest.approx(rlo) and hi == pytest.approx(rhi)


def test_internal_mask_is_used_for_the_stretch(folder: str) -> None:
    p = rasters.with_mask(folder)
    info = open_raster(p)
    for (lo, hi), (rlo, rhi) in zip(info.stretch, [(0.0, 255.0)] * 3):
        assert (lo, hi) == (rlo, rhi)  # byte: display range kept
    with rasterio.open(p) as ds:
        data, valid = raster_io.read_bands(ds, [1, 2, 3])
        assert valid.sum() == (ds.read_masks(1) > 0).sum() and 0 < valid.mean() < 0.5


def test_nodata_only_raster_still_opens(folder: str) -> None:
    info = open_raster(rasters.nodata_only(folder))
    assert info.nodata == 0.0
    assert all(hi > lo for lo, hi in info.stretch)


def test_no_crs_geographic_and_rotated(folder: str) -> None:
    nc = open_raster(rasters.no_crs(folder))
    assert nc.crs_wkt is None and nc.pixel_size is None and not nc.has_crs
    geo = open_raster(rasters.geographic(folder))
    assert geo.pixel_size == pytest.approx(0.0001) and "4326" in (geo.crs_wkt or "")
    rot = open_raster(rasters.rotated(folder, angle_deg=30.0))
    assert rot.is_rotated and rot.pixel_size == pytest.approx(2.0)
    assert rasters.rotation_angle(rot.transform) == pytest.approx(30.0)


def test_stretch_sample_paths_agree_with_full_percentiles(folder: str, monkeypatch: pytest.MonkeyPatch) -> None:
    p = rasters.tiled_with_overviews(folder)
    ref = _full_percentiles(p, [1, 2, 3])
    via_overviews = open_raster(p).stretch  # GDAL serves the decimated read from the overviews
    monkeypatch.setattr(raster_io, "_SMALL_PIXELS", 1000)
    monkeypatch.setattr(raster_io, "_GRID_SIDE", 64)
    q = rasters.north_up(folder, name="grid.tif", width=1024, height=768, dtype="uint16", seed=3)
    via_grid = open_raster(q).stretch  # no overviews, "large": grid of full-resolution windows
    ref_grid = _full_percentiles(q, [1, 2, 3])
    for got, want in ((via_overviews, ref), (via_grid, ref_grid)):
        for (lo, hi), (rlo, rhi) in zip(got, want):
            span = rhi - rlo
            assert abs(lo - rlo) < 0.08 * span and abs(hi - rhi) < 0.08 * span


def test_opening_a_huge_raster_reads_only_samples(tmp_path: Path) -> None:
    """30k x 30k sparse GeoTIFF: opening costs a few blocks, not 2.7 GB of pixels."""
    p = str(tmp_path / "huge.tif")
    prof = dict(driver="GTiff", width=30000, height=30000, count=3, dtype="uint16", crs=rasters.UTM33,
                transform=rasterio.transform.from_origin(0, 300000, 10, 10), tiled=True, blockxsize=512,
                blockysize=512, compress="deflate", sparse_ok=True, nodata=0)
    with rasterio.open(p, "w", **prof) as ds:
        block = rasters.pattern(3, 512, 512, "uint16", seed=4)
        for r, c in ((0, 0), (10000, 20000), (29184, 29184)):
            ds.write(block, window=rasterio.windows.Window(c, r, 512, 512))
    # Read whole it would be 30000 x 30000 x 3 uint16 = 5.4 GB; numpy reports its buffers to tracemalloc.
    tracemalloc.start()
    try:
        info = open_raster(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 * 2**20, f"opening allocated {peak / 2**20:.0f} MB: the raster was read far too much"
    assert (info.width, info.height) == (30000, 30000)
    assert all(0 < lo < hi <= 10000 for lo, hi in info.stretch)


def test_build_band_vrt_mixed_resolutions(tmp_path: Path) -> None:
    fine = rasters.write_raster(str(tmp_path / "b_fine.tif"), rasters.pattern(1, 100, 120, "uint16", seed=1),
                                transform=rasterio.transform.from_origin(1000, 2000, 10, 10))
    coarse = rasters.write_raster(str(tmp_path / "b_coarse.tif"), rasters.pattern(1, 50, 60, "uint16", seed=2),
                                  transform=rasterio.transform.from_origin(1000, 2000, 20, 20))
    vrt = build_band_vrt([fine, coarse, fine], str(tmp_path / "stack.vrt"), descriptions=["a", "b", "c"])
    with rasterio.open(vrt) as ds, rasterio.open(fine) as f, rasterio.open(coarse) as c:
        assert (ds.width, ds.height, ds.count) == (120, 100, 3)
        assert ds.res == (10.0, 10.0) and ds.crs == f.crs
        assert ds.descriptions == ("a", "b", "c")
        np.testing.assert_array_equal(ds.read(1), f.read(1))
        np.testing.assert_array_equal(ds.read(2), np.repeat(np.repeat(c.read(1), 2, 0), 2, 1))
    assert 'relativeToVRT="1"' in Path(vrt).read_text()
    low = build_band_vrt([fine, coarse], str(tmp_path / "low.vrt"), resolution="lowest")
    with rasterio.open(low) as ds:
        assert (ds.width, ds.height) == (60, 50)
    other = rasters.write_raster(str(tmp_path / "b_4326.tif"), rasters.pattern(1, 10, 10, "uint16"), crs="EPSG:4326",
                                 transform=rasterio.transform.from_origin(10, 40, 0.01, 0.01))
    with pytest.raises(RasterError, match="different CRS"):
        build_band_vrt([fine, other], str(tmp_path / "bad.vrt"))
    with pytest.raises(RasterError, match="not found"):
        build_band_vrt([fine, str(tmp_path / "nope.tif")], str(tmp_path / "bad.vrt"))
    with pytest.raises(RasterError, match="resolution"):
        build_band_vrt([fine], str(tmp_path / "bad.vrt"), resolution="finest")


def test_sentinel2_vrt_real_scene(s2_dir: Path, tmp_path: Path) -> None:
    vrt = sentinel2_vrt(str(s2_dir), str(tmp_path / "s2.vrt"))
    info = open_raster(vrt)
    assert (info.width, info.height, info.count, info.dtype) == (1933, 1947, 4, "uint16")
    assert info.band_map == BandMap(1, 2, 3, 4)  # guessed from the band names B04, B03, B02, B08
    assert info.nodata == 0.0 and info.pixel_size == pytest.approx(10.0)
    assert "UTM zone 18N" in (info.crs_wkt or "")
    with rasterio.open(vrt) as ds, rasterio.open(s2_dir / "s2_B08.jp2") as b8:
        assert ds.descriptions == S2_BANDS
        assert ds.bounds == b8.bounds
        win = rasterio.windows.Window(700, 900, 64, 64)
        np.testing.assert_array_equal(ds.read(4, window=win), b8.read(1, window=win))
    # L1C digital numbers (reflectance x 10000): a land/sea scene stretches to a few hundred..few thousand.
    for lo, hi in info.stretch:
        assert 50 < lo < hi < 6000 and hi - lo > 200
    assert info.stretch[3][1] > info.stretch[0][1]  # NIR brighter than red over vegetation


def test_sentinel2_vrt_finds_safe_layout_and_rejects_ambiguity(s2_dir: Path, tmp_path: Path) -> None:
    safe = tmp_path / "S2A_MSIL1C_TEST.SAFE"
    img = safe / "GRANULE" / "L1C_T18SUJ_A000001" / "IMG_DATA"
    img.mkdir(parents=True)
    for b in S2_BANDS:
        os.symlink(s2_dir / f"s2_{b}.jp2", img / f"T18SUJ_20200101T154811_{b}.jp2")
    (img / "T18SUJ_20200101T154811_TCI.jp2").write_bytes(b"")  # not a band: ignored
    vrt = sentinel2_vrt(str(safe), str(safe / "stack.vrt"))
    with rasterio.open(vrt) as ds:
        assert ds.count == 4 and ds.width == 1933
    assert 'relativeToVRT="1"' in Path(vrt).read_text()  # inside the product: moves with it
    with pytest.raises(RasterError, match="no B11 band"):
        sentinel2_vrt(str(safe), str(tmp_path / "x.vrt"), bands=("B04", "B11"))
    img2 = safe / "GRANULE" / "L1C_T18SUK_A000001" / "IMG_DATA"
    img2.mkdir(parents=True)
    os.symlink(s2_dir / "s2_B04.jp2", img2 / "T18SUK_20200101T154811_B04.jp2")
    with pytest.raises(RasterError, match="several Sentinel-2 granules"):
        sentinel2_vrt(str(safe), str(tmp_path / "x.vrt"))
    with pytest.raises(RasterError, match="not found"):
        sentinel2_vrt(str(tmp_path / "nope"), str(tmp_path / "x.vrt"))


def test_neon_rgb(neon_tif: Path) -> None:
    info = open_raster(str(neon_tif))
    assert (info.width, info.height, info.count) == (400, 400, 3)
    assert info.band_map == BandMap(1, 2, 3) and info.nodata == 255.0
    assert info.pixel_size == pytest.approx(0.1)
