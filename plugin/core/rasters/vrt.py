"""Band-stacking VRTs written by the engine (what `gdalbuildvrt -separate` does, without the CLI).

A Sentinel-2 product is one file per band; a VRT stacks the bands we map into one virtual raster
without copying pixels. Sources inside the VRT's folder are referenced relative to it, so a folder holding
the VRT and the band files can move as a whole; sources elsewhere keep absolute paths.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Optional, Sequence
from xml.sax.saxutils import escape

from ..errors import RasterError

_GDAL_TYPES = {
    "uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
    "int32": "Int32", "uint64": "UInt64", "int64": "Int64", "float32": "Float32", "float64": "Float64",
}
S2_FILE = re.compile(r"(?:^|_)(B\d{2}|B8A)(?:_(\d+)m)?\.(?:jp2|tif|tiff)$", re.IGNORECASE)


def _describe(path: str) -> dict[str, Any]:
    import rasterio
    from rasterio.errors import RasterioIOError

    if not os.path.exists(path):
        raise RasterError(f"band file not found: {path}")
    try:
        with rasterio.open(path) as ds:
            t = ds.transform
            if t.b != 0 or t.d != 0:
                raise RasterError(f"{path}: rotated band files cannot be stacked into a VRT")
            return {
                "path": os.path.abspath(path), "width": ds.width, "height": ds.height, "crs": ds.crs,
                "dtype": ds.dtypes[0], "nodata": ds.nodatavals[0], "xres": abs(t.a), "yres": abs(t.e),
                "left": t.c if t.a > 0 else t.c + t.a * ds.width, "top": t.f if t.e < 0 else t.f + t.e * ds.height,
                "block": ds.block_shapes[0],
            }
    except RasterioIOError as exc:
        raise RasterError(f"cannot read band file {path}: {str(exc).splitlines()[0]}") from None


def _source_name(src: str, out_dir: str) -> tuple[str, int]:
    if src.startswith("/vsi"):
        return src, 0
    try:
        rel = os.path.relpath(src, out_dir)
    except ValueError:  # another drive on Windows
        return src, 0
    if rel.split(os.sep)[0] == os.pardir:
        return src, 0  # outside the VRT's folder: absolute survives moving the VRT alone
    return rel.replace(os.sep, "/"), 1


def build_band_vrt(
    band_paths: Sequence[str],
    out_path: str,
    resolution: str = "highest",
    nodata: Optional[float] = None,
    descriptions: Optional[Sequence[str]] = None,
) -> str:
    """Stack band 1 of each file into a VRT, one band per file in the given order; returns out_path.

    Files must share a CRS and be north-up; their union extent is used. `resolution` is "highest",
    "lowest" or "average" (as gdalbuildvrt); coarser bands are resampled on read. `nodata` sets
    the VRT bands' nodata (e.g. 0 for Sentinel-2 L1C/L2A); otherwise each file's own nodata is kept.
    """
    if not band_paths:
        raise RasterError("no band files to stack")
    if resolution not in ("highest", "lowest", "average"):
        raise RasterError(f"resolution {resolution!r}: expected highest, lowest or average")
    srcs = [_describe(str(p)) for p in band_paths]
    crs0 = srcs[0]["crs"]
    for s in srcs[1:]:
        if s["crs"] != crs0:
            raise RasterError(f"band files have different CRS: {srcs[0]['path']} vs {s['path']}")
    def pick(values: list[float]) -> float:
        if resolution == "highest":
            return float(min(values))
        if resolution == "lowest":
            return float(max(values))
        return float(sum(values) / len(values))

    xres = pick([s["xres"] for s in srcs])
    yres = pick([s["yres"] for s in srcs])
    left = min(s["left"] for s in srcs)
    top = max(s["top"] for s in srcs)
    right = max(s["left"] + s["xres"] * s["width"] for s in srcs)
    bottom = min(s["top"] - s["yres"] * s["height"] for s in srcs)
    width = max(1, int(math.ceil((right - left) / xres - 1e-6)))
    height = max(1, int(math.ceil((top - bottom) / yres - 1e-6)))
    out_path = os.path.abspath(out_path)
    out_dir = os.path.dirname(out_path)
    os.makedirs(out_dir, exist_ok=True)
    lines = [f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">']
    if crs0:
        lines.append(f'  <SRS dataAxisToSRSAxisMapping="1,2">{escape(crs0.to_wkt())}</SRS>')
    lines.append(f"  <GeoTransform>{left!r}, {xres!r}, 0.0, {top!r}, 0.0, {-yres!r}</GeoTransform>")
    for i, s in enumerate(srcs, start=1):
        gtype = _GDAL_TYPES.get(s["dtype"])
        if gtype is None:
            raise RasterError(f"{s['path']}: data type {s['dtype']} cannot go into a VRT")
        band_nd = nodata if nodata is not None else s["nodata"]
        name, rel = _source_name(s["path"], out_dir)
        dx, dy = (s["left"] - left) / xres, (top - s["top"]) / yres
        dw, dh = s["width"] * s["xres"] / xres, s["height"] * s["yres"] / yres
        lines.append(f'  <VRTRasterBand dataType="{gtype}" band="{i}">')
        if descriptions is not None and i <= len(descriptions):
            lines.append(f"    <Description>{escape(str(descriptions[i - 1]))}</Description>")
        if band_nd is not None:
            lines.append(f"    <NoDataValue>{band_nd!r}</NoDataValue>")
        lines.append("    <ComplexSource>")
        lines.append(f'      <SourceFilename relativeToVRT="{rel}">{escape(name)}</SourceFilename>')
        lines.append("      <SourceBand>1</SourceBand>")
        by, bx = s["block"]
        lines.append(
            f'      <SourceProperties RasterXSize="{s["width"]}" RasterYSize="{s["height"]}" '
            f'DataType="{gtype}" BlockXSize="{bx}" BlockYSize="{by}"/>'
        )
        lines.append(f'      <SrcRect xOff="0" yOff="0" xSize="{s["width"]}" ySize="{s["height"]}"/>')
        lines.append(f'      <DstRect xOff="{dx!r}" yOff="{dy!r}" xSize="{dw!r}" ySize="{dh!r}"/>')
        src_nd = s["nodata"] if s["nodata"] is not None else nodata
        if src_nd is not None:
            lines.append(f"      <NODATA>{src_nd!r}</NODATA>")
        lines.append("    </ComplexSource>")
        lines.append("  </VRTRasterBand>")
    lines.append("</VRTDataset>")
    tmp = out_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, out_path)
    return out_path


def find_sentinel2_bands(folder: str, bands: Sequence[str]) -> list[str]:
    """Band files of one Sentinel-2 product: `*_B04.jp2` in the folder, or in a SAFE's
    GRANULE/*/IMG_DATA (L2A: IMG_DATA/R10m/*_B04_10m.jp2, finest resolution preferred)."""
    if not os.path.isdir(folder):
        raise RasterError(f"Sentinel-2 folder not found: {folder}")
    found: dict[str, list[tuple[int, str]]] = {}
    for root, _dirs, files in os.walk(folder):
        for fn in files:
            m = S2_FILE.search(fn)
            if m:
                found.setdefault(m.group(1).upper(), []).append((int(m.group(2) or 0), os.path.join(root, fn)))
    out = []
    for band in bands:
        cands = sorted(found.get(band.upper(), []))
        if not cands:
            raise RasterError(f"no {band} band file (*_{band}.jp2) in {folder}")
        best = [c for c in cands if c[0] == cands[0][0]]
        if len({os.path.dirname(p) for _, p in best}) > 1:
            raise RasterError(f"{folder} holds several Sentinel-2 granules ({band} found {len(best)} times): pick one")
        out.append(best[0][1])
    return out


def sentinel2_vrt(folder: str, out_path: str, bands: Sequence[str] = ("B04", "B03", "B02", "B08")) -> str:
    """A VRT of one Sentinel-2 product's bands in the given order (default R, G, B, NIR = band map
    1,2,3,4) at the finest resolution, with nodata 0 (the product's NODATA value) and band names
    as descriptions; returns out_path."""
    paths = find_sentinel2_bands(folder, bands)
    return build_band_vrt(paths, out_path, "highest", nodata=0, descriptions=[b.upper() for b in bands])
