"""Search by example ("more like this"): rank tiles by similarity to one tile of the index.

The example's caption variants' vectors are the query; a tile scores its best (variant, example
variant) cosine -- max fusion on both sides, like a text query with several phrasings. The example
itself and its overlapping neighbours at other scales (a coarser tile containing it, finer ones
inside it: `search.window_overlap` above `OVERLAP_THRESHOLD`) are left out: they are the same
ground, not look-alikes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ..errors import QueryError
from ..types import Hit, PixelWindow
from .search import OVERLAP_THRESHOLD, window_overlap

if TYPE_CHECKING:  # pragma: no cover
    from ..store.store import SearchIndex

__all__ = ["Example", "parse_like", "find_example", "search_like"]

_LIKE = re.compile(r"^(?P<raster>.+):(?P<col>-?\d+),(?P<row>-?\d+)(?:,(?P<scale>\d+))?$")


@dataclass(frozen=True)
class Example:
    tile_id: str
    raster_id: str
    window: PixelWindow
    scale: int
    vectors: np.ndarray
    exclude: frozenset[str]


def parse_like(spec: str) -> tuple[str, int, int, Optional[int]]:
    """"RASTER:COL,ROW[,SCALE]" (full-resolution pixel of the raster; RASTER = path, name or id)."""
    m = _LIKE.match(str(spec or "").strip())
    if not m:
        raise QueryError(f"--like {spec!r}: expected RASTER:COL,ROW[,SCALE], e.g. scene.tif:1024,512 or scene.tif:1024,512,2")
    scale = int(m["scale"]) if m["scale"] else None
    return m["raster"], int(m["col"]), int(m["row"]), scale


def find_example(index: SearchIndex, raster: str, col: int, row: int, scale: Optional[int] = None) -> Example:
    """The indexed tile under pixel (col, row) of `raster` (the finest scale unless `scale` is given;
    the tile whose centre is nearest when tiles overlap), with its vectors and what to leave out."""
    key = os.path.abspath(raster) if os.path.exists(raster) else raster
    ids = index.find_raster_ids(key)
    if not ids:
        raise QueryError(f"raster {raster!r} is not in the index")
    if len(ids) > 1:
        raise QueryError(f"raster {raster!r} matches {len(ids)} indexed rasters: use its path or id")
    rid = ids[0]
    sql = ("SELECT tile_id, col_off, row_off, width, height, scale FROM tiles WHERE raster_id = ? AND col_off <= ?"
           " AND col_off + width > ? AND row_off <= ? AND row_off + height > ?")
    args: list[Any] = [rid, col, col, row, row]
    if scale is not None:
        sql += " AND scale = ?"
        args.append(int(scale))
    rows = index.conn.execute(sql, args).fetchall()
    if not rows:
        at = f" at scale {scale}" if scale is not None else ""
        raise QueryError(f"no indexed tile of {raster!r} covers pixel ({col}, {row}){at}")
    rows.sort(key=lambda r: (r[5], (r[1] + r[3] / 2 - col) ** 2 + (r[2] + r[4] / 2 - row) ** 2, r[0]))
    tid, c0, r0, w, h, sc = rows[0]
    win = PixelWindow(c0, r0, w, h)
    blobs = [b[0] for b in index.conn.execute(
        "SELECT e.vector FROM captions c JOIN embeddings e ON e.caption_id = c.caption_id WHERE c.tile_id = ?"
        " ORDER BY c.variant_index", (tid,))]
    if not blobs:
        raise QueryError(f"tile {tid} has no searchable caption variants (re-index {raster!r})")
    vecs = np.frombuffer(b"".join(blobs), np.float32).reshape(len(blobs), -1)
    exclude = {tid}
    for t2, a, b, ww, hh in index.conn.execute(
        "SELECT tile_id, col_off, row_off, width, height FROM tiles WHERE raster_id = ? AND col_off < ? AND col_off + width > ?"
        " AND row_off < ? AND row_off + height > ?", (rid, c0 + w, c0, r0 + h, r0),
    ):
        if window_overlap(win, PixelWindow(a, b, ww, hh)) > OVERLAP_THRESHOLD:
            exclude.add(t2)
    return Example(tid, rid, win, int(sc), vecs, frozenset(exclude))


def search_like(index: SearchIndex, raster: str, col: int, row: int, scale: Optional[int] = None,
                **options: Any) -> list[Hit]:
    """Tiles most like the example tile, best first (options as for `SearchIndex.search`)."""
    ex = find_example(index, raster, col, row, scale)
    options = {**options, "ranker": "dense", "query_text": None}
    hits = index.search(ex.vectors, exclude_tiles=set(ex.exclude), **options)
    for h in hits:
        h.extra["like"] = ex.tile_id
    return hits
