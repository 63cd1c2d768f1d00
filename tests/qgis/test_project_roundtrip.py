"""Per-project index: an unsaved project indexes into a temporary folder, the first save adopts it beside
the project file, closing drops the dock's state, reopening reconnects to the index and searches work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from qgis.core import QgsCoordinateReferenceSystem, QgsProject

from tests.qgis.plugin_harness import (
    add_raster,
    engine_env,
    index_and_wait,
    load_plugin,
    search_and_wait,
    sentinel2_vrt_path,
    set_spectral,
    wait_until,
    write_generated_raster,
)

pytestmark = pytest.mark.slow


def test_save_close_reopen(qgis_iface, s2_dir, tmp_path):
    engine_env()
    project = QgsProject.instance()
    project.clear()
    project.setCrs(QgsCoordinateReferenceSystem("EPSG:32618"))
    plugin = load_plugin(qgis_iface)
    try:
        add_raster(sentinel2_vrt_path(s2_dir, tmp_path), "Sentinel-2 RGBN")
        add_raster(write_generated_raster(str(tmp_path / "generated.tif")), "Generated shore")
        set_spectral(plugin, tile_size=768)
        temp_dir = plugin.session.index_dir()
        assert project.fileName() == ""
        report = index_and_wait(plugin)
        assert not report.get("error"), report
        tiles = plugin.session.info["tiles"]
        assert tiles > 0 and os.path.isdir(temp_dir)
        before, error = search_and_wait(plugin, "river and vegetation", top=5)
        assert error == "" and before

        # first save: the temporary index moves beside the project file
        qgz = tmp_path / "survey.qgz"
        assert project.write(str(qgz))
        wait_until(lambda: plugin.session.index_dir() != temp_dir, 30, "the index to be adopted")
        wait_until(lambda: not plugin.session.queue.busy, 60, "index info")
        adopted = Path(plugin.session.index_dir())
        assert adopted.parent == tmp_path and adopted.name.endswith(".search") and adopted.is_dir()
        assert not os.path.exists(temp_dir) or not os.listdir(temp_dir)
        assert plugin.session.info["tiles"] == tiles

        # close: results and state go with the project
        project.clear()
        assert plugin.search_ctl.highlighter.layer is None
        assert plugin.dock.index_widget.rows() == []
        assert plugin.dock.search_widget.model.rowCount() == 0

        # reopen: reconnects to the same index, layers show as indexed, a search works
        assert project.read(str(qgz))
        wait_until(lambda: plugin.session.info.get("tiles") == tiles, 60, "reconnecting to the index")
        assert Path(plugin.session.index_dir()) == adopted
        # the memory results layer saved with the project came back empty: the dock dropped it
        leftovers = [lyr for lyr in project.mapLayers().values()
                     if lyr.customProperty("semantic_imagery_search/results")]
        assert leftovers == [] and len(project.mapLayers()) == 2
        states = [r.state for r in plugin.dock.index_widget.rows()]
        assert len(states) == 2 and all(s.startswith("indexed") for s in states), states
        after, error = search_and_wait(plugin, "river and vegetation", top=5)
        assert error == ""
        key = [(h["tile_id"], round(h["score"], 5)) for h in after]
        assert key == [(h["tile_id"], round(h["score"], 5)) for h in before]
        assert plugin.search_ctl.highlighter.layer.featureCount() == len(after)
    finally:
        plugin.unload()
        project.clear()
