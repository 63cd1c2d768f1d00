"""Ground sizes in metres for any CRS: the geodesic length of a tile's midlines on WGS84.

`pixel_size` is in CRS units, which are degrees for EPSG:4326 (a 0.0001-degree pixel is ~11 m,
not 0.0001 m) and feet for some state planes; captions must speak metres. The tile's midlines are
mapped to longitude/latitude with GDAL's PROJ (rasterio.warp.transform) and measured on the WGS84
ellipsoid with the local radii of curvature, segment by segment: for tile-sized lines this is
within a few parts per million of the exact geodesic, with no dependency beyond rasterio.
A raster without a CRS has no ground size (None), and captions then say nothing about size.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Optional, Sequence

#: WGS84 semi-major axis (m) and first eccentricity squared.
WGS84_A = 6378137.0
WGS84_E2 = 6.69437999014e-3
#: Segments per midline (enough for tiles spanning degrees; tiles are rarely that large).
SEGMENTS = 4


def ellipsoid_distance_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Length of a short line on WGS84 from the meridional (M) and prime-vertical (N) radii at its mid-latitude."""
    phi = math.radians((lat1 + lat2) / 2.0)
    s = 1.0 - WGS84_E2 * math.sin(phi) ** 2
    m_radius = WGS84_A * (1.0 - WGS84_E2) / s**1.5
    n_radius = WGS84_A / math.sqrt(s)
    dlon = (lon2 - lon1 + 180.0) % 360.0 - 180.0  # across the antimeridian the short way
    dy = m_radius * math.radians(lat2 - lat1)
    dx = n_radius * math.cos(phi) * math.radians(dlon)
    return math.hypot(dx, dy)


def polyline_m(lons: Sequence[float], lats: Sequence[float]) -> float:
    return sum(ellipsoid_distance_m(lons[i], lats[i], lons[i + 1], lats[i + 1]) for i in range(len(lons) - 1))


@lru_cache(maxsize=16)
def _crs(wkt: str) -> Any:
    from rasterio.crs import CRS

    return CRS.from_wkt(wkt)


def window_ground_size_m(
    crs_wkt: Optional[str], transform: Sequence[float], col_off: float, row_off: float, width: float, height: float,
) -> Optional[tuple[float, float]]:
    """(width, height) in metres of a pixel window: geodesic lengths of its horizontal and vertical
    midlines. None without a CRS or when the window cannot be mapped to longitude/latitude."""
    return windows_ground_size_m(crs_wkt, transform, [(col_off, row_off, width, height)])[0]


def windows_ground_size_m(
    crs_wkt: Optional[str], transform: Sequence[float], windows: Sequence[tuple[float, float, float, float]],
) -> list[Optional[tuple[float, float]]]:
    """`window_ground_size_m` of many (col_off, row_off, width, height) windows with one PROJ call
    (the call, not the arithmetic, is most of the cost of one window)."""
    if not crs_wkt or not windows:
        return [None] * len(windows)
    from rasterio.warp import transform as warp

    a, b, c, d, e, f = (float(v) for v in transform[:6])
    steps = [i / SEGMENTS for i in range(SEGMENTS + 1)]
    n = len(steps)
    xs: list[float] = []
    ys: list[float] = []
    for col_off, row_off, width, height in windows:
        cols = [col_off + width * t for t in steps] + [col_off + width / 2.0] * n
        rows = [row_off + height / 2.0] * n + [row_off + height * t for t in steps]
        xs += [a * cc + b * rr + c for cc, rr in zip(cols, rows)]
        ys += [d * cc + e * rr + f for cc, rr in zip(cols, rows)]
    try:
        lons, lats = warp(_crs(crs_wkt), "EPSG:4326", xs, ys)
    except Exception:  # noqa: BLE001 - an exotic CRS PROJ cannot invert: no size rather than a wrong one
        if len(windows) > 1:  # one window PROJ cannot map must not cost the others their size
            return [windows_ground_size_m(crs_wkt, transform, [w])[0] for w in windows]
        return [None]
    out: list[Optional[tuple[float, float]]] = []
    for i in range(len(windows)):
        lo, la = lons[2 * n * i: 2 * n * (i + 1)], lats[2 * n * i: 2 * n * (i + 1)]
        if not all(math.isfinite(v) for v in list(lo) + list(la)):
            out.append(None)
        else:
            out.append((polyline_m(lo[:n], la[:n]), polyline_m(lo[n:], la[n:])))
    return out


def pixel_m(size: Optional[tuple[float, float]], out_shape: tuple[int, int]) -> Optional[float]:
    """Ground size of one output pixel from a window's (width, height) in metres resampled to `out_shape`."""
    if size is None or not size[0] > 0 or not size[1] > 0:
        return None
    return math.sqrt((size[0] / max(out_shape[1], 1)) * (size[1] / max(out_shape[0], 1)))


def window_pixel_m(
    crs_wkt: Optional[str], transform: Sequence[float], col_off: float, row_off: float, width: float, height: float,
    out_shape: tuple[int, int],
) -> Optional[float]:
    """Ground size in metres of one output pixel when the window is resampled to `out_shape` (rows, cols):
    the side of a square with the same ground area."""
    return pixel_m(window_ground_size_m(crs_wkt, transform, col_off, row_off, width, height), out_shape)
