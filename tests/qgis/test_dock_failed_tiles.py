"""The dock counts tiles that could not be read (a corrupt block), and Update retries exactly those."""

from __future__ import annotations

import shutil

import pytest
from qgis.core import Qgis, QgsProject

from tests.core.rasters import blocky, corrupt_block
from tests.qgis.plugin_harness import add_raster, engine_env, index_and_wait, load_plugin, set_spectral, wait_until

pytestmark = pytest.mark.slow


def test_corrupt_block_is_counted_and_update_retries_it(qgis_iface, tmp_path):
    engine_env()
    project = QgsProject.instance()
    project.clear()
    path = blocky(tmp_path)
    shutil.copy(path, tmp_path / "pristine.tif")
    corrupt_block(path, 1, 1)
    plugin = load_plugin(qgis_iface)
    try:
        layer = add_raster(path, "blocky")
        set_spectral(plugin, tile_size=256)
        plugin.dock.index_widget.set_checked(layer.id(), True)
        qgis_iface.messageBar().clear_messages()
        report = index_and_wait(plugin, update=True)
        (entry,) = report["rasters"]
        assert (entry["tiles_new"], entry["tiles_failed"]) == (15, 1)
        assert "1 tiles failed (Update retries them)" in plugin.session.last_outcome
        # "Index ready" is pushed a moment after the task ends (above QGIS's own "Task complete")
        wait_until(lambda: any("1 tiles failed" in m for m in qgis_iface.messageBar().get_messages(Qgis.Warning)),
                   10, "the failed-tiles warning in the message bar")
        shutil.copy(tmp_path / "pristine.tif", path)  # the file is repaired: Update reads that one tile again
        report = index_and_wait(plugin, update=True)
        (entry,) = report["rasters"]
        assert (entry["tiles_new"], entry["tiles_failed"]) == (1, 0)
        assert "failed" not in plugin.session.last_outcome
    finally:
        plugin.unload()
        project.clear()
