"""Issue 11 in the dock: the query box documents the negative-term syntax, a negative term demotes
tiles through the real worker, and "More like this" on a result ranks the tiles like it (never
itself). One small generated raster (25 tiles of 128 px), spectral captioner, packaged MiniLM."""

from __future__ import annotations

import pytest
from qgis.core import QgsCoordinateReferenceSystem, QgsProject

from tests.qgis.plugin_harness import (
    SignalCatcher,
    indexed_shore_project,
    search_and_wait,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shore(qgis_iface, tmp_path_factory):
    plugin, _layer, _canvas = indexed_shore_project(qgis_iface, str(tmp_path_factory.mktemp("like")))
    yield plugin
    plugin.unload()
    QgsProject.instance().clear()


def test_query_box_documents_negative_terms(shore):
    edit = shore.dock.search_widget.query_edit
    assert "-word" in edit.placeholderText() and "without" in edit.toolTip() and "-word" in edit.toolTip()


def test_negative_term_demotes_through_the_worker(shore):
    plain, error = search_and_wait(shore, "open water", top=25)
    assert error == "" and plain
    hits, error = search_and_wait(shore, "open water -forest", top=25)
    assert error == "" and {h["tile_id"] for h in hits} == {h["tile_id"] for h in plain}
    demoted = [h for h in hits if "demoted_by" in h["extra"]]
    forest = {h["tile_id"] for h in hits if "image of a forest" in h["caption"]}
    assert forest and forest <= {h["tile_id"] for h in demoted}, "every forest tile is demoted"
    assert len(demoted) < len(hits), "the open-water tiles are not"
    assert hits[len(hits) - len(demoted):] == demoted and all(h["extra"]["demoted_by"] == "forest" for h in demoted)
    assert "water" in hits[0]["extra"]["matched_terms"]  # why it matched, as the dock receives it


def test_more_like_this_on_a_result(shore):
    hits, error = search_and_wait(shore, "open water", top=5)
    assert error == "" and hits
    w = shore.dock.search_widget
    menu = w.like_menu(0)
    assert menu is not None and [a.text() for a in menu.actions()] == ["More like this"]
    assert w.like_menu(-1) is None
    catcher = SignalCatcher(shore.search_ctl.search_finished)
    menu.actions()[0].trigger()
    like, error = catcher.wait(1, 180, "the search by example")
    assert error == "" and like
    example = hits[0]["tile_id"]
    assert all(h.extra["like"] == example for h in like) and example not in {h.tile_id for h in like}
    assert [h.rank for h in like] == list(range(1, len(like) + 1))
    assert w.model.rowCount() == len(like)


def test_like_from_a_point_on_the_map(shore, qgis_iface):
    from qgis.core import QgsCoordinateTransform, QgsPointXY, QgsProject
    from qgis.gui import QgsMapToolEmitPoint

    from plugin.qgis_io.map_point import like_spec_at, pixel_at

    canvas = qgis_iface.mapCanvas()
    layer = next(iter(QgsProject.instance().mapLayersByName("Shore")))
    canvas.setLayers([layer])
    crs = canvas.mapSettings().destinationCrs()
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    # pixel (100, 200) of the generated raster: lon -74.30 + 100.5 * 1e-4, lat 40.80 - 200.5 * 1e-4
    pt = QgsCoordinateTransform(wgs84, crs, QgsProject.instance()).transform(QgsPointXY(-74.28995, 40.77995))
    assert pixel_at(layer, pt, crs) == (100, 200)
    assert like_spec_at(pt, crs, [layer]).endswith("shore.tif:100,200")
    assert like_spec_at(QgsPointXY(0, 0), crs, [layer]) is None
    w = shore.dock.search_widget
    assert w.like_button.toolTip().startswith("Search by example")
    w.like_button.click()
    tool = canvas.mapTool()
    assert isinstance(tool, QgsMapToolEmitPoint)
    catcher = SignalCatcher(shore.search_ctl.search_finished)
    tool.canvasClicked.emit(pt, 1)  # what a left click on the canvas emits
    like, error = catcher.wait(1, 180, "the search by example from the map")
    assert error == "" and like and canvas.mapTool() is not tool
    # the example is the tile holding pixel (100, 200)
    example = like[0].extra["like"]
    assert all(h.extra["like"] == example for h in like) and example not in {h.tile_id for h in like}
    from plugin.core.store.store import SearchIndex

    with SearchIndex.open(shore.session.index_dir(), readonly=True) as si:
        c0, r0, ww, hh = si.conn.execute("SELECT col_off, row_off, width, height FROM tiles WHERE tile_id = ?",
                                         (example,)).fetchone()
    assert c0 <= 100 < c0 + ww and r0 <= 200 < r0 + hh
    assert shore.search_ctl.search_like_at(QgsPointXY(0, 0)) is None and "No raster" in w.info_label.text()


def _plain(rich: str) -> str:
    from qgis.PyQt.QtGui import QTextDocument

    doc = QTextDocument()
    doc.setHtml(rich)
    return doc.toPlainText()


def test_why_it_matched_is_shown(shore):
    """The query words a hit's best variant holds, in bold in its tooltip and caption dialog and on
    the row's second line; the negative term that demoted a row, said on that row."""
    from qgis.PyQt.QtCore import Qt

    from plugin.gui.search.results_model import COL_CAPTION

    hits, error = search_and_wait(shore, "open water -forest", top=25)
    assert error == "" and hits
    model = shore.dock.search_widget.model
    rows = {model.hit(r).tile_id: r for r in range(model.rowCount())}
    first = model.hit(0)
    words = first.extra["matched_terms"]
    assert "water" in words
    second = model.data(model.index(0, COL_CAPTION)).split("\n")[1]
    assert second == "words: " + ", ".join(words)
    tip = model.data(model.index(0, COL_CAPTION), Qt.ItemDataRole.ToolTipRole)
    assert "<b>water</b>" in tip.lower() and first.caption in _plain(tip)
    assert "Query words in the caption: " + ", ".join(words) in _plain(tip)
    demoted = [h for h in hits if "demoted_by" in h["extra"]]
    assert demoted
    row = rows[demoted[0]["tile_id"]]
    text = model.data(model.index(row, COL_CAPTION))
    assert text.split("\n")[-1].endswith(f"ranked last: shows “forest” (similarity {demoted[0]['extra']['negative_score']:.2f})")
    assert "Ranked last: shows “forest”" in _plain(model.data(model.index(row, COL_CAPTION), Qt.ItemDataRole.ToolTipRole))
    dlg = shore.search_ctl.show_variants(first)
    try:
        html_text = dlg.browser.toHtml()
        assert "Query words in the best variant: " + ", ".join(words) in dlg.browser.toPlainText()
        assert "font-weight:600;\">water</span>" in html_text.lower() or "font-weight:700;\">water</span>" in html_text.lower()
    finally:
        dlg.close()
    dlg = shore.search_ctl.show_variants(model.hit(row))
    try:
        assert "Ranked last: shows “forest”" in dlg.browser.toPlainText()
    finally:
        dlg.close()


def test_word_bonus_does_not_make_a_confident_match(shore):
    """Hybrid scores add up to HYBRID_WEIGHT for the query's words; the dock's verdict and score
    colours stay on the cosine the fixed scale was calibrated on."""
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtGui import QColor

    from plugin.core.search.score_scale import CLASS_COLORS, match_strength
    from plugin.gui.search.results_model import COL_SCORE

    hits, error = search_and_wait(shore, "open water", top=3)
    assert error == "" and hits
    ctl = shore.search_ctl
    scale = ctl.score_scale()
    lifted = list(ctl.hits)
    lifted[0].score, lifted[0].extra = scale.weak + 0.05, {**lifted[0].extra, "lexical_bonus": 0.1, "matched_terms": ["water"]}
    for h in lifted[1:]:
        h.score, h.extra = scale.weak - 0.1, {**h.extra, "lexical_bonus": 0.0}
    ctl.show_results(lifted)
    w = shore.dock.search_widget
    assert f"no confident match: best score {scale.weak - 0.05:.2f}" in w.info_label.text()
    brush = w.model.data(w.model.index(0, COL_SCORE), Qt.ItemDataRole.ForegroundRole)
    cos_class = scale.class_index(match_strength(lifted[0].score, lifted[0].extra))
    assert brush.color().name() == QColor(CLASS_COLORS[cos_class]).darker(130).name()
    assert scale.class_index(lifted[0].score) != scale.class_index(scale.weak - 0.05), "the bonus would change the class"
    layer = ctl.highlighter.layer
    feat = next(f for f in layer.getFeatures() if f["rank"] == lifted[0].rank)
    assert feat["similarity"] == pytest.approx(scale.weak - 0.05)
    lifted[0].extra["lexical_bonus"] = 0.0  # the same score as a plain cosine is a confident match
    ctl.show_results(lifted)
    assert "no confident match" not in w.info_label.text()
    # a confident match that also names the query's words: the line agrees with the Score column
    lifted[0].score, lifted[0].extra["lexical_bonus"] = scale.weak + 0.15, 0.1
    ctl.show_results(lifted)
    text = w.info_label.text()
    assert f"best score {scale.weak + 0.15:.2f} (similarity {scale.weak + 0.05:.2f} + 0.10 for the query's words)" in text
    assert "no confident match" not in text

