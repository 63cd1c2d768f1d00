"""The main thread stays responsive during a real indexing job and a search.

A QTimer ticks every 20 ms on the main thread while the dock indexes the real Sentinel-2 scene with
the spectral captioner (worker start, torch/MiniLM load, tiling, captioning, embedding, commits) and
then runs a search (results list, results layer, thumbnails). The largest gap between two ticks is
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


def test_main_thread_never_blocked_while_indexing_and_searching(qgis_iface, s2_dir, tmp_path):
    engine_env()
    project = QgsProject.instance()
    project.clear()
    project.setCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    plugin = load_plugin(qgis_iface)
    try:
        add_raster(sentinel2_vrt_path(s2_dir, tmp_path), "Sentinel-2 RGBN")
        set_spectral(plugin, tile_size=512)
        hb = Heartbeat()
        hb.start()
        report = index_and_wait(plugin)
        index_gap = hb.max_gap_ms()
        hits, error = search_and_wait(plugin, "bare soil and fields")
        hb.stop()
        assert not report.get("error"), report
        assert report["rasters"][0]["tiles_new"] > 10
        assert error == "" and hits
        n = len(hb.ticks)
        gap = hb.max_gap_ms()
        print(f"heartbeat: {n} ticks, max gap {gap:.1f} ms (indexing {index_gap:.1f} ms)")
        assert n > 50, "the job was too short to measure anything"
        assert gap < BLOCK_BUDGET_MS + PERIOD_MS, f"main thread blocked: max gap {gap:.0f} ms"
    finally:
        plugin.unload()
        project.clear()
