"""The `ray` executor on a real local Ray (num_cpus=2, loopback only, random ports).

The session's one head (`ray_cluster` in tests/core/conftest.py, shared with the job-mode module)
is started with `ray start --head --block` and token auth (RAY_AUTH_MODE=token), as a user's cluster
would be; jobs attach to it by address. The cancel test lets the driver start (and must leave no
trace of) a private cluster. Each job is 16-32 tiles; scenarios that need the same expensive set-up
share one run (one kill, several assertions).
Skipped with a reason where ray[data] is not installed (CI installs it: scripts/setup.sh).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.data", reason="ray[data] is not installed (the engine's 'cluster' extra)")

from plugin.core.indexing import index_info, index_rasters  # noqa: E402
from plugin.core.rasters.tiling import TilingParams  # noqa: E402
from plugin.core.store.store import SearchIndex  # noqa: E402
from plugin.core.types import RasterSource  # noqa: E402
from tests.core.range_server import RangeServer  # noqa: E402
from tests.core.rasters import holed  # noqa: E402
from tests.core.ray_cluster import (  # noqa: E402
    CLUSTER_ENV,
    ROOT,
    actor_pids,
    alive,
    free_port,
    pids_under,
)
from tests.core.test_pipeline import write_scene  # noqa: E402

pytestmark = pytest.mark.slow

TILING = TilingParams(tile_size=48)  # 16 tiles per 192 px scene
# the process helpers under the names this module (and the job-mode module) has always used
_free_port, _pids_under, _alive, _actor_pids = free_port, pids_under, alive, actor_pids


@pytest.fixture
def cluster(ray_cluster):
    """The session's token-auth head; the fault captioners' once-only markers live in its folder."""
    return ray_cluster


def _driver_env(cluster: dict) -> dict:
    """A driver of the module's cluster: token auth from the environment (read when Ray is imported),
    never from the command line."""
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_AUTH_MODE="token",
                RAY_AUTH_TOKEN=cluster["token"], **CLUSTER_ENV)


def _cli_index(cluster: dict, idx: str, sources: list[str], captioner: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "plugin", "index", "--index", idx, "--tile-size", "48", "--captioner", captioner,
            "--executor", "ray", "--ray-address", cluster["address"], "--quiet", *extra, *sources]


def _rows(index_dir: str) -> dict[str, tuple[list[str], np.ndarray]]:
    """tile id -> (caption texts in variant order, vectors) as stored."""
    out: dict[str, tuple[list[str], list[np.ndarray]]] = {}
    with SearchIndex.open(index_dir, readonly=True) as idx:
        rows = idx.conn.execute("SELECT c.tile_id, c.one_sentence, c.feature, c.caption, e.vector FROM captions c"
                                " JOIN embeddings e ON e.caption_id = c.caption_id ORDER BY c.tile_id, c.variant_index").fetchall()
    for tid, a, b, c, vec in rows:
        texts, vecs = out.setdefault(tid, ([], []))
        texts.append(f"{a}|{b}|{c}")
        vecs.append(np.frombuffer(vec, dtype=np.float32))
    return {t: (x, np.stack(v)) for t, (x, v) in out.items()}


def assert_like_local(entries: list[dict], idx: str, local: str) -> dict:
    """The three scenes' report (4, 4 and 11 new tiles; the third's corrupt block a failed tile, its
    nodata corner empty tiles) and the same 19 tiles as the local index, caption for caption; both
    new CPU indexes record the int8 document graph and the cluster's embed actors followed it (the
    vectors agree to 1e-5; fp32 and int8 vectors of a caption differ by ~1e-2). Returns the third
    scene's report entry."""
    assert [x["tiles_new"] for x in entries] == [4, 4, 11]
    entry = entries[2]
    assert (entry["tiles_new"], entry["tiles_empty"], entry["tiles_failed"]) == (11, 4, 1)
    assert entry["failed_tiles"][0]["window"] == [0, 128, 128, 128]
    assert "cannot be read" in entry["failed_tiles"][0]["reason"]
    got, want = _rows(idx), _rows(local)  # the local index has the same 19 tiles (its corrupt tile failed too)
    assert sorted(got) == sorted(want) and len(got) == 19
    assert index_info(idx)["document_graph"] == index_info(local)["document_graph"] == "int8"
    for tid, (texts, vecs) in want.items():
        assert got[tid][0] == texts
        np.testing.assert_allclose(got[tid][1], vecs, atol=1e-5)
    return entry


def _counts(index_dir: str) -> tuple[int, int]:
    """(tiles, caption variants) committed, read with plain SQLite (never blocks or waits on the writer)."""
    from plugin.core.store.store_schema import DB_FILE

    conn = sqlite3.connect(f"file:{os.path.join(index_dir, DB_FILE)}?mode=ro", uri=True, timeout=5)
    try:
        return (int(conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0]),
                int(conn.execute("SELECT COUNT(*) FROM captions").fetchone()[0]))
    finally:
        conn.close()


def test_same_index_as_local_with_faults_a_remote_cog_and_unreadable_and_empty_tiles(cluster, tmp_path: Path) -> None:
    """`python -m plugin index --executor ray --ray-address ...` on a token-auth cluster gives the local
    executor's index (tiles, texts, vectors), while one caption call fails with a transient error
    (retried) and one actor process exits mid-batch (restarted); one raster is a COG read over HTTP
    Range requests by the cluster's workers. A third raster has a corrupt block and a row of nodata
    tiles: the corrupt block fails its tile only (reported with the reason, the raster left
    unfinished), the empty tiles are recorded as empty (updates skip them without reading), as with
    the local executor; the next run, once the file is repaired, captions exactly the failed tile."""
    (tmp_path / "www").mkdir()
    tiling = TilingParams(tile_size=128)  # 4 tiles per 256 px scene; holed: 16 tiles, 4 empty, 1 unreadable
    scenes = [write_scene(tmp_path / "a.tif", seed=0, size=256), write_scene(tmp_path / "www" / "b.tif", seed=1, size=256),
              holed(tmp_path)]
    pristine = holed(tmp_path, "pristine.tif", corrupt=False)  # the same bytes but the corrupt block
    local = str(tmp_path / "local")
    index_rasters(local, [RasterSource(p) for p in scenes], captioner="python:tests.core.ray_captioners:wrapped",
                  tiling=tiling, captioner_options={"variants": 2})
    ray_idx = str(tmp_path / "ray")
    with RangeServer(str(tmp_path / "www")) as srv:
        # Caption batches of 2 tiles: every actor makes enough calls for both faults (after its first 4 tiles).
        cmd = _cli_index(cluster, ray_idx, [scenes[0], srv.url("b.tif"), scenes[2]], "python:tests.core.ray_captioners:faulty",
                         "--tile-size", "128", "--batch-size", "2", "--variants", "2", "--caption-workers", "2",
                         "--format", "json")
        assert cluster["token"] not in " ".join(cmd)  # the token travels in the environment only
        r = subprocess.run(cmd, cwd=ROOT, env=_driver_env(cluster), capture_output=True, text=True, timeout=600)
        assert r.returncode == 3, r.stderr[-3000:]  # finished, with a failed tile
        assert srv.ranged_gets() > 0
        assert os.path.exists(os.path.join(cluster["tmp"], "transient")) and os.path.exists(os.path.join(cluster["tmp"], "exit"))
        entry = assert_like_local(json.loads(r.stdout)["rasters"], ray_idx, local)
        assert _counts(ray_idx) == (19, 38)  # nothing duplicated by the retries
        with SearchIndex.open(ray_idx, readonly=True) as s:
            assert len(s.empty_tile_ids(entry["raster_id"], TilingParams().min_valid_fraction)) == 4
        states = {x["path"]: x["state"] for x in index_info(ray_idx)["rasters"]}
        assert states[scenes[2]] == "indexing" and states[scenes[0]] == "indexed"
        # Repaired in place: the next run reads only the failed tile (the empty ones are known).
        shutil.copy(pristine, scenes[2])
        r = subprocess.run(cmd, cwd=ROOT, env=_driver_env(cluster), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    entries = json.loads(r.stdout)["rasters"]
    assert [(x["tiles_new"], x["tiles_empty"], x["tiles_failed"]) for x in entries] == [(0, 0, 0), (0, 0, 0), (1, 4, 0)]
    assert _counts(ray_idx) == (20, 40)
    assert {x["path"]: x["state"] for x in index_info(ray_idx)["rasters"]}[scenes[2]] == "indexed"


def _wait_tiles(index_dir: str, n: int, proc: subprocess.Popen | None = None, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(os.path.join(index_dir, "manifest.json")):
            try:
                got = _counts(index_dir)[0]
            except sqlite3.Error:  # the schema is being created
                got = 0
            if got >= n:
                return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"driver exited early: {proc.returncode}\n{proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n} tiles committed after {timeout} s")


def test_actor_and_driver_killed_then_rerun_finishes_exactly(cluster, tmp_path: Path) -> None:
    """SIGKILL a caption actor mid-run (Ray restarts it), then SIGKILL the driver (`python -m plugin
    index --executor ray`); the re-run captions only the missing tiles and the index ends complete:
    nothing lost, nothing duplicated."""
    scenes = [write_scene(tmp_path / f"s{i}.tif", seed=i) for i in range(2)]
    idx = str(tmp_path / "idx")
    fast = tmp_path / "fast"  # created once the kills are done: the re-run need not wait out 0.8 s a tile
    cmd = _cli_index(cluster, idx, scenes, "python:tests.core.ray_captioners:slow", "--variants", "1", "--caption-workers", "2",
                     "--captioner-option", f"fast_when={fast}")
    driver = subprocess.Popen(cmd, cwd=ROOT, env=_driver_env(cluster), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (actors := _actor_pids(cluster["tmp"], "CaptionStage")) and time.monotonic() < deadline:
            assert driver.poll() is None, f"driver exited early: {driver.returncode}"
            time.sleep(0.2)
        assert actors, "no caption actor found"
        os.kill(actors[0], signal.SIGKILL)  # Ray restarts it and retries its tasks
        _wait_tiles(idx, 1, driver)
        os.kill(driver.pid, signal.SIGKILL)  # at the first commit
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
    done = _counts(idx)[0]
    assert 1 <= done <= 32
    fast.touch()
    r = subprocess.run(cmd[:-2] + ["--format", "json", *scenes], cwd=ROOT, env=_driver_env(cluster),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(r.stdout)
    assert sum(x["tiles_new"] for x in rep["rasters"]) == 32 - done  # captioned only what was missing
    assert _counts(idx) == (32, 32)
    assert index_info(idx)["stale"] is False


def test_cancel_stops_and_leaves_no_ray_process(tmp_path: Path, monkeypatch) -> None:
    """A private local cluster (no address): cancel ends the job within seconds and every Ray process
    it started is gone 10 s later; what was committed stays."""
    for k, v in CLUSTER_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    tmp = tempfile.mkdtemp(prefix="r9c", dir="/tmp")
    scenes = [write_scene(tmp_path / f"s{i}.tif", seed=i) for i in range(2)]
    idx = str(tmp_path / "idx")
    try:
        # The driver runs in a child process: an in-process Ray driver could end pytest itself later.
        r = subprocess.run([sys.executable, "-m", "tests.core.ray_cancel_job", idx, tmp, *scenes], cwd=ROOT,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["canceled"] is True, r.stderr[-3000:]
        seen = set(out["seen"])
        assert seen, "the job started no Ray process"
        deadline = time.monotonic() + 10
        while _alive(seen) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _alive(seen), sorted(_alive(seen))
        assert not _pids_under(tmp) - {os.getpid()}
        assert 4 <= _counts(idx)[0] < 32  # committed work stays
    finally:
        for p in _alive(_pids_under(tmp) - {os.getpid()}):
            os.kill(p, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


def test_cluster_check_then_worker_phases_in_order_and_path_map_reads_the_cluster_path(cluster, tmp_path: Path) -> None:
    """Through the engine worker (as the dock runs it), with the cluster's token in its environment:
    the settings' "Test cluster" (`cluster_info`) reports versions, nodes, CPUs, GPUs and auth; then an
    index job: planning, loading, starting workers k/n ready, then captioned x/N with rate and ETA, in
    that order with sane numbers; the path map sends the cluster a URL for the local folder (the
    loopback Range server), while the index keeps the local path."""
    import ray

    from plugin.core.worker.worker_client import WorkerClient

    (tmp_path / "local").mkdir()
    scene = write_scene(tmp_path / "local" / "a.tif", seed=3)
    idx = str(tmp_path / "idx")
    events: list[dict] = []
    client = WorkerClient(sys.executable, env=_driver_env(cluster))
    with RangeServer(str(tmp_path / "local")) as srv:
        try:
            out = client.request("cluster_info", {"executor": "ray", "address": cluster["address"]})
            assert out["client_version"] == out["cluster_version"] == ray.__version__ and out["mismatch"] is False
            # the shared head declares one logical GPU (for the vLLM stand-in test)
            assert out["nodes"] == 1 and out["cpus"] == 2.0 and out["gpus"] == 1.0 and out["auth"] == "token"
            report = client.request("index", {
                "index_dir": idx, "sources": [{"path": scene}], "tiling": TILING.to_dict(),
                # 0.5 s per tile, 2 s a batch: the commits spread well past the rate meter's 2 s minimum
                # span even when Ray Data hands the last batches over together (0.25 s was flaky).
                "captioner": "python:tests.core.ray_captioners:wrapped",
                "captioner_options": {"batch_size": 4, "latency": 0.5}, "executor": "ray",
                "executor_options": {"address": cluster["address"], "caption_workers": 1,
                                     "path_map": [[str(tmp_path / "local"), srv.url("")]]},
            }, on_event=events.append)
        finally:
            client.stop()
        assert srv.ranged_gets() > 0  # the cluster read the mapped URL, not the local file
    assert report["rasters"][0]["tiles_new"] == 16 and report["rasters"][0]["path"] == scene
    assert index_info(idx)["rasters"][0]["path"] == scene
    phases = [e.get("phase") for e in events if e.get("phase")]
    order = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    assert order == ["planning", "loading", "starting", "captioning"], order
    starting = [e for e in events if e.get("phase") == "starting"]
    assert starting[0]["ready"] == 0 and starting[-1]["ready"] == 1
    assert all(e["workers"] == 1 and 0 <= e["ready"] <= 1 for e in starting)
    counts = [e for e in events if e.get("phase") == "captioning"]
    assert all(e["total"] == 16 for e in counts) and counts[-1]["done"] == 16
    assert [e["done"] for e in counts] == sorted(e["done"] for e in counts)
    rated = [e for e in counts if e["rate"] > 0]
    assert rated and all(e["eta_s"] is not None and 0 <= e["eta_s"] <= 3600 for e in rated)
    assert rated[-1]["eta_s"] == 0.0


def test_cluster_check_without_the_token_is_refused_in_one_line(cluster) -> None:
    """The settings' "Test cluster", as the dialog runs it (an engine worker of its own), without the
    token: one line saying the cluster refused (with it: the phases test above)."""
    from plugin.core.worker.worker_client import WorkerClient

    env = {k: v for k, v in _driver_env(cluster).items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    env["RAY_gcs_server_port_wait_time_s"] = "2"  # Ray asks a refusing GCS again once a second, 20 times by default
    client = WorkerClient(sys.executable, env=env)
    try:
        with pytest.raises(Exception) as e:
            client.request("cluster_info", {"executor": "ray", "address": cluster["address"]})
    finally:
        client.stop()
    text = str(e.value)
    assert "\n" not in text and cluster["token"] not in text
    assert "refused" in text or "cannot attach" in text, text


def test_vllm_captioner_path_with_a_stand_in_processor(cluster, tmp_path: Path) -> None:
    """`vllm:<model>` through the executor (chunks -> request rows -> the processor's place -> parse and
    embed -> chunks on the driver -> the writer), with `ray.data.llm`'s processor stood in for (no
    vLLM here), on the shared head's logical GPU: every tile gets its K variants in order, empty and
    unreadable tiles are recorded."""
    idx = str(tmp_path / "idx")
    # The driver runs in a child process: an in-process Ray driver could end pytest itself later.
    r = subprocess.run([sys.executable, "-m", "tests.core.ray_vllm_fake_job", idx, cluster["address"], holed(tmp_path)],
                       cwd=ROOT, env=_driver_env(cluster), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    (entry,) = rep["rasters"]
    assert rep["captioner"].startswith("vllm|stand-in/vlm|")
    assert (entry["tiles_new"], entry["tiles_empty"], entry["tiles_failed"], entry["variants"]) == (11, 4, 1, 22)
    rows = _rows(idx)
    assert len(rows) == 11
    for texts, vecs in rows.values():
        assert [t.split("|")[2].split(" (variant ")[1][:1] for t in texts] == ["0", "1"] and vecs.shape[0] == 2
