"""Planning: resolve the sources, open every raster and plan its tiles before any model is loaded."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from ..errors import EngineError
from ..rasterpath import normalize_raster_path
from ..types import BandMap, RasterSource, TileRef


def _resolve_sources(sources: Sequence[RasterSource]) -> list[RasterSource]:
    out = []
    for s in sources:
        p = normalize_raster_path(s.path)  # URLs and /vsi paths pass through untouched
        out.append(RasterSource(p, s.band_map, s.name))
    return out


def _open_all(sources, params, report, open_raster, plan_tiles) -> tuple[list[tuple[Any, list[TileRef]]], set[str]]:
    """Open and plan each raster; failures go into the report (one line each) instead of stopping the job."""
    opened, failed = [], set()
    for src in sources:
        try:
            info = open_raster(src.path, src.band_map)
            if src.name:
                info = _with_name(info, src.name)
            opened.append((info, plan_tiles(info, params)))
        except EngineError as exc:
            report.rasters.append({"path": src.path, "name": src.name or os.path.basename(src.path), "error": str(exc)})
            failed.add(src.path)
    return opened, failed


def _previous_embedder(index_dir: str) -> Optional[str]:
    """The embedder fingerprint an existing index was built with (None for a new index)."""
    from ..store import SearchIndex

    if not os.path.exists(os.path.join(index_dir, "manifest.json")):
        return None
    with SearchIndex.open(index_dir, readonly=True) as idx:
        return str(idx.embedder_fingerprint)


def _row_band_map(row: dict[str, Any]) -> Optional[BandMap]:
    bm = row.get("band_map") or (row.get("info") or {}).get("band_map")
    if isinstance(bm, dict):
        return BandMap(**bm)
    if isinstance(bm, (list, tuple)):
        return BandMap(*bm)
    return BandMap.parse(bm) if bm else None


def _with_name(info: Any, name: str) -> Any:
    from dataclasses import replace

    try:
        return replace(info, name=name)
    except TypeError:
        return info
