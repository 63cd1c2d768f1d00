"""A score surface for a query: every tile's fused score written as a georeferenced one-band raster
(max over overlapping tiles and scales), so the analyst sees where a query matches across a scene.

Why every tile and not the top N: the map shows the shape of a match (a coastline, a river) that a
ranked list of ten tiles hides. The scores come straight from the stored caption embeddings (one
matrix product per chunk, no ANN), fused per tile as search fuses them, and are burnt into a grid at
a fraction of the raster's resolution (tile width / 8 by default) in the raster's own CRS and
transform, so rotated rasters come out right too. Cells no tile covers are nodata.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import EngineError

NODATA = -2.0  # outside the cosine range
CHUNK = 50_000


def tile_scores(index_dir: str, query_vector: np.ndarray, fusion: str = "max",
                rasters: Optional[Sequence[str]] = None) -> dict[str, list[tuple[int, int, int, int, float]]]:
    """Per raster id: (col_off, row_off, width, height, fused score) of every tile with captions."""
    from ..store.store import SearchIndex
    from .search import fuse

    q = np.asarray(query_vector, dtype=np.float32).reshape(-1)
    per_tile: dict[str, list[float]] = {}
    windows: dict[str, tuple[str, int, int, int, int]] = {}
    with SearchIndex.open(index_dir, readonly=True) as idx:
        cur = idx.conn.execute(
            "SELECT t.tile_id, t.raster_id, t.col_off, t.row_off, t.width, t.height, e.vector FROM embeddings e"
            " JOIN captions c ON c.caption_id = e.caption_id JOIN tiles t ON t.tile_id = c.tile_id"
            " JOIN rasters r ON r.raster_id = t.raster_id AND r.captioner_fp = c.captioner_fp")
        while True:
            rows = cur.fetchmany(CHUNK)
            if not rows:
                break
            vecs = np.frombuffer(b"".join(r[6] for r in rows), dtype=np.float32).reshape(len(rows), -1)
            if vecs.shape[1] != q.shape[0]:
                raise EngineError(f"query vector has {q.shape[0]} dimensions, the index {vecs.shape[1]}")
            sims = vecs @ q
            for r, s in zip(rows, sims.tolist()):
                per_tile.setdefault(r[0], []).append(s)
                windows[r[0]] = (r[1], r[2], r[3], r[4], r[5])
    wanted = set(rasters) if rasters else None
    out: dict[str, list[tuple[int, int, int, int, float]]] = {}
    for tid, scores in per_tile.items():
        rid, c, r, w, h = windows[tid]
        if wanted is None or rid in wanted:
            out.setdefault(rid, []).append((c, r, w, h, fuse(scores, fusion)))
    return out


def burn(width: int, height: int, tiles: Sequence[tuple[int, int, int, int, float]], cell: int) -> np.ndarray:
    """A (ceil(height/cell), ceil(width/cell)) float32 grid: each cell the max score of the tiles over it."""
    grid = np.full((math.ceil(height / cell), math.ceil(width / cell)), -np.inf, dtype=np.float32)
    for c, r, w, h, s in tiles:
        r0, r1 = r // cell, max(r // cell + 1, math.ceil((r + h) / cell))
        c0, c1 = c // cell, max(c // cell + 1, math.ceil((c + w) / cell))
        view = grid[r0:r1, c0:c1]
        np.maximum(view, s, out=view)
    grid[np.isneginf(grid)] = NODATA
    return grid


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:48] or "query"


def score_surface(index_dir: str, query: str, out_dir: str, *, embedder: Optional[str] = None, device: str = "auto",
                  fusion: str = "max", cell_px: int = 0, rasters: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
    """Write one GeoTIFF per indexed raster under `out_dir`; returns [{raster_id, name, path, min, max, cell_px}]."""
    import rasterio
    from affine import Affine

    from ..store.store import SearchIndex
    from .searcher import cached_query_embedder, clean_query

    text = clean_query(query)
    if not text:
        raise EngineError("the query is empty: describe what you are looking for")
    if not os.path.exists(os.path.join(index_dir, "index.sqlite")):
        raise EngineError(f"no search index at {index_dir}: index some rasters first")
    with SearchIndex.open(index_dir, readonly=True) as idx:
        fp = str(idx.embedder_fingerprint)
    emb = cached_query_embedder(embedder, device, fp)
    q = np.asarray(emb.encode_queries([text]), dtype=np.float32)[0]
    with SearchIndex.open(index_dir, readonly=True) as idx:
        rows = {r["raster_id"]: r for r in idx.raster_rows()}
    wanted = None
    if rasters:  # by id, path or layer name
        keys = {str(k) for k in rasters} | {os.path.abspath(str(k)) for k in rasters}
        wanted = [rid for rid, r in rows.items() if rid in keys or r.get("path") in keys or r.get("name") in keys]
        if not wanted:
            raise EngineError(f"no indexed raster matches {', '.join(map(str, rasters))}")
    scores = tile_scores(index_dir, q, fusion, wanted)
    os.makedirs(out_dir, exist_ok=True)
    out = []
    for rid, tiles in scores.items():
        row = rows.get(rid)
        if row is None or not tiles:
            continue
        raw = row.get("info")
        info: dict[str, Any] = raw if isinstance(raw, dict) else {}
        width, height = int(info.get("width", 0)), int(info.get("height", 0))
        if not width or not height:
            width = max(c + w for c, _r, w, _h, _s in tiles)
            height = max(r + h for _c, r, _w, h, _s in tiles)
        cell = int(cell_px) if cell_px and cell_px > 0 else max(1, min(w for _c, _r, w, _h, _s in tiles) // 8)
        grid = burn(width, height, tiles, cell)
        transform = Affine(*info["transform"]) * Affine.scale(cell) if info.get("transform") else Affine.scale(cell)
        crs = row.get("crs_wkt") or None
        name = str(row.get("name") or rid)
        path = os.path.join(out_dir, f"surface_{slug(text)}_{slug(name)}.tif")
        profile = dict(driver="GTiff", width=grid.shape[1], height=grid.shape[0], count=1, dtype="float32",
                       transform=transform, nodata=NODATA, compress="deflate")
        if crs:
            profile["crs"] = crs
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(grid, 1)
            dst.update_tags(query=text, fusion=fusion, description=f"fused score of '{text}' per tile (max over overlaps)")
            dst.set_band_description(1, f"score: {text}")
        valid = grid[grid != NODATA]
        out.append({"raster_id": rid, "name": name, "path": path, "cell_px": cell,
                    "min": float(valid.min()) if valid.size else None, "max": float(valid.max()) if valid.size else None})
    return out
