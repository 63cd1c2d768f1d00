"""Index maintenance outside a job: remove rasters, describe, check, prune, repair, preview."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from ..errors import EngineError, IndexMissingError
from ..rasters.rasterpath import raster_present
from ..store.store_schema import db_errors


def remove_rasters(index_dir: str, rasters: Sequence[str], wait_s: float = 0.0) -> list[str]:
    """Remove rasters (given by path or raster id) from the index; returns the removed ids."""
    from ..store.store import SearchIndex

    removed: list[str] = []
    with db_errors(index_dir), SearchIndex.open(index_dir, wait_s=wait_s) as idx:
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


def _exists(index_dir: str) -> bool:
    return os.path.isdir(index_dir) and os.path.exists(os.path.join(index_dir, "index.sqlite"))


def index_info(index_dir: str, check: bool = False) -> dict[str, Any]:
    """What the index holds, for `info` and the dock's status line; never raises for a missing index.

    Opens read-only (works on read-only media and beside a running job). `check` adds the full
    health check (`store_check.check_index`: SQLite integrity, every vector, the hnsw file)."""
    from ..store.store import SearchIndex
    from ..store.store_schema import read_manifest
    from .document_graph import index_graph

    if not _exists(index_dir):
        return {"exists": False, "index_dir": index_dir, "rasters": [], "tiles": 0, "variants": 0}
    try:
        with db_errors(index_dir), SearchIndex.open(index_dir, readonly=True) as idx:
            stats = dict(idx.stats())
            rows = idx.raster_rows()
            graph = index_graph(idx.conn)
    except IndexMissingError:  # a first job is creating it right now
        return {"exists": False, "index_dir": index_dir, "rasters": [], "tiles": 0, "variants": 0}
    for r in rows:
        r["missing"] = not raster_present(r.get("path") or "")
    stats.update({"exists": True, "index_dir": index_dir, "rasters": rows, "document_graph": graph})
    problem = read_manifest(index_dir)[1]
    stats["notes"] = [f"{problem}; the database is intact and the next update rewrites it"] if problem else []
    if check:
        from ..store.store_check import check_index

        stats["check"] = check_index(index_dir)
    return stats


def prune_index_dir(index_dir: str, dry_run: bool = False, wait_s: float = 0.0) -> dict[str, int]:
    """Delete the caption cache of tilings and captioners no longer current (says what it frees)."""
    from ..store.store import SearchIndex
    from ..store.store_check import prune_index

    if not _exists(index_dir):
        raise EngineError(f"no search index at {index_dir}")
    with db_errors(index_dir), SearchIndex.open(index_dir, readonly=dry_run, wait_s=wait_s) as idx:
        return prune_index(idx, dry_run=dry_run)


def repair_index_dir(index_dir: str, embedder: Optional[str] = None, device: str = "auto",
                     progress: Any = None) -> dict[str, Any]:
    """Salvage a damaged index into a new database and re-embed from the captions (never re-captions)."""
    from ..search.searcher import cached_embedder
    from ..store.store_check import repair_index
    from .document_graph import recorded_graph

    emb: Any = None
    try:
        graph = recorded_graph(index_dir)[0] or "fp32"  # re-embedded vectors come from the index's graph
        emb = cached_embedder(embedder, device, graph)
        if getattr(emb, "document_graph", "fp32") != graph:
            emb = None  # cannot give this index's graph here: the next `index` run says why
    except EngineError:
        emb = None  # the vectors are then re-embedded by the next `index` run
    kw = {"progress": progress} if progress else {}
    return repair_index(index_dir, emb, **kw)


def preview_index(index_dir: str, sources: Sequence[Any], tiling: Any = None) -> list[dict[str, Any]]:
    """Before pressing Index: per raster, how many tiles the plan has, how many are searchable
    already, how many come from the caption cache and how many will be captioned (same captioner as
    stored for that raster; a raster not indexed yet captions everything). Reads only."""
    from ..rasters.raster import open_raster
    from ..rasters.tiling import TilingParams, count_tiles, plan_tiles
    from ..store.store import SearchIndex
    from .plan import MAX_TILES, resolve_sources

    params = tiling or TilingParams()
    out: list[dict[str, Any]] = []
    idx = SearchIndex.open(index_dir, readonly=True) if _exists(index_dir) else None
    try:
        with db_errors(index_dir):
            for src in resolve_sources(sources):
                info = open_raster(src.path, src.band_map)
                n = count_tiles(info, params)
                row = idx.get_raster(info.raster_id) if idx is not None else None
                item: dict[str, Any] = {"path": src.path, "raster_id": info.raster_id, "tiles_planned": n,
                                        "too_many": n > MAX_TILES, "tiling_changed": bool(row and row["params"] != params.to_dict())}
                if n > MAX_TILES or idx is None or row is None:
                    item.update(searchable=0, from_cache=0, empty_known=0, to_caption=n)
                else:
                    ids = [r.tile_id for r in plan_tiles(info, params)]
                    done = idx.done_tile_ids(info.raster_id, row["captioner_fp"]) & set(ids)
                    empty = idx.empty_tile_ids(info.raster_id, params.min_valid_fraction) & set(ids)
                    rest = [t for t in ids if t not in done and t not in empty]
                    cached = idx.cached_variants(rest, row["captioner_fp"])
                    item.update(searchable=len(done), from_cache=len(cached), empty_known=len(empty),
                                to_caption=len(rest) - len(cached))
                out.append(item)
    finally:
        if idx is not None:
            idx.close()
    return out
