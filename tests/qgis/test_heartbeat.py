"""The main thread stays responsive during a real indexing job and a search.

A QTimer ticks every 20 ms on the main thread while the dock indexes the real Sentinel-2 scene with
the spectral captioner (worker start, torch/MiniLM load, tiling, captioning, embedding, commits), the
user cancels mid-way, Update resumes the job, and a search runs (results list, layer, thumbnails). The largest gap between two ticks is
the longest time the main thread was blocked plus one timer period. The issue's budget is 100 ms of
blocking, so the test allows 100 ms + one 20 ms period = 120 ms between ticks; that period is the only
slack (CI machines with 2 shared cores included), documented here rather than hidden in a retry.
"""

from __future__ import annotations

import time

import pytest
from qgis.core import QgsCoordinateReferenceSystem, QgsProject
from qgis.PyQt.QtCore import QTimer

from tests.qgis.plugin_harness import (
    add_raster,
    engine_env,
    index_and_wait,
    load_plugin,
    search_and_wait,
    sentinel2_vrt_path,
    set_spectral,
    wait_until,
)

pytestmark = pytest.mark.slow
PERIOD_MS = 20
BLOCK_BUDGET_MS = 100


class Heartbeat:
    def __init__(self) -> None:
        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(PERIOD_MS)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def start(self) -> None:
        self.ticks = [time.perf_counter()]
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        self.ticks.append(time.perf_counter())

    def max_gap_ms(self) -> float:
        return max((b - a) * 1000 for a, b in zip(self.ticks, self.ticks[1:]))


def test_main_thread_never_blocked_while_indexing_canceling_resuming_and_searching(qgis_iface, s2_dir, tmp_path):
    """One heartbeat over: a job canceled from the dock mid-way, Update resuming it, then a search."""
    engine_env()
    project = QgsProject.instance()
    project.clear()
    project.setCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    plugin = load_plugin(qgis_iface)
    try:
        layer = add_raster(sentinel2_vrt_path(s2_dir, tmp_path), "Sentinel-2 RGBN")
        set_spectral(plugin, tile_size=384)
        opts = plugin.dock.index_widget.options_widget.options()
        opts.batch_size = 4  # 36 tiles in 9 committed batches: room to cancel mid-way
        plugin.dock.index_widget.options_widget.set_options(opts)
        hb = Heartbeat()
        hb.start()

        # 1. start, wait for the first committed progress, press Cancel
        ctl, w = plugin.index_ctl, plugin.dock.index_widget
        assert ctl.start_index()
        task, done = ctl.task, []
        task.index_finished.connect(done.append)
        wait_until(lambda: (w.state(layer.id()) or "").startswith("indexing ") or bool(done), 180, "indexing progress")
        assert not done, done
        w.cancel_button.click()
        wait_until(lambda: bool(done) and ctl.task is None, 60, "the job to stop")
        assert done[0].get("canceled") is True, done[0]
        assert plugin.session.last_outcome.startswith("cancelled")
        wait_until(lambda: not plugin.session.queue.busy, 60, "index info")
        assert w.state(layer.id()) in ("not indexed", "interrupted (Update resumes it)")
        assert w.index_button.isEnabled() and not w.cancel_button.isEnabled()

        # 2. Update resumes: tiles committed before the cancel are not captioned again
        report = index_and_wait(plugin, update=True)
        r = report["rasters"][0]
        assert not report.get("error") and not report.get("canceled"), report
        assert r["tiles_new"] + r["tiles_empty"] < r["tiles_planned"] or r["tiles_cached"] > 0, r
        assert w.state(layer.id()).startswith("indexed")
        assert plugin.session.info["tiles"] == r["tiles_planned"] - r["tiles_empty"]

        # 3. a search with the warm worker
        hits, error = search_and_wait(plugin, "bare soil and fields")
        hb.stop()
        assert error == "" and hits
        n, gap = len(hb.ticks), hb.max_gap_ms()
        print(f"heartbeat: {n} ticks, max gap {gap:.1f} ms")
        assert n > 50, "the job was too short to measure anything"
        assert gap < BLOCK_BUDGET_MS + PERIOD_MS, f"main thread blocked: max gap {gap:.0f} ms"
    finally:
        plugin.unload()
        project.clear()
