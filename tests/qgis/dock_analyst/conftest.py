"""The analyst's first hour (issue 10), through the dock's public widgets on a real indexed project.

One small generated raster (EPSG:4326, 25 tiles of 128 px), spectral captioner, packaged MiniLM; the
project is indexed once for the whole package (package scope: indexing it through the dock is the
costly part). `test_hits_on_map.py` (its name sorts first) runs before `test_panels.py`, whose tests
change the project: a second raster, a saved and re-opened project.
"""

from __future__ import annotations

import pytest
from qgis.core import QgsProject

from tests.qgis.plugin_harness import indexed_shore_project

PROJECT_CRS = "EPSG:3857"


@pytest.fixture(scope="package")
def shore(qgis_iface, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analyst")
    plugin, layer, canvas = indexed_shore_project(qgis_iface, str(tmp), PROJECT_CRS)
    yield plugin, layer, canvas, tmp
    plugin.unload()
    QgsProject.instance().clear()
