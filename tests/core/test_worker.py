"""The engine worker process and its client, without QGIS: protocol, index/search, cancel, crash, resume.

Everything is real: `python -m plugin worker` subprocesses, generated GeoTIFFs, the spectral
captioner, the packaged MiniLM embedder and the hnswlib store. Rasters are small (12-32 tiles, one
caption variant each) so the whole file stays in tens of seconds on a busy 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from plugin.core.errors import Canceled, EngineError, QueryError, RasterError
from plugin.core.worker.worker_client import PLUGIN_ROOT, WorkerClient, WorkerCrashed, WorkerError
from tests.core import rasters

PY = sys.executable
#: One torch thread: on a shared 2-core machine more threads only spin against each other.
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
FAST = {"captioner": "spectral", "captioner_options": {"variants": 1, "batch_size": 4}}


def _index_args(index_dir: str, path: str, tile: int, **extra) -> dict:
    return {"index_dir": index_dir, "sources": [{"path": path}], "tiling": {"tile_size": tile}, **FAST, **extra}


@pytest.fixture(scope="module")
def client():
    c = WorkerClient(PY, env=ENV)
    c.start()
    yield c
    c.stop()
    assert not c.alive


@pytest.fixture(scope="module")
def small_index(tmp_path_factory, client):
    """12 tiles (256x192 px, 64 px tiles) indexed once through the worker; (index_dir, raster, report, events)."""
    d = tmp_path_factory.mktemp("worker_small")
    path = rasters.north_up(str(d), width=256, height=192)
    events: list[dict] = []
    report = client.request("index", _index_args(str(d / "idx"), path, 64), on_event=events.append)
    return str(d / "idx"), path, report, events


def test_protocol_lines_bad_requests_and_shutdown(tmp_path):
    """Only JSON on stdout, one reply per request (errors included), the loop survives bad input."""
    lines = [
        json.dumps({"id": 1, "cmd": "ping"}),
        "this is not json",
        "[1, 2]",
        json.dumps({"id": 2, "cmd": "frobnicate"}),
        json.dumps({"id": 3, "cmd": "search", "args": {"query": "x"}}),
        json.dumps({"id": 4, "cmd": "info", "args": {"index_dir": str(tmp_path / "none")}}),
        json.dumps({"id": 5, "cmd": "index", "args": {"index_dir": str(tmp_path / "i"), "sources": "nope"}}),
        json.dumps({"id": 6, "cmd": "ping"}),
        json.dumps({"id": 7, "cmd": "shutdown"}),
    ]
    env = dict(ENV, PYTHONPATH=PLUGIN_ROOT)
    proc = subprocess.run([PY, "-m", "plugin", "worker"], input="\n".join(lines) + "\n", capture_output=True,
                          text=True, cwd=PLUGIN_ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]  # every stdout line is protocol JSON
    assert out[0]["event"] == "ready"
    by_id = {m["id"]: m for m in out[1:] if m["id"] is not None}
    anonymous = [m for m in out[1:] if m["id"] is None]
    assert [m["kind"] for m in anonymous] == ["ProtocolError", "ProtocolError"]
    assert by_id["1"]["result"]["pong"] is True and by_id["6"]["result"]["pong"] is True
    assert by_id["2"]["event"] == "error" and "unknown command 'frobnicate'" in by_id["2"]["message"]
    assert by_id["3"]["kind"] == "ProtocolError" and "index_dir" in by_id["3"]["message"]
    assert by_id["4"]["result"]["exists"] is False
    assert by_id["5"]["kind"] == "ProtocolError" and "sources" in by_id["5"]["message"]
    assert by_id["7"]["result"] is True and out[-1]["id"] == "7"  # shutdown answers last


def test_index_streams_progress_and_reports(small_index):
    _index_dir, path, report, events = small_index
    assert report["canceled"] is False
    (r,) = report["rasters"]
    assert r["path"] == os.path.abspath(path)
    assert r["tiles_planned"] == 12 and r["tiles_new"] + r["tiles_empty"] == 12 and r["variants"] == r["tiles_new"]
    progress = [e for e in events if e["event"] == "progress" and e["total"]]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == 12
    assert [e["done"] for e in progress] == sorted(e["done"] for e in progress)


def test_warm_search_info_and_engine_errors(client, small_index):
    index_dir, path, report, _ = small_index
    loading: list[dict] = []
    hits = client.request("search", {"index_dir": index_dir, "query": "bright bare ground", "top": 5},
                          on_event=loading.append)
    assert [e["message"] for e in loading] == ["loading the embedder (first search)"]  # the dock can say so
    reloading: list[dict] = []
    again = client.request("search", {"index_dir": index_dir, "query": "bright bare ground", "top": 5},
                           on_event=reloading.append)
    assert len(hits) == 5 and [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert [h["tile_id"] for h in hits] == [h["tile_id"] for h in again]  # same index, same answer
    assert hits[0]["score"] >= hits[-1]["score"]
    assert hits[0]["footprint"]["type"] == "Polygon" and "UTM zone 33N" in hits[0]["crs"]
    assert reloading == []  # the embedder stayed loaded in the worker: no second load
    info = client.request("info", {"index_dir": index_dir})
    assert info["exists"] and info["tiles"] == report["rasters"][0]["tiles_new"]
    with pytest.raises(QueryError, match="empty"):
        client.request("search", {"index_dir": index_dir, "query": "   "})
    with pytest.raises(RasterError):
        client.request("index", _index_args(index_dir, os.path.join(os.path.dirname(path), "missing.tif"), 64))
    with pytest.raises(WorkerError, match="unknown command"):
        client.request("teleport", {})
    assert client.alive and client.request("ping")["pong"] is True


def test_remove_through_worker(client, tmp_path):
    path = rasters.north_up(str(tmp_path), width=128, height=128)
    idx = str(tmp_path / "idx")
    client.request("index", _index_args(idx, path, 64))
    assert client.request("search", {"index_dir": idx, "query": "water", "top": 2})
    removed = client.request("remove", {"index_dir": idx, "rasters": [path]})
    assert len(removed) == 1
    assert client.request("info", {"index_dir": idx})["tiles"] == 0
    assert client.request("search", {"index_dir": idx, "query": "water", "top": 2}) == []
    with pytest.raises(EngineError, match="not in the index"):
        client.request("remove", {"index_dir": idx, "rasters": [path]})


def test_cancel_mid_job_keeps_work_and_resumes(client, tmp_path):
    path = rasters.north_up(str(tmp_path), width=256, height=128, seed=3)
    idx = str(tmp_path / "idx")
    seen: list[dict] = []
    stop = {"flag": False}

    def on_event(e: dict) -> None:
        seen.append(e)
        if e.get("done", 0) > 0:
            stop["flag"] = True

    with pytest.raises(Canceled):
        client.request("index", _index_args(idx, path, 32), on_event=on_event, is_canceled=lambda: stop["flag"])
    assert client.alive and client.request("ping")["pong"] is True  # cancel ends the job, not the worker
    done_before = client.request("info", {"index_dir": idx})["tiles"]
    assert 0 < done_before < 32
    report = client.request("index", _index_args(idx, path, 32))
    (r,) = report["rasters"]
    assert r["tiles_new"] + r["tiles_empty"] == 32 - done_before
    info = client.request("info", {"index_dir": idx})
    assert info["tiles"] == 32 and info["variants"] == 32


def test_sigkill_mid_job_then_update_completes_without_duplicates(client, tmp_path):
    path = rasters.north_up(str(tmp_path), width=256, height=128, seed=5)
    idx = str(tmp_path / "idx")
    victim = WorkerClient(PY, env=ENV)
    victim.start()
    killed = {"done": 0}

    def on_event(e: dict) -> None:
        if e.get("done", 0) > 0 and not killed["done"]:
            killed["done"] = e["done"]
            os.kill(victim.pid, signal.SIGKILL)  # what an OOM killer or a crashing model does

    with pytest.raises(WorkerCrashed, match="SIGKILL"):
        victim.request("index", _index_args(idx, path, 32), on_event=on_event)
    assert not victim.alive and killed["done"] > 0
    # Another worker (the warm one) opens the index the killed process was writing and updates it.
    before = client.request("info", {"index_dir": idx})["tiles"]
    assert before >= killed["done"]  # every reported batch was committed
    report = client.request("index", _index_args(idx, path, 32, remove_missing=True))
    (r,) = report["rasters"]
    assert r["tiles_new"] + r["tiles_empty"] == 32 - before
    info = client.request("info", {"index_dir": idx})
    assert info["tiles"] == 32 and info["variants"] == 32  # nothing twice
    hits = client.request("search", {"index_dir": idx, "query": "dense vegetation", "top": 100})
    assert len({h["tile_id"] for h in hits}) == len(hits) == 32


def test_unusable_interpreters_fail_with_a_message(tmp_path):
    with pytest.raises(WorkerCrashed, match="cannot start the engine worker"):
        WorkerClient(str(tmp_path / "no-such-python")).start()
    with pytest.raises(WorkerCrashed, match="exit code 1"):
        WorkerClient("/bin/false").start()
    script = tmp_path / "fake_python"
    script.write_text("#!/bin/sh\necho 'No module named torch' >&2\nexit 3\n")
    script.chmod(0o755)
    with pytest.raises(WorkerCrashed, match="exit code 3.*No module named torch"):
        WorkerClient(str(script)).start()


def test_library_chatter_goes_to_stderr_not_the_protocol_stream():
    """print() and C-level writes to fd 1 after protocol_stdout() land on stderr; only protocol lines on stdout."""
    code = (
        "import os, sys\n"
        "from plugin.core.worker.worker import protocol_stdout\n"
        "out = protocol_stdout()\n"
        "print('python chatter')\n"
        "os.write(1, b'c-level chatter\\n')\n"
        "out.write('{\"event\": \"ready\"}\\n'); out.flush()\n"
    )
    proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=PLUGIN_ROOT, timeout=60,
                          env=dict(ENV, PYTHONPATH=PLUGIN_ROOT))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == '{"event": "ready"}\n'
    assert "python chatter" in proc.stderr and "c-level chatter" in proc.stderr


def test_cancel_grace_expired_kills_the_worker_and_next_request_restarts_it(tmp_path):
    """A job that does not stop within cancel_grace (a long model batch) is killed; the client starts afresh."""
    path = rasters.north_up(str(tmp_path), width=256, height=128, seed=7)
    idx = str(tmp_path / "idx")
    c = WorkerClient(PY, env=ENV, cancel_grace=0.0)
    try:
        c.start()
        first_pid = c.pid
        started = {"flag": False}

        def on_event(e: dict) -> None:
            started["flag"] = started["flag"] or e.get("done", 0) > 0

        with pytest.raises(Canceled):
            c.request("index", _index_args(idx, path, 32), on_event=on_event, is_canceled=lambda: started["flag"])
        assert not c.alive
        info = c.request("info", {"index_dir": idx})  # a new process, same client
        assert c.alive and c.pid != first_pid
        assert 0 < info["tiles"] <= 32 and info["variants"] == info["tiles"]
    finally:
        c.stop()
