"""Opening rasters: what the tiler needs to know about a file, gathered once.

`open_raster` turns a path into a frozen, JSON-able `RasterInfo` (dimensions, CRS, transform, band
map, nodata, one percentile stretch for the whole raster and a content fingerprint). Only small
reads happen here -- a few full-resolution windows for the fingerprint and one overview/decimated
or sampled read for the stretch -- so opening a 40k x 40k raster costs milliseconds, not minutes.
Pixel access lives in `tiling.py` (shared read helpers in `raster_io.py`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np

from ..errors import RasterError
from ..types import BandMap
from .raster_io import gdal_error_line, sample_stretch_pixels
from .rasterpath import is_remote, normalize_raster_path, raster_display_name
from .vrt import build_band_vrt, sentinel2_vrt

__all__ = ["RasterInfo", "open_raster", "build_band_vrt", "sentinel2_vrt", "guess_band_map", "STRETCH_PERCENTILES"]

#: Percentiles of the raster-wide stretch (QGIS' default cumulative count cut).
STRETCH_PERCENTILES = (2.0, 98.0)
#: Full-resolution windows (grid x grid, side px) hashed into the fingerprint: a few blocks, any raster size.
_FP_GRID, _FP_SIDE = 5, 16


@dataclass(frozen=True)
class RasterInfo:
    """Everything the tiler and the index need to know about one raster, as plain values."""

    path: str
    raster_id: str
    name: str
    width: int
    height: int
    count: int
    dtype: str
    #: None -> the raster has no CRS: it still indexes, footprints are in pixel coordinates.
    crs_wkt: Optional[str]
    #: Affine a, b, c, d, e, f in rasterio order: x = a*col + b*row + c, y = d*col + e*row + f.
    transform: tuple[float, float, float, float, float, float]
    band_map: BandMap
    nodata: Optional[float]
    #: (lo, hi) in raw units per mapped channel R, G, B[, NIR]; lo -> 0, hi -> 255.
    stretch: tuple[tuple[float, float], ...]
    #: Ground units (CRS units) per full-resolution pixel; None without CRS.
    pixel_size: Optional[float]

    @property
    def has_crs(self) -> bool:
        return self.crs_wkt is not None

    @property
    def is_rotated(self) -> bool:
        return self.transform[1] != 0.0 or self.transform[3] != 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["band_map"] = asdict(self.band_map)
        d["transform"] = list(self.transform)
        d["stretch"] = [list(s) for s in self.stretch]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RasterInfo:
        bm = d["band_map"]
        band_map = BandMap.parse(bm) if isinstance(bm, str) else BandMap(**bm)
        return cls(
            path=str(d["path"]),
            raster_id=str(d["raster_id"]),
            name=str(d.get("name") or os.path.basename(str(d["path"]))),
            width=int(d["width"]),
            height=int(d["height"]),
            count=int(d["count"]),
            dtype=str(d["dtype"]),
            crs_wkt=d.get("crs_wkt"),
            transform=tuple(float(v) for v in d["transform"])[:6],  # type: ignore[arg-type]
            band_map=band_map,
            nodata=None if d.get("nodata") is None else float(d["nodata"]),
            stretch=tuple((float(lo), float(hi)) for lo, hi in d["stretch"]),
            pixel_size=None if d.get("pixel_size") is None else float(d["pixel_size"]),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def _open_dataset(path: str) -> Any:
    """rasterio.open with our errors: missing and unreadable files get one-line messages."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    if not path:
        raise RasterError("no raster path given")
    if not is_remote(path) and not os.path.exists(path):
        raise RasterError(f"raster not found: {path}")
    if os.path.isdir(path):
        raise RasterError(f"{path} is a folder, not a raster (a Sentinel-2 folder needs sentinel2_vrt first)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown format"
        raise RasterError(f"cannot read raster {path}: {first}") from None


_NAMES = {
    "red": ("red", "b04", "b4", "r"),
    "green": ("green", "b03", "b3", "g"),
    "blue": ("blue", "b02", "b2", "b"),
    "nir": ("nir", "b08", "b8", "near infrared", "near-infrared", "nir08"),
}


def guess_band_map(ds: Any) -> BandMap:
    """Default band map: named bands (descriptions R/G/B/NIR, Sentinel-2 B04/B03/B02/B08) or colour
    interpretation when a file says which band is which; otherwise 3+ bands -> 1,2,3 and 1-2 bands -> gray."""
    from rasterio.enums import ColorInterp

    found: dict[str, int] = {}
    for i, desc in enumerate(ds.descriptions or (), start=1):
        key = (desc or "").strip().lower()
        for role, names in _NAMES.items():
            if key in names and role not in found:
                found[role] = i
    if not all(r in found for r in ("red", "green", "blue")):
        ci = {c: i for i, c in reversed(list(enumerate(ds.colorinterp, start=1)))}
        if all(c in ci for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)):
            found.update(red=ci[ColorInterp.red], green=ci[ColorInterp.green], blue=ci[ColorInterp.blue])
    if all(r in found for r in ("red", "green", "blue")):
        return BandMap(found["red"], found["green"], found["blue"], found.get("nir"))
    return BandMap.default_for(ds.count)


def _pixel_size(transform: Any) -> float:
    """Side of a square with one pixel's area: right for rotated and (mildly) non-square pixels."""
    return math.sqrt(abs(transform.a * transform.e - transform.b * transform.d))


def _fingerprint(ds: Any, crs_key: str) -> str:
    """sha1 of what makes the content this content: size, dtypes, georeferencing and a fixed grid of
    small full-resolution windows (not overviews, so building overviews or converting to COG keeps
    the id). The path is not hashed, so a project moves or renames files without losing its index."""
    from rasterio.windows import Window

    h = hashlib.sha1()
    head = {
        "w": ds.width, "h": ds.height, "n": ds.count, "dt": list(ds.dtypes),
        "tr": [round(v, 9) for v in tuple(ds.transform)[:6]], "crs": crs_key,
    }
    h.update(json.dumps(head, sort_keys=True).encode())
    side_c, side_r = min(_FP_SIDE, ds.width), min(_FP_SIDE, ds.height)
    for gy in range(_FP_GRID):
        row = (ds.height - side_r) * gy // max(_FP_GRID - 1, 1)
        for gx in range(_FP_GRID):
            col = (ds.width - side_c) * gx // max(_FP_GRID - 1, 1)
            try:
                block = ds.read(window=Window(col, row, side_c, side_r))
            except Exception as exc:  # a truncated or corrupt file fails here, not mid-index
                raise RasterError(f"cannot read pixels of {ds.name}: {gdal_error_line(exc)}") from None
            h.update(np.ascontiguousarray(block).tobytes())
    return h.hexdigest()[:20]


def _stretch(ds: Any, band_map: BandMap, nodata: Optional[float]) -> tuple[tuple[float, float], ...]:
    """One 2-98 % stretch per mapped channel for the whole raster, so neighbouring tiles share colours.

    Byte rasters keep 0..255: they are already display-ready (aerial RGB, rendered products) and a
    per-channel stretch would shift their colour balance -- the same choice QGIS makes for byte RGB.
    """
    idx = band_map.indexes()
    if all(ds.dtypes[i - 1] == "uint8" for i in idx):
        return tuple((0.0, 255.0) for _ in idx)
    try:
        raw, valid = sample_stretch_pixels(ds, idx)
    except Exception as exc:  # a corrupt block in the sample: this raster fails alone, in one line
        raise RasterError(f"cannot read the stretch sample of {ds.name}: {gdal_error_line(exc)}") from None
    out = []
    for c in range(len(idx)):
        vals = raw[c][valid]
        if vals.size == 0:
            out.append((0.0, 1.0))  # nothing valid anywhere: every tile is skipped anyway
            continue
        lo, hi = (float(v) for v in np.percentile(vals, STRETCH_PERCENTILES))
        if not hi > lo:
            lo, hi = float(vals.min()), float(vals.max())
            if not hi > lo:
                hi = lo + 1.0
        out.append((lo, hi))
    return tuple(out)


def open_raster(path: str, band_map: Optional[BandMap] = None) -> RasterInfo:
    """Open any raster GDAL reads (GeoTIFF, COG, JP2, VRT, ...) and describe it for tiling.

    Raises RasterError for a missing or unreadable file and for a band map that asks for bands the
    raster does not have.
    """
    from rasterio.errors import NotGeoreferencedWarning

    path = str(path)
    with _open_dataset(path) as ds, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        if ds.count < 1 or ds.width < 1 or ds.height < 1:
            raise RasterError(f"{path} has no pixels ({ds.width}x{ds.height}, {ds.count} band(s))")
        bm = band_map if band_map is not None else guess_band_map(ds)
        try:
            bm.check(ds.count)
        except ValueError as exc:
            raise RasterError(f"{os.path.basename(path)}: {exc}") from None
        crs = ds.crs
        crs_wkt = crs.to_wkt() if crs else None
        crs_key = ""
        if crs:
            epsg = crs.to_epsg()
            crs_key = f"EPSG:{epsg}" if epsg else crs_wkt or ""
        nodatas = [ds.nodatavals[i - 1] for i in bm.indexes()]
        nodata = next((float(v) for v in nodatas if v is not None), None)
        transform = tuple(float(v) for v in tuple(ds.transform)[:6])
        return RasterInfo(
            path=normalize_raster_path(path),
            raster_id=_fingerprint(ds, crs_key),
            name=raster_display_name(path),
            width=int(ds.width),
            height=int(ds.height),
            count=int(ds.count),
            dtype=str(ds.dtypes[bm.red - 1]),
            crs_wkt=crs_wkt,
            transform=transform,  # type: ignore[arg-type]
            band_map=bm,
            nodata=nodata,
            stretch=_stretch(ds, bm, nodata),
            pixel_size=_pixel_size(ds.transform) if crs else None,
        )

