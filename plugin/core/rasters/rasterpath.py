"""Raster paths: local files, URLs and GDAL virtual paths (`/vsicurl/`, `/vsis3/`, ...).

A remote raster (a cloud-optimised GeoTIFF over HTTP(S) or S3) is what a cluster reads from shared
storage and what QGIS users load every day, so it must pass through every entry point untouched:
no `abspath` (which turned `https://host/a.tif` into `<cwd>/https:/host/a.tif`), no `os.path.exists`
(which called every URL missing). A remote raster is present unless opening it fails; its raster id
is content-based, so the same file served locally and over HTTP is the same raster.
No numpy, no rasterio: the plugin and the CLI import this at start-up.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

__all__ = ["is_remote", "normalize_raster_path", "raster_present", "raster_display_name"]


def is_remote(path: str) -> bool:
    """A URL (`scheme://...`) or a GDAL virtual file system path (`/vsi...`): not a local file name."""
    p = str(path).strip()
    return "://" in p or p.startswith("/vsi")


def normalize_raster_path(path: str) -> str:
    """Local paths become absolute (`~` expanded); URLs and /vsi paths are kept exactly as given."""
    p = str(path).strip()
    if not p or is_remote(p):
        return p
    return os.path.abspath(os.path.expanduser(p))


def raster_present(path: str) -> bool:
    """Whether the raster can be expected to open: local files must exist, remote ones are assumed
    present (asking a server here would make `info` and the dock's status line wait on the network)."""
    if not path:
        return False
    return True if is_remote(path) else os.path.exists(path)


def raster_display_name(path: str) -> str:
    """File name without extension, for URLs too (`https://h/dir/a.tif?sig=...` -> `a`)."""
    p = str(path).strip()
    if "://" in p:
        p = urlsplit(p.split("://", 1)[1] if p.startswith("/vsi") else p).path
    return os.path.splitext(os.path.basename(p.rstrip("/")))[0]
