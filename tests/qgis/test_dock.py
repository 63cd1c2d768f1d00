"""The dock end to end: a project with the real Sentinel-2 scene (VRT) and a generated raster in another
CRS, indexed with the spectral captioner through the Index panel, searched from the Search panel.

Checks that what the user sees is exactly what the engine returned: the results layer's features are
the hits' footprints reprojected to the project CRS (computed independently here), the list shows the
hits in rank order with thumbnails, selection zooms and flashes, double-click shows the caption, export
writes a GeoPackage, "only within current map extent" filters, a removed layer turns stale and Update
drops it, and unloading stops the worker and removes the results layer.
"""

from __future__ import annotations

import pytest
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import Qt

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
PROJECT_CRS = "EPSG:3857"


@pytest.fixture(scope="module")
def indexed(qgis_iface, s2_dir, tmp_path_factory):
    """One plugin instance over a project with both rasters, indexed once for all tests here."""
    engine_env()
    tmp = tmp_path_factory.mktemp("dock")
    project = QgsProject.instance()
    project.clear()
    project.setCrs(QgsCoordinateReferenceSystem(PROJECT_CRS))
    qgis_iface.messageBar().clear_messages()
    plugin = load_plugin(qgis_iface)
    s2 = add_raster(sentinel2_vrt_path(s2_dir, tmp), "Sentinel-2 RGBN")
    gen = add_raster(write_generated_raster(str(tmp / "generated.tif")), "Generated shore")
    set_spectral(plugin, tile_size=768)  # 9 + 1 tiles: enough ranks, a short job on 2 shared cores
    yield plugin, s2, gen, tmp
    plugin.unload()
    project.clear()


def _footprint_in(hit: dict, crs: QgsCoordinateReferenceSystem) -> QgsGeometry:
    ring = hit["footprint"]["coordinates"][0]
    geom = QgsGeometry.fromPolygonXY([[QgsPointXY(x, y) for x, y in ring]])
    src = QgsCoordinateReferenceSystem.fromWkt(hit["crs"])
    assert src.isValid()
    geom.transform(QgsCoordinateTransform(src, crs, QgsProject.instance()))
    return geom


def _as_dicts(hits) -> list[dict]:
    return [h.to_dict() if hasattr(h, "to_dict") else h for h in hits]


def test_new_layers_are_offered_for_indexing(indexed, qgis_iface):
    plugin, s2, gen, _ = indexed
    w = plugin.dock.index_widget
    states = {r.key: r.state for r in w.rows()}
    assert states[s2.id()] == "not indexed" and states[gen.id()] == "not indexed"
    assert set(w.checked_keys()) == {s2.id(), gen.id()}
    from qgis.core import Qgis

    infos = " ".join(qgis_iface.messageBar().get_messages(Qgis.Info))
    assert "Sentinel-2 RGBN" in infos and "Generated shore" in infos
    # the band map is guessed from the layer and editable per layer
    assert w.band_map_text(gen.id()) and w.band_map_text(s2.id())


def test_index_then_search_highlights_exactly_the_hits(indexed, qgis_iface):
    plugin, s2, gen, _ = indexed
    report = index_and_wait(plugin)
    assert not report.get("error") and not report.get("canceled"), report
    assert {r["name"] for r in report["rasters"]} == {"Sentinel-2 RGBN", "Generated shore"}
    w = plugin.dock.index_widget
    assert w.state(s2.id()).startswith("indexed") and w.state(gen.id()).startswith("indexed")
    status = plugin.dock.status_label.text()
    assert "tiles" in status and "caption variants" in status and "spectral" in status

    hits, error = search_and_wait(plugin, "dark open water", top=8)
    assert error == "" and 0 < len(hits) <= 8
    hits = _as_dicts(hits)
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)

    # the list shows the hits in order, with their captions and raster names
    model = plugin.dock.search_widget.model
    assert model.rowCount() == len(hits)
    assert [model.hit(i).tile_id for i in range(len(hits))] == [h["tile_id"] for h in hits]
    from qgis.PyQt.QtGui import QTextDocument

    from plugin.gui.search.results_model import COL_CAPTION

    tip = QTextDocument()
    tip.setHtml(model.data(model.index(0, COL_CAPTION), Qt.ItemDataRole.ToolTipRole))  # rich text: query words in bold
    assert hits[0]["caption"] in tip.toPlainText()

    # the results layer: one feature per hit, geometry = footprint in the project CRS
    layer = plugin.search_ctl.highlighter.layer
    assert isinstance(layer, QgsVectorLayer) and layer.id() in QgsProject.instance().mapLayers()
    assert layer.crs().authid() == PROJECT_CRS
    feats = sorted(layer.getFeatures(), key=lambda f: f["rank"])
    assert len(feats) == len(hits)
    crs = QgsCoordinateReferenceSystem(PROJECT_CRS)
    for f, h in zip(feats, hits):
        assert f["tile_id"] == h["tile_id"] and abs(f["score"] - h["score"]) < 1e-6
        expected = _footprint_in(h, crs)
        got = f.geometry()
        assert got.symDifference(expected).area() <= 1e-6 * expected.area(), (h["tile_id"], got.asWkt(), expected.asWkt())

    # thumbnails arrive from the background task
    wait_until(lambda: all(model.has_thumbnail(h["tile_id"]) for h in hits), 60, "thumbnails")

    # selecting a result zooms the canvas onto the tile
    canvas = qgis_iface.mapCanvas()
    plugin.dock.search_widget.select_row(0)
    target = _footprint_in(hits[0], canvas.mapSettings().destinationCrs()).boundingBox()
    assert canvas.extent().contains(target)
    # double-click: the caption variants dialog
    dlg = plugin.search_ctl.show_variants(model.hit(0))
    text = dlg.browser.toPlainText()
    n_variants = report["rasters"][0]["variants"] // max(1, report["rasters"][0]["tiles_new"])
    assert n_variants > 1 and f"Variant {n_variants}" in text and f"Variant {n_variants + 1}" not in text
    assert "(best match)" in text and hits[0]["caption"].split(".")[0] in text
    dlg.close()


def test_second_search_replaces_results_and_export_writes_gpkg(indexed):
    plugin, _s2, _gen, tmp = indexed
    first = plugin.search_ctl.highlighter.layer.id()
    hits, error = search_and_wait(plugin, "dense green vegetation", top=5)
    assert error == "" and hits
    layer = plugin.search_ctl.highlighter.layer
    assert layer.id() != first and QgsProject.instance().mapLayer(first) is None
    out = plugin.search_ctl.export_to(str(tmp / "results"))
    assert out and out.endswith(".gpkg")
    exported = QgsVectorLayer(out, "exported", "ogr")
    assert exported.isValid() and exported.featureCount() == len(hits)
    assert {f["tile_id"] for f in exported.getFeatures()} == {h["tile_id"] if isinstance(h, dict) else h.tile_id for h in hits}


def test_only_within_map_extent(indexed, qgis_iface):
    plugin, _s2, gen, _ = indexed
    canvas = qgis_iface.mapCanvas()
    canvas.setDestinationCrs(QgsCoordinateReferenceSystem(PROJECT_CRS))
    xform = QgsCoordinateTransform(gen.crs(), canvas.mapSettings().destinationCrs(), QgsProject.instance())
    extent = xform.transformBoundingBox(gen.extent())
    canvas.setExtent(extent)
    canvas.refresh()
    view = canvas.extent()
    hits, error = search_and_wait(plugin, "water", top=20, only_extent=True)
    assert error == "" and hits
    crs = canvas.mapSettings().destinationCrs()
    for h in _as_dicts(hits):
        assert _footprint_in(h, crs).intersects(QgsGeometry.fromRect(QgsRectangle(view)))
        assert h["raster_name"] == "Generated shore"


def test_garbage_queries_never_crash(indexed, qgis_iface):
    plugin, *_ = indexed
    for q in ("ñ" * 5000, "'; DROP TABLE tiles; --", "\x00\x01 ??"):
        hits, error = search_and_wait(plugin, q, top=3)
        assert isinstance(hits, list) and isinstance(error, str)


def test_removed_layer_turns_stale_and_update_drops_it(indexed):
    plugin, s2, gen, _ = indexed
    QgsProject.instance().removeMapLayer(gen.id())
    w = plugin.dock.index_widget
    stale = [r for r in w.rows() if r.key.startswith("raster:")]
    assert len(stale) == 1 and stale[0].state.startswith("stale") and stale[0].name == "Generated shore"
    report = index_and_wait(plugin, update=True)
    assert len(report["removed"]) == 1 and report["rasters"][0]["tiles_new"] == 0
    assert not [r for r in w.rows() if r.key.startswith("raster:")]
    assert w.state(s2.id()).startswith("indexed")
    hits, error = search_and_wait(plugin, "water", top=50)
    assert error == "" and all((h["raster_name"] if isinstance(h, dict) else h.raster_name) == "Sentinel-2 RGBN" for h in hits)


def test_layer_pointed_at_another_file_turns_its_old_tiles_stale(indexed):
    from qgis.core import QgsDataProvider

    plugin, s2, _gen, tmp = indexed
    w = plugin.dock.index_widget
    assert w.state(s2.id()).startswith("indexed")
    other = write_generated_raster(str(tmp / "replacement.tif"))
    s2.setDataSource(other, s2.name(), "gdal", QgsDataProvider.ProviderOptions())
    assert w.state(s2.id()) == "not indexed"
    stale = [r for r in w.rows() if r.key.startswith("raster:")]
    assert len(stale) == 1 and stale[0].state.startswith("stale")


def test_unload_stops_worker_and_removes_results(indexed, qgis_iface):
    plugin, *_ = indexed
    client = plugin.session.queue._client
    assert client is not None and client.alive
    results_id = plugin.search_ctl.highlighter.layer.id()
    proc = client.proc
    plugin.unload()
    assert QgsProject.instance().mapLayer(results_id) is None
    proc.wait(timeout=30)
    assert proc.poll() is not None
    # loading again after an unload works (QGIS' plugin reloader does this); the fixture unloads it
    plugin.initGui()
    assert plugin.dock is not None and plugin.session.queue._client is None


# --- settings and secrets (quick; no engine) ------------------------------------------------------


def test_api_key_goes_to_the_auth_database_never_to_settings(qgis_iface):
    from qgis.core import QgsApplication, QgsSettings

    from plugin.gui.settings.settings import (
        IndexOptions,
        api_key_from_auth,
        load_index_options,
        save_index_options,
        store_api_key,
    )

    am = QgsApplication.authManager()
    assert am.setMasterPassword("pytest-master-password", True)
    secret = "sk-test-" + "7" * 24
    authcfg = store_api_key(secret)
    assert api_key_from_auth(authcfg) == secret
    opts = IndexOptions(captioner_kind="openai", server_url="http://127.0.0.1:9/v1", server_model="tiny-vlm",
                        authcfg=authcfg, variants=3)
    save_index_options(opts)
    engine = load_index_options().to_engine()
    assert engine["captioner"] == "openai:http://127.0.0.1:9/v1#tiny-vlm"
    assert engine["captioner_options"] == {"variants": 3, "api_key": secret, "connect_timeout_s": 5.0, "tile_deadline_s": 120.0}
    settings_file = QgsSettings().fileName()
    QgsSettings().sync()
    assert secret not in open(settings_file, encoding="utf-8", errors="replace").read()
    save_index_options(IndexOptions())


@pytest.mark.parametrize(
    "change, message",
    [({"scales": "1,x"}, "scales"), ({"band": "9,2,1"}, "band 9"), ({"captioner_kind": "transformers"}, "model"),
     ({"captioner_kind": "openai", "server_model": ""}, "server URL")],
)
def test_bad_index_options_are_one_line_messages_not_jobs(qgis_iface, qgis_new_project, tmp_path, change, message):
    from qgis.core import Qgis

    plugin = load_plugin(qgis_iface)
    try:
        layer = add_raster(write_generated_raster(str(tmp_path / "g.tif")), "g")
        w = plugin.dock.index_widget.options_widget
        opts = w.options()
        for k, v in change.items():
            if k == "band":
                plugin.dock.index_widget.set_band_map_text(layer.id(), v)
            else:
                setattr(opts, k, v)
        w.set_options(opts)
        if "scales" in change:  # the form keeps what the user typed
            w.scales_edit.setText(change["scales"])
        qgis_iface.messageBar().clear_messages()
        assert plugin.index_ctl.start_index() is False
        assert plugin.index_ctl.task is None
        crit = qgis_iface.messageBar().get_messages(Qgis.Critical)
        assert len(crit) == 1 and message in crit[0] and "\n" not in crit[0]
    finally:
        plugin.unload()


def test_settings_dialog_stores_the_key_encrypted_and_forgets_it(qgis_iface):
    from qgis.core import QgsApplication

    from plugin.gui.settings.settings import api_key_from_auth, engine_python_setting, set_engine_python_setting
    from plugin.gui.settings.settings_dialog import SettingsDialog

    assert QgsApplication.authManager().setMasterPassword("pytest-master-password", True)
    before = engine_python_setting()
    dlg = SettingsDialog()
    dlg.key_edit.setText("sk-dialog-0123456789")
    dlg.accept()
    try:
        assert dlg.authcfg and api_key_from_auth(dlg.authcfg) == "sk-dialog-0123456789"
        assert dlg.key_edit.text() == ""
    finally:
        set_engine_python_setting(before)
