"""Remote rasters (URLs, /vsicurl/) through every core entry point, over a loopback Range server.

The server (tests/core/range_server.py) binds 127.0.0.1 on a random port and is stopped by each
test; GDAL reads the COG with HTTP Range requests, as it would from cloud storage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import rasterio

from plugin.core.errors import RasterError
from plugin.core.indexing import index_info, index_rasters, remove_rasters
from plugin.core.rasters.raster import open_raster
from plugin.core.rasters.rasterpath import is_remote, normalize_raster_path, raster_display_name, raster_present
from plugin.core.rasters.tiling import TilingParams
from plugin.core.store.store import SearchIndex
from plugin.core.types import RasterSource
from tests.core.range_server import GDAL_HTTP_ENV, RangeServer
from tests.core.test_pipeline import write_scene

ROOT = Path(__file__).resolve().parents[2]
SMALL = TilingParams(tile_size=64)
FAST = {"variants": 2}


def test_remote_paths_pass_through_untouched(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for p in ("https://host/a.tif", "/vsicurl/https://host/a.tif", "/vsis3/bucket/a.tif", "s3://bucket/k/a.tif"):
        assert is_remote(p) and normalize_raster_path(p) == p and raster_present(p)
    assert normalize_raster_path("rel/a.tif") == str(tmp_path / "rel" / "a.tif")
    assert not is_remote("rel/a.tif") and not raster_present("rel/a.tif")
    assert raster_display_name("https://h/dir/scene.tif?sig=x") == "scene"
    assert raster_display_name("/vsicurl/https://h/d/b.tif") == "b"
    assert raster_display_name("/vsis3/bucket/c.tif") == "c"


def _cog(tmp_path: Path) -> str:
    src = write_scene(tmp_path / "plain.tif")
    out = tmp_path / "www" / "scene.tif"
    out.parent.mkdir()
    with rasterio.open(src) as ds:
        prof = {k: v for k, v in ds.profile.items() if k not in ("blockxsize", "blockysize", "tiled", "interleave")}
        prof.update(driver="COG", blocksize=128, overview_resampling="average")
        with rasterio.open(out, "w", **prof) as dst:
            dst.write(ds.read())
    return str(out)


def _tiles(index_dir: str) -> dict[str, list[str]]:
    with SearchIndex.open(index_dir, readonly=True) as idx:
        rows = idx.conn.execute("SELECT tile_id, one_sentence, feature, caption FROM captions ORDER BY tile_id, variant_index").fetchall()
    out: dict[str, list[str]] = {}
    for tid, *texts in rows:
        out.setdefault(tid, []).append(json.dumps(texts))
    return out


def test_cog_over_http_indexes_like_the_local_file(tmp_path: Path, monkeypatch) -> None:
    for k, v in GDAL_HTTP_ENV.items():
        monkeypatch.setenv(k, v)
    cog = _cog(tmp_path)
    local_idx, url_idx = str(tmp_path / "local"), str(tmp_path / "url")
    index_rasters(local_idx, [RasterSource(cog)], tiling=SMALL, captioner_options=FAST)
    with RangeServer(str(tmp_path / "www")) as srv:
        url = srv.url("scene.tif")
        info = open_raster(url)
        assert info.path == url and info.name == "scene"
        assert info.raster_id == open_raster(cog).raster_id  # content-based id: same file, same raster
        assert open_raster("/vsicurl/" + url).raster_id == info.raster_id
        rep = index_rasters(url_idx, [RasterSource(url)], tiling=SMALL, captioner_options=FAST)
        assert rep.rasters[0]["path"] == url and rep.rasters[0]["tiles_new"] == 9
        assert srv.ranged_gets() > 0  # GDAL read byte ranges, as from cloud storage
        # Resume: a second run finds nothing to do and reads no tile.
        rep = index_rasters(url_idx, [RasterSource(url)], tiling=SMALL, captioner_options=FAST)
        assert rep.rasters[0]["tiles_new"] == 0
        # A URL that fails to open is one clear line; what is indexed stays.
        with pytest.raises(RasterError, match="cannot read raster http://127.0.0.1"):
            index_rasters(url_idx, [RasterSource(srv.url("missing.tif"))], tiling=SMALL)
    assert _tiles(url_idx) == _tiles(local_idx)
    # The server is gone now: the URL is still "present" (never probed by `info`).
    info = index_info(url_idx)
    assert info["rasters"][0]["path"] == url and info["rasters"][0]["missing"] is False
    assert remove_rasters(url_idx, [url]) and index_info(url_idx)["tiles"] == 0


def test_cli_indexes_a_url(tmp_path: Path) -> None:
    assert os.path.isfile(_cog(tmp_path))  # served as www/scene.tif
    idx = str(tmp_path / "idx")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **GDAL_HTTP_ENV)

    def index(url: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "plugin", "index", "--index", idx, "--tile-size", "96",
                               "--variants", "1", "--quiet", url], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)

    with RangeServer(str(tmp_path / "www")) as srv:
        url = srv.url("scene.tif")  # a plain URL once became <cwd>/http:/127.0.0.1:port/scene.tif
        r = index(url)
        assert r.returncode == 0, r.stderr
    info = index_info(idx)
    assert [x["path"] for x in info["rasters"]] == [url] and info["tiles"] == 4
    # Server gone: an update fails with one line and loses nothing indexed.
    r = index(url)
    assert r.returncode == 1 and "cannot read raster http://127.0.0.1" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and index_info(idx)["tiles"] == 4
