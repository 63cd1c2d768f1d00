"""The Processing provider: definitions, a Model Builder model chaining both algorithms in-process, and
both algorithms headless through `qgis_process.bin` with the plugin found via QGIS_PLUGINPATH.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingParameterMultipleLayers,
    QgsProject,
    QgsVectorLayer,
)
from rasterio.warp import transform as warp_transform

from plugin.processing.provider import PROVIDER_ID, SearchProvider
from tests.core import rasters

QGIS_PROCESS = "/usr/bin/qgis_process.bin"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def provider(qgis_app, qgis_processing):
    registry = QgsApplication.processingRegistry()
    prov = SearchProvider()
    assert registry.addProvider(prov)
    yield prov
    registry.removeProvider(prov)  # unload() also stops the shared search worker


def _static(value):
    return [QgsProcessingModelChildParameterSource.fromStaticValue(value)]


def test_algorithm_definitions(provider):
    registry = QgsApplication.processingRegistry()
    build = registry.algorithmById(f"{PROVIDER_ID}:build_index")
    search = registry.algorithmById(f"{PROVIDER_ID}:search_index")
    assert build.displayName() == "Build or update search index" and search.displayName() == "Search imagery index"
    for alg in registry.algorithms():
        if alg.provider() is not None and alg.provider().id() == PROVIDER_ID:  # one base class: one group
            assert (alg.group(), alg.groupId()) == ("Index and search", "index_search"), alg.id()
            assert type(alg.createInstance()) is type(alg) and alg.createInstance() is not alg
    names = [p.name() for p in build.parameterDefinitions()]
    for n in ("LAYERS", "CAPTIONER", "EMBEDDER", "TILE_SIZE", "OVERLAP", "SCALES", "OUTPUT"):
        assert n in names
    assert build.parameterDefinition("LAYERS").layerType() == QgsProcessing.TypeRaster
    assert build.parameterDefinition("OUTPUT").type() == "folderDestination"
    assert [o.name() for o in search.outputDefinitions()] == ["OUTPUT"]
    assert search.parameterDefinition("OUTPUT").type() == "sink"
    assert build.parameterDefinition("TILE_SIZE").defaultValue() == 512


def test_bad_parameters_fail_before_any_work(provider, tmp_path, qgis_new_project):
    path = rasters.north_up(str(tmp_path), width=64, height=64)
    alg = QgsApplication.processingRegistry().createAlgorithmById(f"{PROVIDER_ID}:build_index")
    context, feedback = QgsProcessingContext(), QgsProcessingFeedback()
    context.setProject(QgsProject.instance())
    params = {"LAYERS": [path], "SCALES": "1,zwei", "OUTPUT": str(tmp_path / "idx")}
    with pytest.raises(QgsProcessingException, match="scales"):
        alg.prepareAlgorithm(params, context, feedback)
    ok, msg = alg.checkParameterValues({"LAYERS": [path], "TILE_SIZE": 8, "OUTPUT": str(tmp_path / "i")}, context)
    assert not ok and "TILE_SIZE" in msg


def test_model_builder_chain_build_then_search(provider, tmp_path, qgis_new_project, monkeypatch):
    """A model (as Model Builder saves it) feeding build_index's folder into search_index, run in-process."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = rasters.write_raster(str(tmp_path / "r.tif"), rasters.pattern(3, 128, 192, seed=4), crs="EPSG:32618")
    model = QgsProcessingModelAlgorithm("index and search", "tests")
    model.addModelParameter(QgsProcessingParameterMultipleLayers("rasters", "Rasters", QgsProcessing.TypeRaster),
                            QgsProcessingModelParameter("rasters"))
    build = QgsProcessingModelChildAlgorithm(f"{PROVIDER_ID}:build_index")
    build.setChildId("build")
    build.addParameterSources("LAYERS", [QgsProcessingModelChildParameterSource.fromModelParameter("rasters")])
    for name, value in (("CAPTIONER", "spectral"), ("TILE_SIZE", 64), ("OVERLAP", 0.0), ("SCALES", "1"),
                        ("OUTPUT", str(tmp_path / "model.search"))):
        build.addParameterSources(name, _static(value))
    model.addChildAlgorithm(build)
    search = QgsProcessingModelChildAlgorithm(f"{PROVIDER_ID}:search_index")
    search.setChildId("search")
    search.addParameterSources("INDEX", [QgsProcessingModelChildParameterSource.fromChildOutput("build", "OUTPUT")])
    for name, value in (("QUERY", "dense green vegetation"), ("TOP", 3)):
        search.addParameterSources(name, _static(value))
    out = QgsProcessingModelOutput("hits", "Hits")
    out.setChildId("search")
    out.setChildOutputName("OUTPUT")
    search.setModelOutputs({"hits": out})
    model.addChildAlgorithm(search)

    QgsProject.instance().setCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    context, feedback = QgsProcessingContext(), QgsProcessingFeedback()
    context.setProject(QgsProject.instance())
    gpkg = str(tmp_path / "hits.gpkg")
    ok, msg = model.checkParameterValues({"rasters": [path], "search:hits": gpkg}, context)
    assert ok, msg
    results, ok = model.run({"rasters": [path], "search:hits": gpkg}, context, feedback)
    assert ok, feedback.textLog()
    assert os.path.isfile(os.path.join(str(tmp_path / "model.search"), "manifest.json"))
    layer = QgsVectorLayer(results["search:hits"], "hits", "ogr")
    assert layer.isValid() and layer.featureCount() == 3 and layer.crs().authid() == "EPSG:3857"
    feats = sorted(layer.getFeatures(), key=lambda f: f["rank"])
    assert [f["rank"] for f in feats] == [1, 2, 3] and feats[0]["score"] >= feats[-1]["score"]
    # Each polygon is a 64 px (640 m) UTM 18N tile reprojected to the project CRS.
    (ring,) = feats[0].geometry().asPolygon()
    xs, ys = warp_transform("EPSG:3857", "EPSG:32618", [p.x() for p in ring], [p.y() for p in ring])
    assert max(xs) - min(xs) == pytest.approx(640.0, abs=0.01) and max(ys) - min(ys) == pytest.approx(640.0, abs=0.01)


def _qgis_process(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([QGIS_PROCESS, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not os.path.exists(QGIS_PROCESS), reason="qgis_process.bin not installed")
def test_qgis_process_runs_both_algorithms(tmp_path):
    """Headless: the plugin is found through QGIS_PLUGINPATH (a symlink named as the plugin) and enabled in a
    throw-away profile."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    os.symlink(ROOT, plugins / "semantic_imagery_search")
    # A throw-away profile root: QGIS_CUSTOM_CONFIG_PATH (pytest-qgis sets it for this session's own QGIS).
    env = {k: v for k, v in os.environ.items() if k not in ("QGIS_OPTIONS_PATH", "PYTHONPATH")}
    env.update(QGIS_CUSTOM_CONFIG_PATH=str(tmp_path / "config"), QGIS_PLUGINPATH=str(plugins),
               QT_QPA_PLATFORM="offscreen", OMP_NUM_THREADS="1")
    enable = _qgis_process(["plugins", "enable", "semantic_imagery_search"], env)
    assert enable.returncode == 0, enable.stdout + enable.stderr
    assert "* semantic_imagery_search" in enable.stdout

    raster = rasters.write_raster(str(tmp_path / "r.tif"), rasters.pattern(3, 128, 128, seed=6), crs="EPSG:32618")
    idx = str(tmp_path / "cli.search")
    build = _qgis_process(["--json", "run", f"{PROVIDER_ID}:build_index", "--", f"LAYERS={raster}", "TILE_SIZE=64",
                           f"OUTPUT={idx}"], env)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    res = json.loads(build.stdout[build.stdout.index("{"):])["results"]
    assert res["OUTPUT"] == idx and res["TILES"] == 4 and res["TILES_NEW"] == 4 and res["TILES_FAILED"] == 0

    gpkg = str(tmp_path / "hits.gpkg")
    search = _qgis_process(["--json", "run", f"{PROVIDER_ID}:search_index", "--", f"INDEX={idx}",
                            "QUERY=bright bare soil", "TOP=2", f"OUTPUT={gpkg}"], env)
    assert search.returncode == 0, search.stdout[-2000:] + search.stderr[-2000:]
    layer = QgsVectorLayer(gpkg, "hits", "ogr")
    assert layer.isValid() and layer.featureCount() == 2
    assert layer.crs().authid() == "EPSG:32618"  # no project: the raster's CRS
    assert sorted(f["rank"] for f in layer.getFeatures()) == [1, 2]
    del layer




def test_build_index_counts_failed_tiles(provider, tmp_path, qgis_new_project, monkeypatch):
    """A tile that cannot be read (a corrupt block) is an error line in the log and TILES_FAILED in the
    results (what a model or a qgis_process script checks); the algorithm itself succeeds."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = rasters.holed(tmp_path)  # 16 tiles of 128 px: 4 empty, 1 unreadable
    context, feedback = QgsProcessingContext(), QgsProcessingFeedback()
    build = QgsApplication.processingRegistry().createAlgorithmById(f"{PROVIDER_ID}:build_index")
    res, ok = build.run({"LAYERS": [path], "CAPTIONER": "spectral", "TILE_SIZE": 128, "OVERLAP": 0.0, "SCALES": "1",
                         "OUTPUT": str(tmp_path / "holed.search")}, context, feedback)
    assert ok, feedback.textLog()
    assert (res["TILES"], res["TILES_NEW"], res["TILES_FAILED"]) == (16, 11, 1)
    assert "holed: 1 tile(s) could not be read (the next run retries them)" in feedback.textLog()


def test_search_by_example_and_ranker_parameters(provider, tmp_path, qgis_new_project, monkeypatch):
    """Issue 11: LIKE (RASTER:COL,ROW) instead of a query, RANKER as an advanced parameter."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = rasters.write_raster(str(tmp_path / "r.tif"), rasters.pattern(3, 128, 192, seed=4), crs="EPSG:32618")
    registry = QgsApplication.processingRegistry()
    context, feedback = QgsProcessingContext(), QgsProcessingFeedback()
    context.setProject(QgsProject.instance())
    idx = str(tmp_path / "like.search")
    build = registry.createAlgorithmById(f"{PROVIDER_ID}:build_index")
    assert build.parameterDefinition("DOCUMENT_GRAPH").options() == ["auto", "fp32", "int8"]
    _res, ok = build.run({"LAYERS": [path], "CAPTIONER": "spectral", "TILE_SIZE": 64, "OVERLAP": 0.0, "SCALES": "1",
                          "DOCUMENT_GRAPH": 1, "OUTPUT": idx}, context, feedback)
    assert ok, feedback.textLog()
    from plugin.core.indexing import index_info

    assert index_info(idx)["document_graph"] == "fp32"  # asked for; a new CPU index would otherwise be int8
    search = registry.createAlgorithmById(f"{PROVIDER_ID}:search_index")
    assert search.parameterDefinition("RANKER").options() == ["hybrid", "dense", "lexical"]
    assert "without" in search.shortHelpString() and "RASTER:COL,ROW" in search.shortHelpString()
    gpkg = str(tmp_path / "like.gpkg")
    res, ok = search.run({"INDEX": idx, "LIKE": f"{path}:10,10", "TOP": 3, "OUTPUT": gpkg}, context, feedback)
    assert ok, feedback.textLog()
    layer = QgsVectorLayer(res["OUTPUT"], "like", "ogr")
    ids = [f["tile_id"] for f in layer.getFeatures()]
    assert layer.featureCount() == 3 and len(set(ids)) == 3
    from plugin.core.store.store import SearchIndex

    with SearchIndex.open(idx, readonly=True) as si:  # the example is the tile at pixel (10, 10): never a hit
        example = si.conn.execute("SELECT tile_id FROM tiles WHERE col_off = 0 AND row_off = 0").fetchone()[0]
    assert example not in ids
    _res, ok = search.run({"INDEX": idx, "QUERY": "water", "LIKE": f"{path}:10,10", "OUTPUT": gpkg}, context, feedback)
    assert not ok and "not both" in feedback.textLog()


def test_score_surface_algorithm_writes_one_georeferenced_band(provider, tmp_path, qgis_new_project, monkeypatch):
    """Issue 10: every tile's score for a query as a raster on the indexed raster's grid."""
    from qgis.core import QgsRasterLayer

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = rasters.write_raster(str(tmp_path / "s.tif"), rasters.pattern(3, 128, 192, seed=5), crs="EPSG:32618")
    registry = QgsApplication.processingRegistry()
    context, feedback = QgsProcessingContext(), QgsProcessingFeedback()
    context.setProject(QgsProject.instance())
    idx = str(tmp_path / "surface.search")
    build = registry.createAlgorithmById(f"{PROVIDER_ID}:build_index")
    _res, ok = build.run({"LAYERS": [path], "CAPTIONER": "spectral", "TILE_SIZE": 64, "OVERLAP": 0.0, "SCALES": "1,2",
                          "OUTPUT": idx}, context, feedback)
    assert ok, feedback.textLog()
    alg = registry.createAlgorithmById(f"{PROVIDER_ID}:score_surface")
    out = str(tmp_path / "surface.tif")
    res, ok = alg.run({"INDEX": idx, "QUERY": "bright water", "OUTPUT": out}, context, feedback)
    assert ok, feedback.textLog()
    layer = QgsRasterLayer(res["OUTPUT"], "surface")
    src = QgsRasterLayer(path, "src")
    assert layer.isValid() and layer.bandCount() == 1 and layer.crs().authid() == "EPSG:32618"
    assert layer.extent().toString(3) == src.extent().toString(3)
    # 64 px tiles at scale 1 and 2 -> 8 px cells; every cell is covered by a tile: no nodata, cosines
    assert (layer.width(), layer.height()) == (192 // 8, 128 // 8)
    stats = layer.dataProvider().bandStatistics(1)
    assert -1.0 <= stats.minimumValue <= stats.maximumValue <= 1.0
    res, ok = alg.run({"INDEX": idx, "QUERY": "water", "RASTER": "no-such-raster", "OUTPUT": out}, context, feedback)
    assert not ok and "no indexed raster matches" in feedback.textLog()
