"""Index maintenance outside a job: remove rasters, describe what an index holds."""

from __future__ import annotations

import os
from typing import Any, Sequence

from ..errors import EngineError
from ..rasterpath import raster_present


def remove_rasters(index_dir: str, rasters: Sequence[str]) -> list[str]:
    """Remove rasters (given by path or raster id) from the index; returns the removed ids."""
    from ..store import SearchIndex

    removed: list[str] = []
    with SearchIndex.open(index_dir) as idx:
        for key in rasters:
            ids = idx.find_raster_ids(os.path.abspath(key) if os.path.exists(key) else key)
            if not ids:
                ids = idx.find_raster_ids(key)
            if not ids:
                raise EngineError(f"{key!r} is not in the index at {index_dir}")
            for rid in ids:
                idx.remove_raster(rid)
                removed.append(rid)
        idx.flush()
    return removed


def index_info(index_dir: str) -> dict[str, Any]:
    """What the index holds, for `info` and the dock's status line; never raises for a missing index."""
    from ..store import SearchIndex

    if not os.path.isdir(index_dir) or not os.path.exists(os.path.join(index_dir, "manifest.json")):
        return {"exists": False, "index_dir": index_dir, "rasters": [], "tiles": 0, "variants": 0}
    with SearchIndex.open(index_dir, readonly=True) as idx:
        stats = dict(idx.stats())
        rows = idx.raster_rows()
    for r in rows:
        r["missing"] = not raster_present(r.get("path") or "")
    stats.update({"exists": True, "index_dir": index_dir, "rasters": rows})
    return stats
