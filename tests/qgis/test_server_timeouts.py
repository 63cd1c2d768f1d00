"""The openai captioner's connect timeout and tile deadline are settable in the dock and in Processing."""

from __future__ import annotations

import pytest
from qgis.core import (
    QgsApplication,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingParameterDefinition,
    QgsProject,
)

from plugin.gui.index.index_options_widget import IndexOptionsWidget
from plugin.gui.settings.settings import IndexOptions
from plugin.processing.provider import PROVIDER_ID, SearchProvider
from tests.core import rasters


def test_dock_form_round_trips_the_server_times(qgis_iface):
    opts = IndexOptions(captioner_kind="openai", server_url="http://127.0.0.1:9/v1", server_model="m",
                        connect_timeout_s=2.5, tile_deadline_s=300.0)
    w = IndexOptionsWidget(opts)
    assert w.connect_spin.value() == 2.5 and w.deadline_spin.value() == 300.0
    w.deadline_spin.setValue(45)
    engine = w.options().to_engine()
    assert engine["captioner_options"]["connect_timeout_s"] == 2.5
    assert engine["captioner_options"]["tile_deadline_s"] == 45.0
    assert engine["document_graph"] == "auto" and w.graph_combo.currentText() == "auto"
    w.graph_combo.setCurrentText("fp32")  # a new index's caption embedding reaches the engine's keywords
    assert w.options().document_graph == "fp32" and w.options().to_engine()["document_graph"] == "fp32"
    spectral = IndexOptions(connect_timeout_s=2.5).to_engine()  # other captioners take no server times
    assert "connect_timeout_s" not in spectral["captioner_options"]


@pytest.fixture(scope="module")
def provider(qgis_app, qgis_processing):
    registry = QgsApplication.processingRegistry()
    prov = SearchProvider()
    assert registry.addProvider(prov)
    yield prov
    registry.removeProvider(prov)


def test_processing_passes_the_server_times(provider, tmp_path, qgis_new_project):
    path = rasters.north_up(str(tmp_path), width=64, height=64)
    alg = QgsApplication.processingRegistry().createAlgorithmById(f"{PROVIDER_ID}:build_index")
    for name in ("CONNECT_TIMEOUT", "TILE_DEADLINE"):
        assert alg.parameterDefinition(name).flags() & QgsProcessingParameterDefinition.FlagAdvanced
    context, feedback = QgsProcessingContext(), QgsProcessingFeedback()
    context.setProject(QgsProject.instance())
    params = {"LAYERS": [path], "CAPTIONER": "openai:http://127.0.0.1:9/v1#m", "CONNECT_TIMEOUT": 1.5,
              "TILE_DEADLINE": 30, "OUTPUT": str(tmp_path / "idx")}
    assert alg.prepareAlgorithm(params, context, feedback)
    assert alg._options["captioner_options"] == {"connect_timeout_s": 1.5, "tile_deadline_s": 30.0}
