"""No caption is ever lost (issue 14), end to end: real rasters, the spectral captioner, a local
OpenAI-compatible server, the packaged MiniLM, real SQLite files and real CLI processes killed with
SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from plugin.core.errors import CaptionFallbackError, PlanTooLargeError
from plugin.core.indexing import index_info, index_rasters, preview_index
from plugin.core.rasters import tiling
from plugin.core.rasters.tiling import TilingParams
from plugin.core.search.searcher import Searcher
from plugin.core.store.index_lock import LOCK_FILE, IndexLock
from plugin.core.types import RasterSource
from tests.core.test_pipeline import FAST, write_scene

ROOT = Path(__file__).resolve().parents[2]
T64 = TilingParams(tile_size=64)


def _db(idx: str, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(os.path.join(idx, "index.sqlite")) as c:
        return c.execute(sql, args).fetchall()


def _ranking(idx: str, query: str) -> list[tuple[str, float]]:
    with Searcher(idx) as s:
        return [(h.tile_id, round(h.score, 6)) for h in s.search(query, top=9)]


def test_tiling_a_b_a_recaptions_nothing(tmp_path: Path) -> None:
    scene = write_scene(tmp_path / "s.tif")
    idx = str(tmp_path / "idx")
    first = index_rasters(idx, [RasterSource(scene)], tiling=T64, captioner_options=FAST).rasters[0]
    assert first["tiles_new"] == 9
    want = _ranking(idx, "open water of the sea")
    captions = _db(idx, "SELECT caption_id, caption FROM captions ORDER BY caption_id")
    b = index_rasters(idx, [RasterSource(scene)], tiling=TilingParams(tile_size=100000), captioner_options=FAST).rasters[0]
    assert (b["tiles_planned"], b["tiles_new"], b["tiles_retired"]) == (1, 1, 9)
    assert b["tiling_changed_from"]["tile_size"] == 64
    assert len(_ranking(idx, "open water of the sea")) == 1, "only the new tiling is searchable"
    assert index_info(idx)["cached_tiles"] == 9
    preview = preview_index(idx, [RasterSource(scene)], T64)[0]
    assert (preview["tiling_changed"], preview["from_cache"], preview["to_caption"]) == (True, 9, 0), "the dock can say it first"
    a = index_rasters(idx, [RasterSource(scene)], tiling=T64, captioner_options=FAST).rasters[0]
    assert (a["tiles_new"], a["tiles_cached"]) == (0, 9), "back to A: nothing captioned again"
    ids = ",".join(str(c) for c, _ in captions)
    assert _db(idx, f"SELECT caption_id, caption FROM captions WHERE caption_id IN ({ids}) ORDER BY caption_id") == captions, \
        "the same captions, same ids"
    assert _ranking(idx, "open water of the sea") == want


def _has_open(pid: int, path: str) -> bool:
    """Whether process `pid` has `path` open (Linux /proc)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                return True
        except OSError:
            continue
    return False


def _cli(*args: str) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "plugin", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_jobs_on_one_index_end_complete_or_refused(tmp_path: Path) -> None:
    big = write_scene(tmp_path / "big.tif", size=256)
    idx = str(tmp_path / "idx")
    a = _cli("index", "--index", idx, "--tile-size", "32", "--variants", "1", "--batch-size", "1", "--quiet", big)
    deadline = time.time() + 240
    while time.time() < deadline and a.poll() is None:  # until A has committed some tiles
        if Path(idx, "index.sqlite").exists() and index_info(idx).get("tiles", 0) >= 3:
            break
        time.sleep(0.2)
    assert a.poll() is None, "job A finished before the test could race it"
    refused = _cli("index", "--index", idx, "--tile-size", "128", "--variants", "1", "--quiet", big)
    out, err = refused.communicate(timeout=120)
    assert refused.returncode == 1 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: another job is writing the index") and "--tile-size 32" in line and f"pid {a.pid}" in line
    waiting = _cli("index", "--index", idx, "--tile-size", "128", "--variants", "1", "--quiet", "--wait", "600", big)
    lock_file = os.path.join(idx, LOCK_FILE)
    deadline = time.time() + 120
    while time.time() < deadline and waiting.poll() is None and not _has_open(waiting.pid, lock_file):
        time.sleep(0.05)
    # B is inside acquire() (it holds the lock file open) while the file still names A: B waits for A
    assert waiting.poll() is None and _has_open(waiting.pid, lock_file), "B waits for A"
    assert IndexLock(idx).holder()["pid"] == a.pid and a.poll() is None
    os.kill(a.pid, signal.SIGKILL)  # A dies holding the lock: B takes it over, never refused forever
    a.wait()
    out, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, err
    info = index_info(idx)
    r = info["rasters"][0]
    assert r["state"] == "indexed" and r["params"]["tile_size"] == 128
    assert info["tiles"] == 4 and r["variants"] == 4, "complete: every tile of B's plan"
    assert info["cached_tiles"] >= 3, "A's committed 32 px tiles stay as cache"
    with Searcher(idx) as s:
        hits = s.search("sea", top=100)
    assert len(hits) == len({h.tile_id for h in hits}) == 4


class VLMServer:
    """A local chat-completions server; `empty_every` = n answers one request in n with no text."""

    def __init__(self) -> None:
        self.empty_every = 1
        self.count = 0
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # GET /models: the job's preflight check
                data = json.dumps({"data": [{"id": "tiny-vlm"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                with owner.lock:
                    owner.count += 1
                    empty = owner.count % owner.empty_every == 0
                text = "" if empty else json.dumps({"one_sentence": f"Sea and forest {owner.count}.",
                                                    "feature": "water west", "caption": "A coast."})
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.spec = f"openai:http://127.0.0.1:{self.httpd.server_address[1]}/v1#tiny-vlm"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_fallback_captions_are_flagged_counted_retried_and_stop_the_job(tmp_path: Path) -> None:
    scene = write_scene(tmp_path / "s.tif")
    idx = str(tmp_path / "idx")
    srv = VLMServer()
    opts = {"variants": 2, "batch_size": 3, "append_facts": False}
    try:
        # A server that never answers with text (a reasoning model, a model without vision): the job stops.
        with pytest.raises(CaptionFallbackError) as err:
            index_rasters(idx, [RasterSource(scene)], captioner=srv.spec, tiling=T64, captioner_options=opts)
        msg = str(err.value)
        assert "fell back to spectral captions: the server returned no text" in msg and "\n" not in msg
        rows = _db(idx, "SELECT DISTINCT fallback FROM captions")
        assert rows == [("the server returned no text",)], "stored as what they are, never as the VLM's answers"
        # One answer in six is empty: the job finishes and says how many tiles fell back.
        srv.empty_every = 6
        rep = index_rasters(idx, [RasterSource(scene)], captioner=srv.spec, tiling=T64, captioner_options=opts).rasters[0]
        assert rep["tiles_new"] == 9, "tiles with fallback captions were asked again"
        flagged = _db(idx, "SELECT COUNT(DISTINCT tile_id) FROM captions WHERE fallback IS NOT NULL")[0][0]
        assert rep["tiles_fallback"] == flagged and 1 <= flagged <= 4
        assert rep["fallback_reason"] == "the server returned no text"
        # The next update asks the VLM again for exactly those tiles.
        srv.empty_every = 10_000
        before = srv.count
        rep = index_rasters(idx, [RasterSource(scene)], captioner=srv.spec, tiling=T64, captioner_options=opts).rasters[0]
        assert rep["tiles_new"] == flagged and rep["tiles_fallback"] == 0 and srv.count - before == 2 * flagged
        assert _db(idx, "SELECT COUNT(*) FROM captions WHERE fallback IS NOT NULL")[0][0] == 0
        assert index_info(idx)["tiles"] == 9
    finally:
        srv.close()


def _sparse_raster(path: Path, size: int, data_box: int = 0) -> str:
    """A size x size 4-band uint16 GeoTIFF, nodata 0, with data only in its top-left data_box pixels."""
    prof = dict(driver="GTiff", width=size, height=size, count=4, dtype="uint16", nodata=0, crs="EPSG:32618",
                transform=from_origin(435730, 4179460, 10, 10), tiled=True, blockxsize=256, blockysize=256,
                sparse_ok=True, compress="deflate")
    with rasterio.open(path, "w", **prof) as ds:
        if data_box:
            rng = np.random.default_rng(0)
            block = (rng.integers(300, 3000, (4, data_box, data_box))).astype(np.uint16)
            ds.write(block, window=rasterio.windows.Window(0, 0, data_box, data_box))
    return str(path)


def test_absurd_plan_is_refused_before_anything_changes(tmp_path: Path) -> None:
    for size, params in ((1000, TilingParams(tile_size=96, overlap=0.4, scales=(1, 2, 3))),
                         (777, TilingParams(tile_size=8, overlap=0.9)), (300, TilingParams(tile_size=512))):
        info = type("I", (), {"width": size, "height": size + 13, "raster_id": "r", "name": "n", "has_crs": False,
                              "pixel_size": None})()
        assert tiling.count_tiles(info, params) == len(tiling.plan_tiles(info, params))
    big = _sparse_raster(tmp_path / "big.tif", 4096, data_box=512)
    idx = str(tmp_path / "idx")
    index_rasters(idx, [RasterSource(big)], tiling=TilingParams(tile_size=512), captioner_options={"variants": 1})
    before = (index_info(idx)["rasters"][0]["params"], _db(idx, "SELECT tile_id, active FROM tiles ORDER BY 1"))
    tracemalloc.start()
    try:
        with pytest.raises(PlanTooLargeError) as err:
            index_rasters(idx, [RasterSource(big)], tiling=TilingParams(tile_size=8), captioner_options={"variants": 1})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = str(err.value)
    assert "262,144 tiles" in msg and "limit of 200,000" in msg and "--force" in msg and "tile size 256 px" in msg
    assert peak < 64 * 2**20, f"refusing took {peak / 2**20:.0f} MiB: the plan was built"
    assert (index_info(idx)["rasters"][0]["params"], _db(idx, "SELECT tile_id, active FROM tiles ORDER BY 1")) == before
    r = subprocess.run([sys.executable, "-m", "plugin", "index", "--index", idx, "--tile-size", "8", "--quiet", big],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "262,144 tiles" in r.stderr


def test_empty_tiles_are_recorded_and_never_read_again(tmp_path: Path, monkeypatch) -> None:
    vrtish = _sparse_raster(tmp_path / "mostly_empty.tif", 1024, data_box=256)
    idx = str(tmp_path / "idx")
    calls: list[tuple[int, int]] = []
    rep = index_rasters(idx, [RasterSource(vrtish)], tiling=TilingParams(tile_size=128), captioner_options={"variants": 1},
                        progress=lambda d, t, m: calls.append((d, t)))
    r = rep.rasters[0]
    assert (r["tiles_planned"], r["tiles_new"], r["tiles_empty"]) == (64, 4, 60)
    steps = [d for d, t in calls if t == 64]
    assert len(set(steps)) > 10 and steps == sorted(steps) and steps[-1] == 64, "empty tiles count as progress"
    reads = []
    real = tiling._fetch
    monkeypatch.setattr(tiling, "_fetch", lambda *a, **k: reads.append(1) or real(*a, **k))
    rep = index_rasters(idx, [RasterSource(vrtish)], tiling=TilingParams(tile_size=128), captioner_options={"variants": 1})
    assert rep.rasters[0]["tiles_empty"] == 60 and rep.rasters[0]["tiles_new"] == 0 and not reads, "nothing read again"
    # Another validity threshold is another question: the tiles are read again.
    rep = index_rasters(idx, [RasterSource(vrtish)], tiling=TilingParams(tile_size=128, min_valid_fraction=0.25),
                        captioner_options={"variants": 1})
    assert len(reads) == 60 and rep.rasters[0]["tiles_empty"] == 60
