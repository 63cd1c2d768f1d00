"""qgis_io: layers -> raster sources, project -> index folder, hits -> features in the project CRS, GeoPackage export.

No worker here (no model): hits come from the engine's real tile plan of a generated EPSG:32618 GeoTIFF,
and expected reprojections are computed with rasterio.warp (PROJ through GDAL), independently of QGIS.
"""

from __future__ import annotations

import os

import pytest
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsMultiBandColorRenderer,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from rasterio.warp import transform as warp_transform

from plugin.core.errors import EngineError, RasterError
from plugin.core.rasters.raster import open_raster
from plugin.core.rasters.tiling import TilingParams, plan_tiles
from plugin.core.types import BandMap, Hit
from plugin.qgis_io import project_index
from plugin.qgis_io.engine import SETTINGS_KEY, engine_python
from plugin.qgis_io.hits_layer import export_layer_gpkg, hits_to_layer
from plugin.qgis_io.layers import guess_band_map, project_raster_layers, raster_source_from_layer
from tests.core import rasters


def _hits_for(path: str, tile: int = 64) -> list[Hit]:
    """Hits whose footprints are the engine's own tile footprints (ranked by a made-up descending score)."""
    info = open_raster(path)
    refs = plan_tiles(info, TilingParams(tile_size=tile))
    out = []
    for i, ref in enumerate(refs):
        out.append(Hit(rank=i + 1, score=0.9 - 0.01 * i, tile_id=ref.tile_id, raster_id=ref.raster_id, raster=path,
                       window=ref.window, scale=ref.scale, caption=f"tile {i}", variant_index=0,
                       footprint=ref.footprint_geojson(), crs=info.crs_wkt, raster_name="utm18"))
    return out


def _rings(layer: QgsVectorLayer) -> dict[int, list[tuple[float, float]]]:
    out = {}
    for f in layer.getFeatures():
        (ring,) = f.geometry().asPolygon()
        out[int(f["rank"])] = [(p.x(), p.y()) for p in ring]
    return out


def test_hits_layer_is_the_reprojected_footprints(qgis_new_project, utm18_raster, tmp_path):
    path = utm18_raster()
    hits = _hits_for(path)
    dest = QgsCoordinateReferenceSystem("EPSG:3857")
    QgsProject.instance().setCrs(dest)
    layer = hits_to_layer(hits, dest, name="results")
    assert layer.isValid() and layer.crs().authid() == "EPSG:3857" and layer.featureCount() == len(hits) == 12
    assert [f.name() for f in layer.fields()] == ["rank", "score", "caption", "raster", "raster_name", "tile_id", "scale",
                                                  "similarity"]
    rings = _rings(layer)
    for h in hits:
        src = h.footprint["coordinates"][0]
        xs, ys = warp_transform("EPSG:32618", "EPSG:3857", [p[0] for p in src], [p[1] for p in src])
        got = rings[h.rank]
        assert len(got) == len(src)  # vertex for vertex, no densifying
        for (gx, gy), ex, ey in zip(got, xs, ys):
            assert gx == pytest.approx(ex, abs=1e-3) and gy == pytest.approx(ey, abs=1e-3)
    feat = next(f for f in layer.getFeatures() if f["rank"] == 1)
    assert feat["tile_id"] == hits[0].tile_id and feat["score"] == pytest.approx(hits[0].score)
    assert feat["scale"] == 1 and feat["raster"] == path
    assert layer.renderer().type() == "graduatedSymbol" and layer.labelsEnabled()
    assert layer.renderer().classAttribute() == "similarity" and feat["similarity"] == pytest.approx(hits[0].score)

    gpkg = export_layer_gpkg(layer, str(tmp_path / "out" / "hits"))
    assert gpkg.endswith(".gpkg") and os.path.isfile(gpkg)
    back = QgsVectorLayer(gpkg, "back", "ogr")
    assert back.isValid() and back.featureCount() == 12 and back.crs().authid() == "EPSG:3857"
    back_rings = _rings(back)
    for rank, ring in rings.items():
        flat = [c for p in ring for c in p]
        assert [c for p in back_rings[rank] for c in p] == pytest.approx(flat)


def test_hits_layer_same_crs_and_empty(qgis_new_project, utm18_raster):
    path = utm18_raster()
    hits = _hits_for(path, tile=128)
    layer = hits_to_layer(hits, QgsCoordinateReferenceSystem("EPSG:32618"))
    rings = _rings(layer)
    for h in hits:
        assert rings[h.rank] == [tuple(p) for p in h.footprint["coordinates"][0]]
    empty = hits_to_layer([], QgsCoordinateReferenceSystem("EPSG:3857"))
    assert empty.isValid() and empty.featureCount() == 0


def test_raster_source_and_band_map_from_layers(qgis_new_project, tmp_path):
    four = rasters.write_raster(str(tmp_path / "four.tif"), rasters.pattern(4, 64, 64),
                                descriptions=["red", "green", "blue", "nir"])
    layer = QgsRasterLayer(four, "Four bands")
    assert layer.isValid()
    renderer = QgsMultiBandColorRenderer(layer.dataProvider(), 3, 2, 1)
    layer.setRenderer(renderer)
    src = raster_source_from_layer(layer)
    assert src.path == os.path.abspath(four) and src.name == "Four bands"
    assert src.band_map == BandMap(3, 2, 1, 4)  # what the user sees, plus the band named NIR

    gray = QgsRasterLayer(rasters.one_band(str(tmp_path)), "gray")
    assert guess_band_map(gray) == BandMap(1, 1, 1)
    with pytest.raises(RasterError, match="asks for band 3"):
        raster_source_from_layer(gray, BandMap(3, 2, 1))

    vec = QgsVectorLayer("Point?crs=EPSG:4326", "points", "memory")
    with pytest.raises(EngineError, match="not a raster layer"):
        raster_source_from_layer(vec)
    gone = rasters.north_up(str(tmp_path), name="gone.tif", width=32, height=32)
    gone_layer = QgsRasterLayer(gone, "gone")
    os.remove(gone)
    with pytest.raises(RasterError, match="file not found"):
        raster_source_from_layer(gone_layer)

    QgsProject.instance().addMapLayers([gray, layer, vec])
    assert [lyr.name() for lyr in project_raster_layers(QgsProject.instance())] == ["Four bands", "gray"]


def test_engine_python_setting_then_fallback(qgis_app):
    from qgis.core import QgsSettings

    s = QgsSettings()
    old = s.value(SETTINGS_KEY, "")
    try:
        s.setValue(SETTINGS_KEY, "/opt/engine/bin/python")
        assert engine_python() == "/opt/engine/bin/python"
        s.setValue(SETTINGS_KEY, "")
        assert os.path.isfile(engine_python())  # the repo's .venv python (or python3 on PATH)
    finally:
        s.setValue(SETTINGS_KEY, old)


def _fake_index(folder: str) -> None:
    """What marks a folder as holding an index for adoption decisions: the store's manifest."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        f.write("{}")


def test_unsaved_project_temp_index_adopted_on_first_save(qgis_new_project, tmp_path):
    project = QgsProject.instance()
    project.clear()
    tmp_dir = project_index.index_dir_for_project(project)
    assert os.path.isdir(tmp_dir) and os.path.basename(tmp_dir).startswith(project_index.TEMP_PREFIX)
    assert project_index.index_dir_for_project(project) == tmp_dir  # stable while unsaved
    _fake_index(tmp_dir)
    assert project.write(str(tmp_path / "site.qgz"))
    new_dir = project_index.adopt_index_on_save(project)
    assert new_dir == str(tmp_path / "site.search")
    assert os.path.isfile(os.path.join(new_dir, "manifest.json")) and not os.path.exists(tmp_dir)
    assert project_index.recorded_index_dir(project) == new_dir
    assert project_index.adopt_index_on_save(project) is None  # nothing more to move
    project.write()
    project.clear()
    assert project.read(str(tmp_path / "site.qgz"))
    assert project_index.index_dir_for_project(project) == new_dir  # reopening reconnects
    project.clear()
    other = project_index.index_dir_for_project(project)
    assert other != tmp_dir and other != new_dir  # a new unsaved project gets its own folder
    os.rmdir(other)


def test_two_projects_never_share_an_index(qgis_new_project, tmp_path):
    project = QgsProject.instance()
    project.clear()
    assert project.write(str(tmp_path / "a.qgz"))
    a_dir = project_index.index_dir_for_project(project)
    _fake_index(a_dir)
    assert project.write(str(tmp_path / "a.qgs"))  # same stem, other format, same folder
    qgs_dir = project_index.index_dir_for_project(project)
    assert qgs_dir != a_dir and os.path.basename(qgs_dir) == "a_qgs.search"
    project.clear()
    assert project.read(str(tmp_path / "a.qgz"))
    assert project_index.index_dir_for_project(project) == a_dir
    assert project.write(str(tmp_path / "b.qgz"))  # "Save As": b gets a copy, a keeps its own
    b_dir = project_index.index_dir_for_project(project)
    assert b_dir == str(tmp_path / "b.search") and os.path.isfile(os.path.join(b_dir, "manifest.json"))
    assert os.path.isfile(os.path.join(a_dir, "manifest.json"))
    assert project_index.recorded_index_dir(project) == b_dir


def test_hybrid_word_bonus_does_not_change_the_colour(qgis_new_project, utm18_raster):
    """The fixed scale is calibrated on cosines: a hit whose hybrid score is lifted by the words it
    matches is coloured (and judged) by its similarity, and ranked by its score."""
    from plugin.core.search.score_scale import match_strength, scale_for

    scale = scale_for(None)
    hits = _hits_for(utm18_raster())[:2]
    hits[0].score, hits[0].extra = scale.weak + 0.05, {"lexical_bonus": 0.1, "matched_terms": ["tanks"]}
    assert match_strength(hits[0].score, hits[0].extra) == pytest.approx(scale.weak - 0.05)
    assert match_strength(0.5, None) == 0.5 and match_strength(0.5, {"lexical_bonus": None}) == 0.5
    layer = hits_to_layer(hits, QgsCoordinateReferenceSystem("EPSG:32618"), name="results")
    feat = next(f for f in layer.getFeatures() if f["rank"] == 1)
    assert feat["score"] == pytest.approx(scale.weak + 0.05) and feat["similarity"] == pytest.approx(scale.weak - 0.05)
    (first,) = [r for r in layer.renderer().ranges() if r.lowerValue() <= feat["similarity"] < r.upperValue()]
    assert first.label().startswith("no confident match")
