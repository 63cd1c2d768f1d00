"""Builders shared by the store / ann / search tests: raster stand-ins, tiles, random unit vectors.

`FakeInfo` stands for `raster.RasterInfo` (the store takes it duck-typed: attributes + to_dict()).
Import as `from tests.core.index_helpers import ...`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from plugin.core.types import CaptionVariant, PixelWindow, TileRef

DIM = 16
UTM18N = 'PROJCS["WGS 84 / UTM zone 18N",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",-75],PARAMETER["scale_factor",0.9996],PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1],AUTHORITY["EPSG","32618"]]'  # noqa: E501


@dataclass(frozen=True)
class FakeInfo:
    path: str
    raster_id: str
    name: str
    crs_wkt: Optional[str] = UTM18N
    #: Upper-left corner in CRS units and pixel size: tile footprints are laid out from these.
    x0: float = 435730.0
    y0: float = 4179460.0
    px: float = 10.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["band_map"] = {"red": 1, "green": 2, "blue": 3, "nir": None}
        return d


def tile(info: FakeInfo, col: int, row: int, size: int = 64, scale: int = 1) -> TileRef:
    """A tile at pixel (col, row) of `info`; the footprint is in its CRS (pixels without one)."""
    px = info.px if info.crs_wkt else 1.0
    x0 = info.x0 if info.crs_wkt else 0.0
    y0 = info.y0 if info.crs_wkt else 0.0
    sign = -1.0 if info.crs_wkt else 1.0
    xa, xb = x0 + col * px, x0 + (col + size) * px
    ya, yb = y0 + sign * row * px, y0 + sign * (row + size) * px
    ring = ((xa, ya), (xb, ya), (xb, yb), (xa, yb), (xa, ya))
    return TileRef(f"{info.raster_id}:{col}:{row}:{size}", info.raster_id, PixelWindow(col, row, size, size), scale, ring)


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def variants(tile_id: str, n: int, tag: str = "") -> list[CaptionVariant]:
    return [CaptionVariant(f"{tag}{tile_id} v{i}", f"feature {i}", f"caption {i} of {tile_id}") for i in range(n)]


def grid_items(info: FakeInfo, rng: np.random.Generator, cols: int, rows: int, k: int = 3, size: int = 64,
               tag: str = "") -> list[tuple[TileRef, list[CaptionVariant], np.ndarray]]:
    """cols x rows tiles of `size` px with k variants each and random unit vectors."""
    out = []
    for r in range(rows):
        for c in range(cols):
            ref = tile(info, c * size, r * size, size)
            out.append((ref, variants(ref.tile_id, k, tag), unit(rng, k)))
    return out
