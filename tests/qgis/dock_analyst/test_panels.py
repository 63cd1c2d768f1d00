"""The dock's panels over one session on the indexed project (issue 10 and after): indexing progress
and a cancel that touches only the interrupted raster, tiling advice, the embedder preloaded when the
saved project opens again, export beside the project, hits told apart, what a new tiling does, the
score surface. In this order: later tests use the project the earlier ones saved."""

from __future__ import annotations

import pytest
from qgis.core import (
    QgsProject,
)

from plugin.core.search.score_scale import scale_for
from tests.qgis.plugin_harness import (
    add_raster,
    current_shore_layer,
    search_and_wait,
)

pytestmark = pytest.mark.slow


def _write_big_raster(path: str, size: int = 1024) -> str:
    """A 4-band uint16 GeoTIFF unlike the shore one (another content fingerprint), east of it."""
    import numpy as np
    from osgeo import gdal, osr

    rng = np.random.default_rng(11)
    ds = gdal.GetDriverByName("GTiff").Create(path, size, size, 4, gdal.GDT_UInt16)
    ds.SetGeoTransform((-74.20, 0.0001, 0.0, 40.80, 0.0, -0.0001))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(4326)
    ds.SetProjection(srs.ExportToWkt())
    yy, xx = np.mgrid[0:size, 0:size]
    for b in range(1, 5):
        band = 800 + 600 * np.sin(xx / (37.0 * b)) * np.cos(yy / 53.0) + rng.normal(0, 60, (size, size))
        ds.GetRasterBand(b).WriteArray(np.clip(band, 1, 10000).astype(np.uint16))
    ds.FlushCache()
    ds = None
    return path


def test_progress_moves_on_the_right_row_and_cancel_touches_only_the_interrupted_raster(shore, qgis_iface):
    from qgis.core import Qgis

    from tests.qgis.plugin_harness import wait_until

    plugin, shore_layer, _canvas, tmp = shore
    big = add_raster(_write_big_raster(str(tmp / "big.tif")), "Big scene")
    iw = plugin.dock.index_widget
    assert iw.state(shore_layer.id()).startswith("indexed")
    iw.set_checked(shore_layer.id(), True)
    iw.set_checked(big.id(), True)
    qgis_iface.messageBar().clear_messages()
    phases: list[dict] = []
    statuses: list[str] = []
    rows: list[tuple[str, str]] = []
    ctl = plugin.index_ctl
    iw.index_button.click()
    task = ctl.task
    assert task is not None
    outcome: list[str] = []
    task.taskCompleted.connect(lambda: outcome.append("complete"))
    task.taskTerminated.connect(lambda: outcome.append("terminated"))
    grace = task.client.cancel_grace
    task.phase_changed.connect(lambda p: (phases.append(p), statuses.append(plugin.dock.status_label.text()),
                                          rows.append((iw.state(shore_layer.id()), iw.state(big.id())))))
    # during the job: the options are frozen, the bar shows, the status line tells the job, not "No index"
    assert not iw.options_widget.isEnabled() and iw.progress_bar.isVisible() is not None
    assert iw.cancel_button.isEnabled() and not iw.index_button.isEnabled()
    wait_until(lambda: sum(p["phase"] == "captioning" for p in phases) >= 3, 240, "three progress steps")
    order = [p["phase"] for p in phases]
    assert "loading" in order and order.index("loading") < order.index("captioning")
    working = [p for p in phases if p["phase"] == "captioning"]
    dones = [p["done"] for p in working]
    assert dones == sorted(dones) and max(b - a for a, b in zip(dones, dones[1:])) <= 8
    assert all("No index" not in s and s.startswith("Indexing") for s in statuses)
    assert "Captioned" in plugin.dock.status_label.text() or "Captioned" in statuses[-1]
    assert working[-1]["total"] == 64 and working[-1]["raster"] == "Big scene"
    # the shore raster was complete: it is settled first and never shows the running percentage
    shore_states = [s for s, _b in rows if s]
    assert all("%" not in s for s in shore_states), shore_states
    assert any("%" in b for _s, b in rows if b)

    iw.cancel_button.click()
    assert iw.cancel_button.text() == "Cancelling…" and not iw.cancel_button.isEnabled()
    assert "Cancelling" in plugin.dock.status_label.text()
    assert grace <= 2.0
    wait_until(lambda: ctl.task is None and not plugin.session.queue.busy, 120, "the cancelled job")
    assert outcome == ["complete"]  # QGIS does not call a cancel "Task failed"
    warnings = " ".join(qgis_iface.messageBar().get_messages(Qgis.Warning))
    assert "cancelled" in warnings
    assert not qgis_iface.messageBar().get_messages(Qgis.Critical)
    assert iw.state(shore_layer.id()).startswith("indexed (25 tiles)"), iw.state(shore_layer.id())
    assert iw.state(big.id()).startswith("interrupted"), iw.state(big.id())
    assert "cancelled" in plugin.dock.status_label.text() and iw.options_widget.isEnabled()
    QgsProject.instance().removeMapLayer(big.id())


def test_tiling_is_suggested_from_ground_resolution_with_count_size_and_time(shore, qgis_iface):
    import math
    import re

    from qgis.core import QgsSettings

    plugin, layer, _canvas, _tmp = shore
    iw = plugin.dock.index_widget
    ow = iw.options_widget
    for w in (ow.tile_spin, ow.overlap_spin, ow.scales_edit, ow.kind_combo, ow.device_combo):
        assert len(w.toolTip()) > 30
    # 0.0001 degree pixels at 40.77 N: ~8.4 m east-west; ~1 km tiles -> 128 px, and 2x still within 3 km
    iw.set_checked(layer.id(), True)
    ow.tile_spin.setValue(512)
    ow.scales_edit.setText("1")
    assert "suggested 128 px, scales 1,2" in ow.estimate_label.text()
    ow.suggest_button.click()
    assert ow.tile_spin.value() == 128 and ow.scales_edit.text() == "1,2"
    text = ow.estimate_label.text()
    # 640 x 640 px: 5 x 5 tiles at scale 1, 3 x 3 at scale 2 (256 px with a shifted edge tile)
    assert text.startswith("≈ 34 tiles (scale 1: 25 × ") and "scale 2: 9 × " in text and "roughly 5 s with spectral" in text
    km = [float(v) for v in re.findall(r"× ([0-9.]+) km", text)]
    expected = 128 * 0.0001 * 111320 * math.cos(math.radians(40.768))
    assert km[0] * 1000 == pytest.approx(expected, rel=0.02) and km[1] == pytest.approx(2 * km[0], rel=0.01)
    assert "suggested" not in text
    # a VLM sees at most ~448 px: on a fine raster the advice caps the tile there
    from plugin.core.rasters.tiling_advice import suggest_tiling

    assert suggest_tiling(0.3, 20000, 20000, "transformers").tile_size == 448
    # a user who never chose a tile size gets the suggestion by itself when rasters are there
    QgsSettings().remove("semantic_imagery_search/index/tile_size")
    from tests.qgis.plugin_harness import load_plugin as load

    fresh = load(qgis_iface)
    try:
        fw = fresh.dock.index_widget.options_widget
        assert fw.tile_spin.value() == 128 and fw.scales_edit.text() == "1,2"
    finally:
        fresh.unload()


def test_opening_an_indexed_project_preloads_the_embedder_and_labels_the_wait(shore, qgis_iface):
    from tests.qgis.plugin_harness import SignalCatcher, wait_until

    plugin, _layer, _canvas, tmp = shore
    project = QgsProject.instance()
    path = str(tmp / "shore.qgz")
    assert project.write(path)
    wait_until(lambda: not plugin.session.queue.busy, 120, "the save")
    # a new session: QGIS restarted the plugin (no engine worker yet), then the project opens
    plugin.unload()
    plugin.initGui()
    project.clear()
    qgis_iface.messageBar().clear_messages()
    states: list[str] = []
    plugin.session.embedder_state_changed.connect(states.append)
    w = plugin.dock.search_widget
    assert "loads on first search" in w.model_label.text()
    assert project.read(path)
    wait_until(lambda: plugin.session.embedder_state in ("loading", "ready"), 60, "the preload to start")
    assert states[0] == "loading" and "loading embedder" in w.model_label.text()
    # a query typed while it loads says what it waits for, then answers
    catcher = SignalCatcher(plugin.search_ctl.search_finished)
    w.query_edit.setText("dark open water")
    w.request_search()
    assert w.info_label.text().startswith("Waiting for the embedder to finish loading")
    hits, error = catcher.wait(1, 180, "the first search")
    assert error == "" and hits
    assert states[-1] == "ready" and "embedder ready" in w.model_label.text()
    # once ready, the wait is just a search
    w.query_edit.setText("vegetation")
    w.request_search()
    assert w.info_label.text() == "Searching…"
    catcher.wait(2, 60, "the second search")
    # reopening an indexed project does not offer its indexed layer for indexing again
    from qgis.core import Qgis

    infos = " ".join(qgis_iface.messageBar().get_messages(Qgis.Info))
    assert "Not indexed" not in infos and "can be indexed" not in infos, infos
    assert plugin.dock.index_widget.rows()[0].state == "indexed (25 tiles)"


def test_export_defaults_to_the_project_folder_keeps_the_query_and_can_add_it_to_the_map(shore, qgis_iface):
    from qgis.core import QgsVectorLayer
    from qgis.PyQt.QtWidgets import QPushButton

    from plugin.gui.messages import job_outcome

    plugin, _layer, _canvas, tmp = shore
    hits, error = search_and_wait(plugin, "Dark open water!", top=4)
    assert error == "" and hits
    ctl = plugin.search_ctl
    default = ctl.default_export_path()
    assert default == str(tmp / "search_dark_open_water.gpkg")  # the saved project's folder
    out = ctl.export_to(default)
    exported = QgsVectorLayer(out, "exported", "ogr")
    assert exported.isValid() and exported.featureCount() == len(hits)
    assert "Dark open water!" in exported.metadata().title() + exported.metadata().abstract()
    buttons = [b for b in qgis_iface.messageBar().findChildren(QPushButton) if b.text() == "Add to map"]
    assert buttons
    before = set(QgsProject.instance().mapLayers())
    buttons[-1].click()
    added = [QgsProject.instance().mapLayer(i) for i in set(QgsProject.instance().mapLayers()) - before]
    assert len(added) == 1 and added[0].featureCount() == len(hits) and "Dark open water!" in added[0].name()
    QgsProject.instance().removeMapLayer(added[0].id())
    # job summaries say what happened, in words
    assert job_outcome({"rasters": [{"tiles_planned": 320, "tiles_new": 0, "tiles_cached": 0}], "seconds": 1.2}) == \
        "1 raster: nothing to do: 320 already indexed in 1.2 s"
    assert job_outcome({"rasters": [{"tiles_planned": 30, "tiles_new": 25, "tiles_empty": 5}], "seconds": 9}) == \
        "1 raster: 25 tiles captioned, 5 empty skipped in 9.0 s"


def test_results_tell_hits_apart(shore, qgis_iface):
    from qgis.PyQt.QtCore import Qt

    from plugin.gui.search.results_model import COL_CAPTION, COL_RASTER, COL_SCALE

    plugin, *_ = shore
    w = plugin.dock.search_widget
    hits, error = search_and_wait(plugin, "dense green vegetation", top=10)
    assert error == "" and len(hits) == 10
    model = w.model
    cells = [model.data(model.index(r, COL_CAPTION)).split("\n") for r in range(10)]
    texts = [c[0] for c in cells]  # the second line says which query words matched (test_dock_like)
    assert all(c[1:] == (["words: " + ", ".join(h["extra"]["matched_terms"])] if h["extra"].get("matched_terms") else [])
               for c, h in zip(cells, hits))
    full = [h["caption"] for h in hits]
    # sentences most of these captions share are not repeated in every row; what is shown is theirs
    from plugin.gui.search.result_text import sentences

    per_row = [sentences(f) for f in full]
    shared = {x for x in {x for ss in per_row for x in ss} if sum(x in ss for ss in per_row) > len(full) / 2}
    assert shared, "the scene's captions share no sentence: nothing to check"
    for text, ss in zip(texts, per_row):
        pieces = [p.lstrip("…") for p in text.split(" · ")]
        assert all(any(p in x for x in ss) for p in pieces), (text, ss)
        if any(x not in shared for x in ss):
            assert not any(p in shared for p in pieces), (text, shared)
    assert len(set(texts)) == len(set(full))
    from qgis.PyQt.QtGui import QTextDocument

    doc = QTextDocument()
    doc.setHtml(model.data(model.index(0, COL_CAPTION), Qt.ItemDataRole.ToolTipRole))
    tip = doc.toPlainText()
    assert full[0] in tip and tip.startswith("Matched: ") and "veg" in tip.split("\n")[0].lower()
    # the raster column shows only when it tells hits apart
    assert w.view.isColumnHidden(COL_RASTER) == (len({h["raster_id"] for h in hits}) == 1)
    hits1, _ = search_and_wait(plugin, "dense green vegetation", top=1)
    assert w.view.isColumnHidden(COL_RASTER)
    hits, _ = search_and_wait(plugin, "dense green vegetation", top=10)
    # scale and ground size: 128 px of ~8.4 m
    scale_text = model.data(model.index(0, COL_SCALE))
    assert scale_text.startswith("×1") and "km" in scale_text
    # the caption dialog: the query in its title, the best variant first, beside the dock
    plugin.show_dock()
    dlg = plugin.search_ctl.show_variants(model.hit(0))
    assert "dense green vegetation" in dlg.windowTitle() and "#1" in dlg.windowTitle()
    html_text = dlg.browser.toPlainText()
    best = hits[0]["variant_index"] + 1
    assert html_text.index(f"Variant {best} (best match)") < min(
        html_text.index(f"Variant {i}") for i in range(1, 6) if i != best)
    dock_left = w.mapToGlobal(w.rect().topLeft()).x()
    assert dlg.geometry().right() <= dock_left or dlg.x() == 0
    dlg.close()


def test_dock_says_what_a_new_tiling_does_before_index(shore):
    """Issue 14: before Index, the dock says a changed tiling captions again and keeps the old captions."""
    plugin, _layer, _canvas, _tmp = shore
    layer = current_shore_layer()
    iw = plugin.dock.index_widget
    ow = iw.options_widget
    iw.set_checked(layer.id(), True)
    plugin.session.refresh_info()
    from tests.qgis.plugin_harness import wait_until

    wait_until(lambda: not plugin.session.queue.busy, 60, "the index info refresh")
    ow.scales_edit.setText("1")
    ow.overlap_spin.setValue(0.0)
    ow.tile_spin.setValue(128)
    assert "captions its tiles again" not in ow.estimate_label.text()
    ow.tile_spin.setValue(256)
    text = ow.estimate_label.text()
    assert "Shore: indexed with tile size 128: Index captions its tiles again" in text and "stay as cache" in text
    # then the engine's exact counts (its caption cache included) replace the rule
    wait_until(lambda: "another tiling than indexed" in ow.estimate_label.text(), 60, "the preview counts")
    assert "Shore: another tiling than indexed: Index captions 9 tile(s), 0 come from the caption cache" \
        in ow.estimate_label.text()
    ow.tile_spin.setValue(128)
    assert "captions its tiles again" not in ow.estimate_label.text()


def test_score_surface_from_the_dock(shore):
    from qgis.core import QgsPointXY, QgsRasterLayer, QgsSingleBandPseudoColorRenderer

    from tests.qgis.plugin_harness import SignalCatcher, wait_until

    plugin, _layer, _canvas, _tmp = shore
    layer = current_shore_layer()
    hits, error = search_and_wait(plugin, "dark open water", top=25)
    assert error == "" and hits
    w = plugin.dock.search_widget
    assert w.surface_button.isEnabled()
    catcher = SignalCatcher(plugin.search_ctl.surface_finished)
    w.surface_button.click()
    layers, err = catcher.wait(1, 120, "the score surface")
    assert err == "" and layers
    # the surface holds the embedder's cosine (the dense ranker's score; the dock's default ranker
    # adds a lexical bonus on top), asked of the same engine here
    dense: list = []
    plugin.session.queue.call("search", {"index_dir": plugin.session.index_dir(), "query": "dark open water",
                                         "top": 25, "ranker": "dense"}, lambda r, e: dense.append((r, e)))
    wait_until(lambda: bool(dense), 60, "the dense search")
    assert dense[0][1] == ""
    shore_hits = [h for h in dense[0][0] if h["raster_name"] == "Shore"]
    (surf,) = [lyr for lyr in layers if "(Shore)" in lyr.name()]
    assert isinstance(surf, QgsRasterLayer) and surf.isValid() and surf.bandCount() == 1
    assert surf.crs().authid() == "EPSG:4326"
    ext, src = surf.extent(), layer.extent()
    assert abs(ext.xMinimum() - src.xMinimum()) < 1e-9 and abs(ext.yMaximum() - src.yMaximum()) < 1e-9
    assert ext.width() == pytest.approx(src.width(), rel=1e-6)
    # each tile's cells hold its fused score (tiles do not overlap here): the hits' scores, read back
    for h in shore_hits[:5]:
        ring = h["footprint"]["coordinates"][0]
        cx = sum(x for x, _y in ring[:4]) / 4
        cy = sum(y for _x, y in ring[:4]) / 4
        value, ok = surf.dataProvider().sample(QgsPointXY(cx, cy), 1)
        assert ok and value == pytest.approx(h["score"], abs=1e-4), (h["rank"], value, h["score"])
    stats = surf.dataProvider().bandStatistics(1)
    assert stats.maximumValue == pytest.approx(shore_hits[0]["score"], abs=1e-4)
    # the same fixed colour scale as the results layer
    r = surf.renderer()
    scale = scale_for("st:all-MiniLM-L6-v2@x")
    assert isinstance(r, QgsSingleBandPseudoColorRenderer)
    assert r.classificationMin() == pytest.approx(scale.low) and r.classificationMax() == pytest.approx(scale.high)
    for lyr in layers:
        QgsProject.instance().removeMapLayer(lyr.id())
