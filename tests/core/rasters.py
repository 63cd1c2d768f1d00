"""Small generated GeoTIFFs for tests: every kind of raster the tiler must handle.

Each factory writes a real GeoTIFF with rasterio into `folder` and returns its path (str). Pixels are
deterministic (seeded), textured and different between bands, so fingerprints and stretches mean
something. Import as `from tests.core import rasters` (or `from . import rasters` inside tests/core).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Optional, Sequence

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine, from_origin

UTM33 = "EPSG:32633"


def pattern(count: int, height: int, width: int, dtype: str = "uint8", seed: int = 0) -> np.ndarray:
    """Textured (count, H, W) pixels: a per-band gradient, a bright square, seeded noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    out = np.empty((count, height, width), dtype=np.float64)
    for b in range(count):
        g = (xx / max(width - 1, 1)) * (0.3 + 0.1 * b) + (yy / max(height - 1, 1)) * (0.5 - 0.1 * b)
        out[b] = 0.15 + 0.5 * g + 0.05 * rng.standard_normal((height, width))
    out[:, height // 4: height // 2, width // 4: width // 2] += 0.3
    out = np.clip(out, 0.0, 1.0)
    if np.dtype(dtype).kind == "f":
        return (out * 0.4).astype(dtype)  # reflectance-like
    hi = 255 if dtype == "uint8" else 10000
    return np.round(out * hi).astype(dtype)


def write_raster(
    path: str,
    data: np.ndarray,
    transform: Optional[Affine] = None,
    crs: Optional[str] = UTM33,
    nodata: Optional[float] = None,
    mask: Optional[np.ndarray] = None,
    descriptions: Optional[Sequence[str]] = None,
    overviews: Sequence[int] = (),
    **profile: Any,
) -> str:
    """Write (count, H, W) `data` as a GeoTIFF; `mask` (H, W) bool True=valid becomes an internal mask."""
    count, height, width = data.shape
    prof: dict[str, Any] = {
        "driver": "GTiff", "width": width, "height": height, "count": count, "dtype": str(data.dtype),
        "transform": transform if transform is not None else from_origin(500000.0, 4650000.0, 10.0, 10.0),
    }
    if crs is not None:
        prof["crs"] = crs
    if nodata is not None:
        prof["nodata"] = nodata
    prof.update(profile)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the no-CRS case is on purpose
        _write(path, data, prof, mask, descriptions)
    if overviews:
        from rasterio.enums import Resampling

        with rasterio.open(path, "r+") as ds:
            ds.build_overviews(list(overviews), Resampling.average)
    return path


def _write(path: str, data: np.ndarray, prof: dict[str, Any], mask: Optional[np.ndarray],
           descriptions: Optional[Sequence[str]]) -> None:
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **prof) as ds:
        ds.write(data)
        if mask is not None:
            ds.write_mask(np.where(mask, 255, 0).astype(np.uint8))
        if descriptions:
            for i, d in enumerate(descriptions, start=1):
                ds.set_band_description(i, d)


def north_up(folder: str, name: str = "north_up.tif", width: int = 300, height: int = 200, count: int = 3,
             dtype: str = "uint8", seed: int = 0, **kw: Any) -> str:
    """Plain UTM 33N, 10 m pixels, 3 bands uint8."""
    return write_raster(os.path.join(folder, name), pattern(count, height, width, dtype, seed), **kw)


def rotated(folder: str, angle_deg: float = 30.0, width: int = 256, height: int = 192) -> str:
    """A geotransform rotated by `angle_deg` (b and d non-zero), 2 m pixels."""
    t = Affine.translation(400000.0, 5000000.0) @ Affine.rotation(angle_deg) @ Affine.scale(2.0, -2.0)
    return write_raster(os.path.join(folder, "rotated.tif"), pattern(3, height, width, seed=1), transform=t)


def geographic(folder: str, width: int = 240, height: int = 180) -> str:
    """EPSG:4326, 0.0001 degree pixels."""
    t = from_origin(11.0, 46.5, 0.0001, 0.0001)
    return write_raster(os.path.join(folder, "wgs84.tif"), pattern(3, height, width, seed=2), transform=t, crs="EPSG:4326")


def no_crs(folder: str, width: int = 200, height: int = 150) -> str:
    """No CRS and no geotransform (a scanned photo, a screenshot)."""
    return write_raster(os.path.join(folder, "no_crs.tif"), pattern(3, height, width, seed=3),
                        transform=Affine.identity(), crs=None)


def uint16(folder: str, width: int = 260, height: int = 210, count: int = 4) -> str:
    """16-bit reflectance-like (0..10000) with 4 bands (R, G, B, NIR) and band names."""
    return write_raster(os.path.join(folder, "uint16.tif"), pattern(count, height, width, "uint16", seed=4),
                        descriptions=["red", "green", "blue", "nir"][:count])


def float_nan(folder: str, width: int = 200, height: int = 200) -> str:
    """float32 with a NaN block covering the left 60 % of the raster (no nodata value set)."""
    data = pattern(3, height, width, "float32", seed=5)
    data[:, :, : int(width * 0.6)] = np.nan
    return write_raster(os.path.join(folder, "float_nan.tif"), data)


def nodata_only(folder: str, width: int = 128, height: int = 128) -> str:
    """Every pixel equals the nodata value."""
    data = np.zeros((3, height, width), np.uint16)
    return write_raster(os.path.join(folder, "nodata_only.tif"), data, nodata=0)


def one_band(folder: str, width: int = 180, height: int = 140) -> str:
    """Single band (gray) uint16."""
    return write_raster(os.path.join(folder, "one_band.tif"), pattern(1, height, width, "uint16", seed=6))


def with_nodata(folder: str, width: int = 200, height: int = 200, nodata: float = 65535) -> str:
    """uint16 with nodata=65535 on the bottom 70 % (rows) and a few scattered pixels."""
    data = pattern(3, height, width, "uint16", seed=7)
    data[:, int(height * 0.3):, :] = nodata
    data[:, 5, 5] = nodata
    return write_raster(os.path.join(folder, "with_nodata.tif"), data, nodata=nodata)


def with_mask(folder: str, width: int = 200, height: int = 200) -> str:
    """uint8 with an internal per-dataset mask: a valid disc in the middle (like a clipped image)."""
    yy, xx = np.mgrid[0:height, 0:width]
    r = min(width, height) * 0.35
    mask = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 <= r * r
    return write_raster(os.path.join(folder, "with_mask.tif"), pattern(3, height, width, seed=8), mask=mask,
                        tiled=True, blockxsize=64, blockysize=64)


def tiled_with_overviews(folder: str, width: int = 1024, height: int = 768) -> str:
    """A tiled, compressed uint16 GeoTIFF with internal overviews 2, 4, 8 (a COG-like layout)."""
    return write_raster(os.path.join(folder, "overviews.tif"), pattern(3, height, width, "uint16", seed=9),
                        tiled=True, blockxsize=256, blockysize=256, compress="deflate", overviews=(2, 4, 8))


def rotation_angle(transform: Sequence[float]) -> float:
    """Angle (degrees) of the first pixel axis, for checks."""
    a, _b, _c, d = transform[:4]
    return math.degrees(math.atan2(d, a))


def blocky(folder: Any, name: str = "blocky.tif") -> str:
    """1024 x 1024 deflate GeoTIFF in 64 px blocks (block (1, 1) is outside the fingerprint sample)."""
    return write_raster(os.path.join(str(folder), name), pattern(3, 1024, 1024, seed=5), tiled=True,
                        blockxsize=64, blockysize=64, compress="deflate")


def corrupt_block(path: str, bx: int, by: int) -> None:
    """Overwrite the compressed bytes of tile block (bx, by) with garbage (the header stays valid)."""
    with rasterio.open(path) as ds:
        off = int(ds.get_tag_item(f"BLOCK_OFFSET_{bx}_{by}", "TIFF", bidx=1))
        size = int(ds.get_tag_item(f"BLOCK_SIZE_{bx}_{by}", "TIFF", bidx=1))
    with open(path, "r+b") as fh:
        fh.seek(off + 2)
        fh.write(b"\xff" * (size - 4))


def holed(folder: Any, name: str = "holed.tif", size: int = 512, corrupt: bool = True) -> str:
    """uint8, deflate, 32 px blocks; nodata 0 in the top 128 rows (the first row of 128 px tiles is
    empty) and block (2, 6) corrupt (pixels 64..95 x 192..223: the 128 px tile at column 0, row 1
    cannot be read). The fingerprint sample skips block column 2, so the raster opens."""
    data = np.maximum(pattern(3, size, size, seed=11), 1)
    data[:, :128, :] = 0
    path = write_raster(os.path.join(str(folder), name), data, nodata=0, tiled=True, blockxsize=32, blockysize=32,
                        compress="deflate")
    if corrupt:
        corrupt_block(path, 2, 6)
    return path
