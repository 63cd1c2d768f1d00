"""Job mode (`--executor ray-job`) on a real local Ray cluster with its dashboard (Jobs REST API).

The session's one token-auth head (`ray_cluster` in tests/core/conftest.py, shared with the driver-mode
module), started with `ray start --head` on 127.0.0.1 with random ports (dashboard included: the job
server needs `ray[default]`, in the cluster extra). The engine
side never imports Ray: it talks HTTP to the dashboard and merges Parquet shards from a shared folder.
Skipped with a reason where ray[data] / the dashboard's packages are not installed.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.data", reason="ray[data] is not installed (the engine's 'cluster' extra)")
pytest.importorskip("aiohttp_cors", reason="the Ray dashboard (job server) needs ray[default] (the 'cluster' extra)")
pytest.importorskip("pyarrow", reason="job mode reads Parquet shards with pyarrow")

from plugin.core.errors import Canceled  # noqa: E402
from plugin.core.indexing import index_info, index_rasters  # noqa: E402
from plugin.core.indexing.cluster.ray_job_shards import list_shards, read_shard, ref_from_json, shard_rows, shard_tiles  # noqa: E402
from plugin.core.rasters.tiling import TilingParams  # noqa: E402
from plugin.core.store.store import SearchIndex  # noqa: E402
from plugin.core.types import RasterSource  # noqa: E402
from tests.core.rasters import holed  # noqa: E402
from tests.core.ray_cluster import ROOT, api_get, free_port  # noqa: E402
from tests.core.test_pipeline import write_scene  # noqa: E402
from tests.core.test_ray_executor import TILING, _counts, _rows, _wait_tiles, assert_like_local  # noqa: E402

pytestmark = pytest.mark.slow

WRAPPED = "python:tests.core.ray_captioners:wrapped"
SLOW = "python:tests.core.ray_captioners:slow"


_get = api_get


@pytest.fixture
def cluster(ray_cluster):
    """The session's token-auth head with its dashboard (the Jobs REST API); the jobs' `python` is this venv's."""
    return ray_cluster


def _engine_env(cluster: dict, token: str | None = None) -> dict:
    """The engine's environment: the token is here and only here (never argv)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return dict(env, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_AUTH_MODE="token",
                RAY_AUTH_TOKEN=token or cluster["token"], PYTHONPATH=str(ROOT))


def _cli(cluster: dict, idx: str, sources: list[str], captioner: str, *extra: str, url: str | None = None) -> list[str]:
    return [sys.executable, "-m", "plugin", "index", "--index", idx, "--tile-size", "48", "--captioner", captioner,
            "--executor", "ray-job", "--ray-dashboard", url or cluster["url"], "--shared-dir", cluster["shared"],
            "--quiet", *extra, *sources]


def _jobs(cluster: dict) -> list[dict]:
    return [j for j in _get(cluster["url"] + "/api/jobs/", cluster["token"]) if j.get("submission_id")]


def test_job_mode_same_index_as_local_failed_tiles_retried_and_merging_twice_changes_nothing(cluster, tmp_path: Path) -> None:
    """`python -m plugin index --executor ray-job` gives the local executor's index (tiles, texts,
    vectors); the token is in no argv, output, job entrypoint/runtime_env or job log. A corrupt block
    fails its tile only: the job SUCCEEDS, the tile comes back as a failed row (reported with the
    reason, never captioned, the raster left unfinished) and empty tiles are recorded; the job's
    folder is removed (the index holds its rows, the failed one was reported). Once the file is
    repaired the next run submits a job for exactly that tile and the raster is finished; that run
    keeps its shards (`--keep-shards`), and a shard merged again changes nothing."""
    tiling = TilingParams(tile_size=128)  # 4 tiles per 256 px scene; holed: 16 tiles, 4 empty, 1 unreadable
    scenes = [write_scene(tmp_path / f"s{i}.tif", seed=i, size=256) for i in range(2)] + [holed(tmp_path)]
    pristine = holed(tmp_path, "pristine.tif", corrupt=False)
    local = str(tmp_path / "local")
    index_rasters(local, [RasterSource(p) for p in scenes], captioner=WRAPPED, tiling=tiling,
                  captioner_options={"variants": 2})
    idx = str(tmp_path / "job")
    cmd = _cli(cluster, idx, scenes, WRAPPED, "--tile-size", "128", "--variants", "2", "--caption-workers", "1",
               "--format", "json")

    def run(rc: int, *extra: str) -> tuple[subprocess.CompletedProcess, list[dict], dict]:
        r = subprocess.run(cmd[:-len(scenes)] + [*extra, *scenes], cwd=ROOT, env=_engine_env(cluster),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == rc, r.stderr[-3000:]  # 3: finished, with a failed tile
        state = json.load(open(os.path.join(idx, "ray_job.json")))
        assert _get(f"{cluster['url']}/api/jobs/{state['sid']}", cluster["token"])["status"] == "SUCCEEDED"
        return r, json.loads(r.stdout)["rasters"], state

    r, entries, first = run(3)
    assert_like_local(entries, idx, local)  # the job's embed actors follow the index's int8 record too
    assert _counts(idx) == (19, 38)
    assert {x["path"]: x["state"] for x in index_info(idx)["rasters"]}[scenes[2]] == "indexing"
    info = _get(f"{cluster['url']}/api/jobs/{first['sid']}", cluster["token"])
    logs = _get(f"{cluster['url']}/api/jobs/{first['sid']}/logs", cluster["token"])["logs"]
    token = cluster["token"]
    assert token not in " ".join(cmd) and token not in r.stdout + r.stderr and token not in json.dumps(info) + logs
    assert [n for n in json.loads(r.stdout)["notes"] if "merged Ray job shard(s)" in n and "1 job folder(s)" in n]
    assert not os.path.exists(first["dir"])
    shutil.copy(pristine, scenes[2])  # repaired in place
    r, entries, state = run(0, "--keep-shards")
    assert [(x["tiles_new"], x["tiles_empty"], x["tiles_failed"]) for x in entries] == [(0, 0, 0), (0, 0, 0), (1, 4, 0)]
    assert state["sid"] != first["sid"] and state["dirs"] == [state["dir"]]
    logs = _get(f"{cluster['url']}/api/jobs/{state['sid']}/logs", cluster["token"])["logs"]
    assert "1 tiles to caption (0 already in shards)" in logs  # a job for that tile only
    assert _counts(idx) == (20, 40)
    assert {x["path"]: x["state"] for x in index_info(idx)["rasters"]}[scenes[2]] == "indexed"
    # `--keep-shards` left them; merging one again (the writer's upsert on tile id + captioner fingerprint) changes nothing.
    shards = list_shards(state["dir"])
    assert shards and all(s.startswith("shard-") for s in shards)
    manifest = json.load(open(os.path.join(state["dir"], "manifest.json")))
    refs = {row[0]: ref_from_json(row) for row in manifest["tiles"]}
    before = _rows(idx)
    shard = next(os.path.join(state["dir"], n) for n in shards
                 if not any(failed for _, _, failed in shard_rows(os.path.join(state["dir"], n))))
    rid = shard_tiles(shard)[0][1]
    with SearchIndex.open(idx) as s:
        for _ in range(2):
            done, empty, failed = read_shard(shard, rid, refs, state["fingerprint"], s.dim)
            assert done and not empty and not failed and all(refs[t].raster_id == rid for t, _, _ in done)
            s.add_tiles(rid, state["fingerprint"], [(refs[t], v, a) for t, v, a in done])
    after = _rows(idx)
    assert _counts(idx) == (20, 40) and sorted(after) == sorted(before)
    for tid in before:
        assert after[tid][0] == before[tid][0]
        np.testing.assert_allclose(after[tid][1], before[tid][1], atol=1e-6)


def test_engine_killed_mid_job_reattaches_and_finishes_exactly(cluster, tmp_path: Path) -> None:
    """SIGKILL the engine (the CLI) while the job runs: the re-run attaches to the same job (no new
    submission), merges what is missing only, and the index ends complete: nothing lost or duplicated."""
    scenes = [write_scene(tmp_path / f"s{i}.tif", seed=10 + i) for i in range(2)]
    idx = str(tmp_path / "idx")
    fast = tmp_path / "fast"  # created once the engine is killed: the job need not wait out 0.8 s a tile
    cmd = _cli(cluster, idx, scenes, SLOW, "--variants", "1", "--caption-workers", "2", "--captioner-option",
               f"fast_when={fast}")
    engine = subprocess.Popen(cmd, cwd=ROOT, env=_engine_env(cluster), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        _wait_tiles(idx, 1, engine)
        os.kill(engine.pid, signal.SIGKILL)  # at the first merge
        engine.wait(30)
    finally:
        if engine.poll() is None:
            engine.kill()
    done = _counts(idx)[0]
    assert 1 <= done < 32
    sid = json.load(open(os.path.join(idx, "ray_job.json")))["sid"]
    assert _get(f"{cluster['url']}/api/jobs/{sid}", cluster["token"])["status"] in ("PENDING", "RUNNING")
    n_jobs = len(_jobs(cluster))
    fast.touch()
    r = subprocess.run(cmd[:-2] + ["--format", "json", *scenes], cwd=ROOT, env=_engine_env(cluster),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sum(x["tiles_new"] for x in json.loads(r.stdout)["rasters"]) == 32 - done  # merged only what was missing
    assert json.load(open(os.path.join(idx, "ray_job.json")))["sid"] == sid and len(_jobs(cluster)) == n_jobs
    assert _counts(idx) == (32, 32)
    assert _get(f"{cluster['url']}/api/jobs/{sid}", cluster["token"])["status"] == "SUCCEEDED"
    assert not os.path.exists(json.load(open(os.path.join(idx, "ray_job.json")))["dir"])  # merged: its shards went


def test_cancel_stops_the_job_then_a_rerun_submits_only_the_rest(cluster, tmp_path: Path, monkeypatch) -> None:
    """index_rasters' cancel path (in this process: job mode imports no Ray) stops the Ray job through
    the REST API within seconds; what was merged stays; the next run merges the stopped job's shards
    and submits a job for the tiles in none of them."""
    monkeypatch.setenv("RAY_AUTH_TOKEN", cluster["token"])
    scenes = [write_scene(tmp_path / f"s{i}.tif", seed=20 + i) for i in range(2)]
    idx = str(tmp_path / "idx")
    fast = tmp_path / "fast"  # created before the re-run: its job need not wait out 0.8 s a tile
    seen = [0]
    with pytest.raises(Canceled):
        index_rasters(idx, [RasterSource(p) for p in scenes], captioner=SLOW, tiling=TILING,
                      captioner_options={"variants": 1, "fast_when": str(fast)}, executor="ray-job",
                      executor_options={"dashboard_url": cluster["url"], "shared_dir": cluster["shared"],
                                        "caption_workers": 2},
                      progress=lambda done, total, msg: seen.__setitem__(0, done), is_canceled=lambda: seen[0] >= 2)
    t0 = time.monotonic()
    sid = json.load(open(os.path.join(idx, "ray_job.json")))["sid"]
    while (status := _get(f"{cluster['url']}/api/jobs/{sid}", cluster["token"])["status"]) != "STOPPED":
        assert time.monotonic() - t0 < 10, status
        time.sleep(0.2)
    merged = _counts(idx)[0]
    assert 2 <= merged < 32
    # Run again: the stopped job's shards are merged and a new job gets only the tiles in none of them.
    stopped = json.load(open(os.path.join(idx, "ray_job.json")))
    written = {t for n in list_shards(stopped["dir"]) for t, _ in shard_tiles(os.path.join(stopped["dir"], n))}
    fast.touch()
    rep = index_rasters(idx, [RasterSource(p) for p in scenes], captioner=SLOW, tiling=TILING,
                        captioner_options={"variants": 1, "fast_when": str(fast)}, executor="ray-job",
                        executor_options={"dashboard_url": cluster["url"], "shared_dir": cluster["shared"],
                                          "caption_workers": 2})
    assert sum(x["tiles_new"] for x in rep.rasters) == 32 - merged and _counts(idx) == (32, 32)
    state = json.load(open(os.path.join(idx, "ray_job.json")))
    if written >= set(_rows(idx)):  # the job had written every shard before the stop reached it
        assert state == stopped
        return
    assert state["sid"] != sid and state["dirs"] == [stopped["dir"], state["dir"]], (len(written), merged)
    logs = _get(f"{cluster['url']}/api/jobs/{state['sid']}/logs", cluster["token"])["logs"]
    assert f"{len(set(_rows(idx)) - written)} tiles to caption (0 already in shards)" in logs
    # Both jobs ended and the index holds every row: the stopped job's folder and the new one are gone.
    assert not os.path.exists(stopped["dir"]) and not os.path.exists(state["dir"])


def test_bad_dashboard_url_and_wrong_token_fail_in_seconds(cluster, tmp_path: Path) -> None:
    scene = write_scene(tmp_path / "s.tif", seed=3)
    for url, token in ((f"http://127.0.0.1:{free_port()}", None), (cluster["url"], "0" * 32)):
        t0 = time.monotonic()
        r = subprocess.run(_cli(cluster, str(tmp_path / "idx"), [scene], WRAPPED, url=url), cwd=ROOT,
                           env=_engine_env(cluster, token), capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and time.monotonic() - t0 < 30, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Ray dashboard" in lines[0], r.stderr
        assert cluster["token"] not in r.stderr and "0" * 32 not in r.stderr
    assert "refused" in lines[0]
    assert not glob.glob(str(tmp_path / "idx" / "*.sqlite"))
