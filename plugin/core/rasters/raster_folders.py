"""Folders given as rasters: the rasters in them (recursively), and Sentinel-2 products recognised as such.

A folder used to be taken for a Sentinel-2 product whatever it held ("no B04 band file" for a
folder of GeoTIFFs). Now a folder is walked: a Sentinel-2 product (a `*.SAFE` folder, an
`IMG_DATA` folder, or a folder holding the B02, B03 and B04 band files) becomes one source (a
band-stacking VRT, built by the caller); every other file with a raster extension is a source of
its own. Hidden folders, the index folder itself and GDAL side files (.aux.xml, .ovr) are skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Optional

from ..errors import RasterError

#: File name endings taken for rasters when a folder is walked (case-insensitive).
RASTER_EXTENSIONS = (".tif", ".tiff", ".jp2", ".j2k", ".vrt", ".img")
#: A folder with these three band files is one Sentinel-2 product (B08 is used as NIR when present).
S2_RGB = ("B04", "B03", "B02")


@dataclass(frozen=True)
class FolderItem:
    kind: str  # "file" | "sentinel2"
    path: str


def _s2_bands_here(files: Iterable[str]) -> set[str]:
    from .vrt import S2_FILE

    out = set()
    for fn in files:
        m = S2_FILE.search(fn)
        if m:
            out.add(m.group(1).upper())
    return out


def is_sentinel2_product(folder: str) -> bool:
    """True for a `.SAFE` folder, an `IMG_DATA` folder, or a folder that holds B02, B03 and B04."""
    name = os.path.basename(os.path.normpath(folder))
    if name.upper().endswith(".SAFE") or name.upper() == "IMG_DATA":
        return True
    try:
        files = [f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f))]
    except OSError:
        return False
    return set(S2_RGB) <= _s2_bands_here(files)


def scan_folder(folder: str, exclude: Iterable[str] = ()) -> list[FolderItem]:
    """Sentinel-2 products and raster files under `folder`, in a stable (sorted) order.

    Raises RasterError with one line when the folder holds no raster at all."""
    root = os.path.abspath(folder)
    if not os.path.isdir(root):
        raise RasterError(f"folder not found: {folder}")
    skip = {os.path.abspath(p) for p in exclude}
    if is_sentinel2_product(root):
        return [FolderItem("sentinel2", root)]
    out: list[FolderItem] = []
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and os.path.join(here, d) not in skip)
        for d in list(dirs):
            sub = os.path.join(here, d)
            if is_sentinel2_product(sub):
                out.append(FolderItem("sentinel2", sub))
                dirs.remove(d)
        for fn in sorted(files):
            low = fn.lower()
            if fn.startswith(".") or not low.endswith(RASTER_EXTENSIONS):
                continue
            out.append(FolderItem("file", os.path.join(here, fn)))
    if not out:
        exts = ", ".join(f"*{e}" for e in RASTER_EXTENSIONS)
        raise RasterError(f"no rasters ({exts}) and no Sentinel-2 product in folder {folder}")
    return out


def sentinel2_bands_present(folder: str) -> tuple[str, ...]:
    """The band names to stack for a product: R, G, B and NIR (B08) when the product has it."""
    from .vrt import find_sentinel2_bands

    try:
        find_sentinel2_bands(folder, ("B08",))
        return (*S2_RGB, "B08")
    except RasterError:
        return S2_RGB


def vrt_name(folder: str, taken: Optional[set[str]] = None) -> str:
    """A file name for the product's VRT: the product folder's name (a SAFE's, not IMG_DATA),
    made unique within `taken`."""
    parts = os.path.normpath(folder).split(os.sep)
    name = next((p for p in reversed(parts) if p.upper().endswith(".SAFE")), parts[-1] or "sentinel2")
    if name.upper() == "IMG_DATA" and len(parts) > 2:
        name = parts[-2]
    base, n = name, 1
    while taken is not None and f"{name}.vrt" in taken:
        n += 1
        name = f"{base}-{n}"
    if taken is not None:
        taken.add(f"{name}.vrt")
    return f"{name}.vrt"


def expand_sources(paths: Iterable[str], index_dir: str, bands: Optional[object] = None) -> tuple[list, list[str]]:
    """RasterSources for the CLI's arguments: files (and URLs) as given, folders walked; a
    Sentinel-2 product becomes a VRT in `<index>/vrt/`. Returns (sources, files written) so a
    caller whose job fails before the index exists can remove what it wrote."""
    from ..types import BandMap, RasterSource
    from .rasterpath import raster_present
    from .vrt import sentinel2_vrt

    out: list[RasterSource] = []
    written: list[str] = []
    taken: set[str] = set()
    vrt_dir = os.path.join(index_dir, "vrt")
    for p in paths:
        if not os.path.isdir(p):
            if not raster_present(p):
                raise RasterError(f"raster not found: {p}")
            out.append(RasterSource(p, bands))  # type: ignore[arg-type]
            continue
        for item in scan_folder(p, exclude=[index_dir]):
            if item.kind == "file":
                out.append(RasterSource(item.path, bands))  # type: ignore[arg-type]
                continue
            names = sentinel2_bands_present(item.path)
            target = os.path.join(vrt_dir, vrt_name(item.path, taken))
            os.makedirs(vrt_dir, exist_ok=True)
            try:
                sentinel2_vrt(item.path, target, bands=names)
            except BaseException:
                remove_written(written + [target], index_dir)
                raise
            written.append(target)
            band_map = bands or BandMap(1, 2, 3, 4 if len(names) == 4 else None)
            out.append(RasterSource(target, band_map, os.path.splitext(os.path.basename(target))[0]))  # type: ignore[arg-type]
    return out, written


def remove_written(files: Iterable[str], index_dir: str) -> None:
    """Remove VRTs this run wrote, then `<index>/vrt/` if that left it empty."""
    for f in files:
        try:
            os.remove(f)
        except OSError:
            pass
    try:
        os.rmdir(os.path.join(index_dir, "vrt"))
    except OSError:
        pass
