"""IndexTask / SearchTask driving real worker processes from the QGIS task manager.

The story of one index: a job canceled mid-way, a second one whose worker is SIGKILLed mid-way (as an
out-of-memory kill or a crashing model would), then "update" (remove_missing) finishes it, drops
the raster no longer listed, and nothing is indexed twice. Then a search through the warm worker and
its hits drawn into an EPSG:3857 project exactly on the reprojected footprints.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Callable

import pytest
from qgis.core import QgsApplication, QgsCoordinateReferenceSystem, QgsProject
from rasterio.warp import transform as warp_transform

from plugin.core.types import Hit, RasterSource
from plugin.core.worker.worker_client import WorkerClient
from plugin.qgis_io.hits_layer import hits_to_layer
from plugin.tasks.index_task import IndexTask
from plugin.tasks.search_task import SearchTask

PY = sys.executable
OPTIONS = {"captioner": "spectral", "captioner_options": {"variants": 1, "batch_size": 4}, "tiling": {"tile_size": 32}}


def wait_for(pred: Callable[[], bool], timeout: float = 240.0, what: str = "task") -> None:
    """Spin the event loop (task signals are delivered on the main thread) until `pred()`."""
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        QgsApplication.processEvents()
        time.sleep(0.01)


def run_index_task(index_dir: str, sources: list[RasterSource], on_progress=None, **extra) -> tuple[dict, list[float], int]:
    """Start an IndexTask in the task manager; returns (report, progress values, worker pid)."""
    task = IndexTask("test index", index_dir, sources, {**OPTIONS, **extra}, PY, cancel_grace=20.0)
    reports: list[dict] = []
    progress: list[float] = []
    pid = {"pid": 0}

    def on_prog(value: float) -> None:
        progress.append(value)
        pid["pid"] = pid["pid"] or (task.client.pid or 0)
        if on_progress is not None:
            on_progress(task, value)

    task.progressChanged.connect(on_prog)
    task.index_finished.connect(reports.append)
    QgsApplication.taskManager().addTask(task)
    wait_for(lambda: bool(reports), what="index_finished")
    return reports[0], progress, pid["pid"]


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(scope="module")
def warm_client():
    c = WorkerClient(PY, env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"))
    yield c
    c.stop()


@pytest.fixture(scope="module")
def story(qgis_app, tmp_path_factory, warm_client):
    """Cancel, SIGKILL, update on one index folder; returns what each step reported."""
    from tests.core import rasters

    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # the tasks' workers inherit it (one torch thread on 2 shared cores)
    try:
        return _story(tmp_path_factory, warm_client, rasters)
    finally:
        if old is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = old


def _story(tmp_path_factory, warm_client, rasters) -> dict:

    d = tmp_path_factory.mktemp("tasks")
    small = rasters.write_raster(str(d / "small.tif"), rasters.pattern(3, 64, 128, seed=1), crs="EPSG:32618")
    big = rasters.write_raster(str(d / "big.tif"), rasters.pattern(3, 128, 256, seed=2), crs="EPSG:32618")
    idx = str(d / "project.search")
    sources = [RasterSource(small, name="small"), RasterSource(big, name="big")]
    out: dict = {"index_dir": idx, "small": small, "big": big}

    def cancel_when_started(task, value):
        if value > 0:
            task.cancel()

    out["canceled"], _p, out["canceled_pid"] = run_index_task(idx, sources, cancel_when_started)
    out["after_cancel"] = warm_client.request("info", {"index_dir": idx})

    def kill_when_started(task, value):
        if value > 0 and not out.get("killed"):
            out["killed"] = True
            os.kill(task.client.pid, signal.SIGKILL)

    out["crashed"], _p, out["crashed_pid"] = run_index_task(idx, sources, kill_when_started)
    out["after_kill"] = warm_client.request("info", {"index_dir": idx})
    out["update"], out["update_progress"], _pid = run_index_task(idx, [sources[1]], remove_missing=True)
    out["final"] = warm_client.request("info", {"index_dir": idx})
    return out


def test_cancel_mid_job_ends_the_worker_and_keeps_work(story):
    assert story["canceled"] == {"canceled": True}
    assert _pid_gone(story["canceled_pid"])  # the task's worker does not outlive the task
    assert 0 < story["after_cancel"]["tiles"] < 40


def test_killed_worker_fails_the_task_with_a_message(story):
    assert story["killed"] and "SIGKILL" in story["crashed"]["error"]
    assert story["after_kill"]["tiles"] >= story["after_cancel"]["tiles"]


def test_update_resumes_removes_unlisted_and_never_duplicates(story):
    report, final = story["update"], story["final"]
    assert "error" not in report and not report["canceled"]
    (big,) = report["rasters"]
    assert big["path"] == story["big"] and big["tiles_planned"] == 32
    small_ids = {r["raster_id"] for r in story["after_kill"]["rasters"] if r["path"] == story["small"]}
    assert set(report["removed"]) == small_ids and len(small_ids) == 1
    done_before = next(r["tiles"] for r in story["after_kill"]["rasters"] if r["path"] == story["big"])
    assert big["tiles_new"] + big["tiles_empty"] == 32 - done_before  # only what was missing
    assert final["tiles"] == 32 and final["variants"] == 32  # nothing twice, small gone
    assert [r["path"] for r in final["rasters"]] == [story["big"]]
    assert story["update_progress"] and max(story["update_progress"]) == pytest.approx(100.0)


def test_search_task_hits_drawn_on_reprojected_footprints(story, warm_client, qgis_new_project):
    results: list[tuple] = []
    task = SearchTask(warm_client, story["index_dir"], "dense green vegetation", {"top": 5, "fusion": "max"})
    task.search_finished.connect(lambda hits, err: results.append((hits, err)))
    QgsApplication.taskManager().addTask(task)
    wait_for(lambda: bool(results), what="search_finished")
    hit_dicts, error = results[0]
    assert error == "" and len(hit_dicts) == 5
    hits = [Hit.from_dict(h) for h in hit_dicts]
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5] and all(h.raster == story["big"] for h in hits)

    dest = QgsCoordinateReferenceSystem("EPSG:3857")
    QgsProject.instance().setCrs(dest)
    layer = hits_to_layer(hits, QgsProject.instance().crs())
    by_rank = {int(f["rank"]): f for f in layer.getFeatures()}
    assert sorted(by_rank) == [1, 2, 3, 4, 5]
    for h in hits:
        ring = h.footprint["coordinates"][0]
        xs, ys = warp_transform("EPSG:32618", "EPSG:3857", [p[0] for p in ring], [p[1] for p in ring])
        (got,) = by_rank[h.rank].geometry().asPolygon()
        assert [c for p in got for c in (p.x(), p.y())] == pytest.approx([c for xy in zip(xs, ys) for c in xy], abs=1e-3)
        assert by_rank[h.rank]["tile_id"] == h.tile_id

    bad: list[tuple] = []
    task = SearchTask(warm_client, story["index_dir"], "   ", {"top": 5})
    task.search_finished.connect(lambda hits, err: bad.append((hits, err)))
    QgsApplication.taskManager().addTask(task)
    wait_for(lambda: bool(bad), what="search_finished (empty query)")
    assert bad[0][0] == [] and "empty" in bad[0][1]


def test_index_task_with_a_missing_interpreter_fails_with_a_message(qgis_app, tmp_path):
    task = IndexTask("no engine", str(tmp_path / "idx"), [RasterSource(str(tmp_path / "x.tif"))], OPTIONS,
                     str(tmp_path / "no-python"))
    reports: list[dict] = []
    task.index_finished.connect(reports.append)
    QgsApplication.taskManager().addTask(task)
    wait_for(lambda: bool(reports), timeout=60, what="index_finished")
    assert "cannot start the engine worker" in reports[0]["error"]
    with pytest.raises(ValueError, match=r"indexing options: index request: unknown option\(s\) tile"):
        IndexTask("bad", str(tmp_path / "idx"), [], {"tile": 3}, PY)
