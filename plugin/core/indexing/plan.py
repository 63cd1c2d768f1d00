"""Planning: resolve the sources, open every raster and plan its tiles before any model is loaded."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from ..errors import EngineError, PlanTooLargeError
from ..rasters.rasterpath import normalize_raster_path
from ..report_lines import MAX_TILES  # the limit lives where the dock reads it without numpy
from ..types import BandMap, RasterSource, TileRef


def resolve_sources(sources: Sequence[RasterSource]) -> list[RasterSource]:
    out = []
    for s in sources:
        p = normalize_raster_path(s.path)  # URLs and /vsi paths pass through untouched
        out.append(RasterSource(p, s.band_map, s.name))
    return out




def open_all(sources, params, report, open_raster, plan_tiles,
              max_tiles: Optional[int] = MAX_TILES) -> tuple[list[tuple[Any, list[TileRef]]], set[str]]:
    """Open and plan each raster; failures go into the report (one line each) instead of stopping the job.
    A plan past `max_tiles` stops the whole job before anything is planned or stored."""
    from ..rasters.tiling import count_tiles

    opened, failed = [], set()
    for src in sources:
        try:
            info = open_raster(src.path, src.band_map)
            if src.name:
                info = _with_name(info, src.name)
            n = count_tiles(info, params)
            if max_tiles is not None and n > max_tiles:
                raise PlanTooLargeError(too_many_tiles(info, params, n, max_tiles))
            opened.append((info, plan_tiles(info, params)))
        except PlanTooLargeError:
            raise
        except EngineError as exc:
            report.rasters.append({"path": src.path, "name": src.name or os.path.basename(src.path), "error": str(exc)})
            failed.add(src.path)
    return opened, failed


def previous_embedder(index_dir: str) -> Optional[str]:
    """The embedder fingerprint an existing index was built with (None for a new index)."""
    from ..store.store import SearchIndex

    if not os.path.exists(os.path.join(index_dir, "index.sqlite")):
        return None
    with SearchIndex.open(index_dir, readonly=True) as idx:
        return str(idx.embedder_fingerprint)


def row_band_map(row: dict[str, Any]) -> Optional[BandMap]:
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


def too_many_tiles(info: Any, params: Any, n: int, limit: int) -> str:
    """The refusal: the count, a setting that fits, and how to insist."""
    from dataclasses import replace

    from ..rasters.tiling import count_tiles, tile_side_px

    side = tile_side_px(info, params)
    hint = ""
    for size in (256, 512, 1024, 2048, 4096, 8192):
        if size <= side and params.overlap <= 0.5:
            continue
        alt = replace(params, tile_size=size, tile_size_units=None, overlap=min(params.overlap, 0.25))
        m = count_tiles(info, alt)
        if m <= limit:
            hint = f"; e.g. tile size {size} px with overlap {alt.overlap:g} plans {m:,}"
            break
    return (f"{info.name}: tile size {side} px with overlap {params.overlap:g} and scales "
            f"{','.join(map(str, params.scales))} plans {n:,} tiles on {info.width} x {info.height} px, more than the limit of"
            f" {limit:,}{hint}; nothing was changed (use --force, or force=True, to index it anyway)")
