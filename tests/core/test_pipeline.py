"""The indexing job end to end: real rasters, spectral captioner, packaged MiniLM, real store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from plugin.core.errors import EngineError, IndexStoreError, QueryError
from plugin.core.indexing import index_info, index_rasters, remove_rasters
from plugin.core.rasters.tiling import TilingParams
from plugin.core.search.searcher import Searcher
from plugin.core.types import RasterSource

ROOT = Path(__file__).resolve().parents[2]
SMALL = TilingParams(tile_size=64)
#: Two variants instead of the reference five keep the embedding work (the slow part on CPU) small.
FAST = {"variants": 2}


def write_scene(path: Path, seed: int = 0, size: int = 192) -> str:
    """A 4-band (R,G,B,NIR) uint16 scene: sea in the west, vegetation in the east, a bright beach between."""
    rng = np.random.default_rng(seed)
    h = w = size
    data = np.zeros((4, h, w), np.uint16)
    x = np.arange(w)[None, :].repeat(h, 0)
    sea, beach = x < w // 3, (x >= w // 3) & (x < w // 3 + 16)
    noise = rng.integers(0, 40, (h, w))
    data[0] = np.where(sea, 300, np.where(beach, 2600, 500)) + noise
    data[1] = np.where(sea, 500, np.where(beach, 2400, 900)) + noise
    data[2] = np.where(sea, 900, np.where(beach, 2100, 400)) + noise
    data[3] = np.where(sea, 150, np.where(beach, 2800, 4200)) + noise
    prof = dict(driver="GTiff", width=w, height=h, count=4, dtype="uint16", crs="EPSG:32618",
                transform=from_origin(435730 + seed * 5000, 4179460, 10, 10))
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(data)
    return str(path)


@pytest.fixture()
def scenes(tmp_path: Path) -> list[str]:
    return [write_scene(tmp_path / f"scene{i}.tif", seed=i) for i in range(2)]


def test_index_search_incremental_and_remove(tmp_path: Path, scenes: list[str]) -> None:
    idx = str(tmp_path / "idx")
    calls: list[tuple[int, int]] = []
    rep = index_rasters(idx, [RasterSource(scenes[0])], tiling=SMALL, captioner_options=FAST, progress=lambda d, t, m: calls.append((d, t)))
    r = rep.rasters[0]
    assert r["tiles_planned"] == 9 and r["tiles_new"] == 9 and r["variants"] >= 9
    assert calls and calls[-1][0] == calls[-1][1] == 9
    with Searcher(idx) as s:
        hits = s.search("open water of the sea", top=3)
    assert [h.rank for h in hits] == [1, 2, 3]
    assert all(h.window.col_off < 64 for h in hits[:2]), "sea is the western third"
    assert hits[0].score >= hits[1].score >= hits[2].score

    # Adding a second raster indexes only its tiles; the first one comes from the store.
    rep2 = index_rasters(idx, [RasterSource(scenes[0]), RasterSource(scenes[1])], tiling=SMALL, captioner_options=FAST)
    by_path = {x["path"]: x for x in rep2.rasters}
    assert by_path[scenes[0]]["tiles_new"] == 0
    assert by_path[scenes[1]]["tiles_new"] == 9
    info = index_info(idx)
    assert info["exists"] and len(info["rasters"]) == 2

    removed = remove_rasters(idx, [scenes[0]])
    assert len(removed) == 1
    with Searcher(idx) as s:
        hits = s.search("sea", top=20)
    assert hits and {h.raster for h in hits} == {scenes[1]}


def test_update_with_remove_missing_drops_unlisted(tmp_path: Path, scenes: list[str]) -> None:
    idx = str(tmp_path / "idx")
    index_rasters(idx, [RasterSource(p) for p in scenes], tiling=SMALL, captioner_options=FAST)
    rep = index_rasters(idx, [RasterSource(scenes[1])], tiling=SMALL, captioner_options=FAST, remove_missing=True)
    assert len(rep.removed) == 1 and rep.rasters[0]["tiles_new"] == 0
    assert [r["path"] for r in index_info(idx)["rasters"]] == [scenes[1]]


def test_captioner_change_recaptions_then_cache_is_reused(tmp_path: Path, scenes: list[str]) -> None:
    idx = str(tmp_path / "idx")
    index_rasters(idx, [RasterSource(scenes[0])], tiling=SMALL, captioner_options=FAST)
    rep = index_rasters(idx, [RasterSource(scenes[0])], tiling=SMALL, captioner_options={"variants": 1})
    assert rep.rasters[0]["tiles_new"] == 9, "a different captioner fingerprint captions again"
    rep = index_rasters(idx, [RasterSource(scenes[0])], tiling=SMALL, captioner_options=FAST)
    assert rep.rasters[0]["tiles_new"] == 0 and rep.rasters[0]["tiles_cached"] == 9, "back to the first: cached"


def test_bad_inputs_give_clear_errors(tmp_path: Path, scenes: list[str]) -> None:
    with pytest.raises(EngineError, match="not|open|exist"):
        index_rasters(str(tmp_path / "i"), [RasterSource(str(tmp_path / "missing.tif"))], tiling=SMALL)
    with pytest.raises(IndexStoreError):
        Searcher(str(tmp_path / "nothing")).search("beach")
    idx = str(tmp_path / "idx")
    index_rasters(idx, [RasterSource(scenes[0])], tiling=SMALL, captioner_options=FAST)
    with Searcher(idx) as s:
        with pytest.raises(QueryError):
            s.search("   \n ")
        assert s.search("sandy beach " * 900, top=2)  # ~10k characters
        assert len(s.search("海滩和大海 пляж", top=2)) == 2  # non-Latin text still ranks tiles


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "plugin", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_index_search_json_and_errors(tmp_path: Path, scenes: list[str]) -> None:
    idx = str(tmp_path / "idx")
    r = _cli("index", "--index", idx, "--tile-size", "96", "--variants", "2", "--quiet", scenes[0])
    assert r.returncode == 0, r.stderr
    r = _cli("search", "--index", idx, "--top", "2", "--format", "json", "green", "vegetation")
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert len(hits) == 2
    for h in hits:
        assert set(h) >= {"rank", "score", "raster", "window", "scale", "caption", "footprint", "crs"}
        assert set(h["window"]) == {"col_off", "row_off", "width", "height"}
        assert h["footprint"]["type"] == "Polygon"
    r = _cli("search", "--index", idx, "--format", "geojson", "beach")
    assert r.returncode == 0 and json.loads(r.stdout)["type"] == "FeatureCollection"
    r = _cli("search", "--index", str(tmp_path / "none"), "beach")
    assert r.returncode == 1 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    r = _cli("search", "--index", idx, " ")
    assert r.returncode == 1 and "empty" in r.stderr
    r = _cli("index", "--index", idx, "--bands", "1,2,9", scenes[0])
    assert r.returncode == 1 and "band" in r.stderr and "Traceback" not in r.stderr
    r = _cli("info", "--index", idx, "--format", "json")
    assert r.returncode == 0 and json.loads(r.stdout)["rasters"][0]["path"] == scenes[0]


def test_job_killed_with_sigkill_resumes_without_duplicates(tmp_path: Path) -> None:
    big = write_scene(tmp_path / "big.tif", size=256)
    idx = str(tmp_path / "idx")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    # Small tiles and many variants make the job long enough to be killed in the middle.
    args = [sys.executable, "-m", "plugin", "index", "--index", idx, "--tile-size", "32", "--variants", "2", "--batch-size", "4", "--quiet", big]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    db = Path(idx) / "index.sqlite"
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            info = index_info(idx) if (Path(idx) / "manifest.json").exists() else {"tiles": 0}
            if info.get("tiles", 0) >= 8:
                break
        time.sleep(0.2)
    assert proc.poll() is None, "the job finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = index_info(idx)["tiles"]
    assert 0 < partial < 64
    rep = index_rasters(idx, [RasterSource(big)], tiling=TilingParams(tile_size=32), captioner_options=FAST)
    r = rep.rasters[0]
    assert r["tiles_new"] == 64 - partial, "only the tiles the killed job had not committed"
    info = index_info(idx)
    assert info["tiles"] == 64 and info["variants"] == 128
    with Searcher(idx) as s:
        hits = s.search("sea", top=64)
    assert len({h.tile_id for h in hits}) == len(hits) == 64, "every tile once, no duplicates"


def test_changed_file_at_same_path_replaces_its_old_tiles(tmp_path: Path) -> None:
    path = tmp_path / "scene.tif"
    write_scene(path, seed=0)
    idx = str(tmp_path / "idx")
    first = index_rasters(idx, [RasterSource(str(path))], tiling=SMALL, captioner_options=FAST).rasters[0]["raster_id"]
    write_scene(path, seed=3)  # new content (and place) under the same name
    rep = index_rasters(idx, [RasterSource(str(path))], tiling=SMALL, captioner_options=FAST)
    assert rep.removed == [first] and rep.rasters[0]["raster_id"] != first
    assert [r["raster_id"] for r in index_info(idx)["rasters"]] == [rep.rasters[0]["raster_id"]]


def test_warm_searcher_sees_later_commits_and_removals(tmp_path: Path, scenes: list[str]) -> None:
    idx = str(tmp_path / "idx")
    index_rasters(idx, [RasterSource(scenes[0])], tiling=SMALL, captioner_options=FAST)
    with Searcher(idx) as s:
        assert {h.raster for h in s.search("sea", top=50)} == {scenes[0]}
        index_rasters(idx, [RasterSource(scenes[1])], tiling=SMALL, captioner_options=FAST)
        assert {h.raster for h in s.search("sea", top=50)} == set(scenes)
        remove_rasters(idx, [scenes[0]])
        assert {h.raster for h in s.search("sea", top=50)} == {scenes[1]}


def test_slow_hnsw_rewrites_are_spaced_out(tmp_path: Path, scenes: list[str], monkeypatch) -> None:
    """Rewriting the hnsw file may not eat the job: its interval grows with what a rewrite costs."""
    import plugin.core.indexing.commit as pipeline
    from plugin.core.store.store import SearchIndex

    calls: list[float] = []
    real_flush = SearchIndex.flush

    def slow_flush(self) -> None:
        calls.append(time.monotonic())
        time.sleep(0.2)  # as if the file were large
        real_flush(self)

    monkeypatch.setattr(SearchIndex, "flush", slow_flush)
    monkeypatch.setattr(pipeline, "FLUSH_EVERY_S", 0.0)
    monkeypatch.setattr(pipeline, "FLUSH_BUDGET", 1000.0)
    index_rasters(str(tmp_path / "idx"), [RasterSource(scenes[0])], tiling=SMALL,
                  captioner_options={"variants": 1, "batch_size": 1})
    # 9 one-tile steps: one rewrite during the job (then 200 s apart), one at the end.
    assert len(calls) == 2, calls


def test_a_search_file_that_fails_verification_never_fails_a_finished_job(tmp_path: Path, scenes: list[str],
                                                                        monkeypatch) -> None:
    """The engine-users-get bug: every save failed verification, and a job whose tiles were all committed
    ended as failed while the dock listed the raster as indexed. Now the job finishes with a note and the
    next open replays the log, so search finds every tile."""
    from plugin.core.store import ann as ann_module

    idx = str(tmp_path / "idx")
    monkeypatch.setattr(ann_module, "layout_problem", lambda path, dim, n: "simulated: 4 bytes missing")
    rep = index_rasters(idx, [RasterSource(scenes[0])], tiling=SMALL, captioner_options=FAST)
    assert not rep.canceled and rep.rasters[0]["tiles_new"] == 9
    assert any("search file was not saved (writing the search file" in n and "simulated" in n for n in rep.notes), rep.notes
    assert not os.path.exists(os.path.join(idx, ann_module.HNSW_FILE)), "nothing unverified replaced the file"
    monkeypatch.undo()
    with Searcher(idx) as s:
        hits = s.search("open water of the sea", top=20)
    assert len({h.tile_id for h in hits}) == 9, "every committed tile is found after the replay"
    assert index_info(idx)["rasters"][0]["tiles"] == 9
