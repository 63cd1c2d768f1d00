"""The tiles, captions and embeddings tables of an index: the caption cache, adding tiles in one
transaction, retiring tiles of another plan, empty tiles (a part of `SearchIndex`)."""

from __future__ import annotations

import json
import time
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..errors import IndexStoreError
from ..types import CaptionVariant, TileRef
from .table_part import TablePart


class TileRows(TablePart):
    """The tiles, captions and embeddings tables (`SearchIndex.tiles`)."""

    # ---- tiles, captions, embeddings ----------------------------------------------------------
    def done_tile_ids(self, raster_id: str, captioner_fp: str) -> set[str]:
        """Tiles captioned by this captioner AND embedded with the current embedder (nothing to do).

        A tile with a fallback caption is not done: the next update asks the captioner again."""
        rows = self.conn.execute(
            "SELECT DISTINCT c.tile_id FROM captions c JOIN tiles t ON t.tile_id = c.tile_id JOIN embeddings e"
            " ON e.caption_id = c.caption_id WHERE t.raster_id = ? AND c.captioner_fp = ?", (raster_id, captioner_fp),
        ).fetchall()
        done = {r[0] for r in rows}
        if done and self.has_active:
            done -= {r[0] for r in self.conn.execute(
                "SELECT DISTINCT c.tile_id FROM captions c JOIN tiles t ON t.tile_id = c.tile_id WHERE t.raster_id = ?"
                " AND c.captioner_fp = ? AND c.fallback IS NOT NULL", (raster_id, captioner_fp))}
        return done

    def cached_variants(self, tile_ids: Iterable[str], captioner_fp: str) -> dict[str, list[CaptionVariant]]:
        """The caption cache: variants this captioner wrote for these tiles, embedded or not, in
        this tiling or an earlier one. Tiles with a fallback caption are not cached (asked again)."""
        out: dict[str, list[CaptionVariant]] = {}
        fell_back: set[str] = set()
        fb = "fallback" if self.has_active else "NULL"
        for chunk in _chunks(list(tile_ids), 500):
            q = ",".join("?" * len(chunk))
            for tid, _vi, a, b, cap, why in self.conn.execute(
                f"SELECT tile_id, variant_index, one_sentence, feature, caption, {fb} FROM captions WHERE captioner_fp = ?"
                f" AND tile_id IN ({q}) ORDER BY tile_id, variant_index", (captioner_fp, *chunk),
            ):
                if why:
                    fell_back.add(tid)
                out.setdefault(tid, []).append(CaptionVariant(a, b, cap))
        for tid in fell_back:
            out.pop(tid, None)
        return out

    def add_tiles(self, raster_id: str, captioner_fp: str,
                  items: Sequence[tuple[TileRef, list[CaptionVariant], np.ndarray]]) -> None:
        """Store tiles, their caption variants and embeddings in ONE transaction (all or nothing).

        Re-adding a tile replaces its variants in place (same caption ids), never duplicates them.
        """
        prepared = []
        for ref, variants, vecs in items:
            arr = np.asarray(vecs, dtype=np.float32)
            if arr.ndim != 2 or arr.shape != (len(variants), self.dim):
                raise IndexStoreError(
                    f"tile {ref.tile_id}: embeddings have shape {tuple(arr.shape)}, expected ({len(variants)}, {self.dim})"
                    f" for the index's {self.dim}-d embedder"
                )
            if not np.isfinite(arr).all():
                raise IndexStoreError(f"tile {ref.tile_id}: embeddings contain NaN or infinity")
            if ref.raster_id != raster_id:
                raise IndexStoreError(f"tile {ref.tile_id} belongs to raster {ref.raster_id}, not {raster_id}")
            norms = np.linalg.norm(arr, axis=1, keepdims=True)
            prepared.append((ref, variants, arr / np.where(norms > 0, norms, 1.0)))
        now = time.time()
        with self.transaction() as c:
            row = c.execute("SELECT captioner_fp FROM rasters WHERE raster_id = ?", (raster_id,)).fetchone()
            if row is None:
                raise IndexStoreError(f"raster {raster_id} is not registered: call upsert_raster first")
            if row[0] != captioner_fp:
                raise IndexStoreError(f"raster {raster_id} is indexed with captioner {row[0]}, not {captioner_fp}")
            for ref, variants, arr in prepared:
                xs = [p[0] for p in ref.footprint] or [0.0]
                ys = [p[1] for p in ref.footprint] or [0.0]
                w = ref.window
                c.execute(
                    "INSERT INTO tiles (tile_id, raster_id, col_off, row_off, width, height, scale, footprint, minx, miny, maxx, maxy,"
                    " active) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT(tile_id) DO UPDATE SET active = 1,"
                    " raster_id = excluded.raster_id,"
                    " col_off = excluded.col_off, row_off = excluded.row_off, width = excluded.width, height = excluded.height,"
                    " scale = excluded.scale, footprint = excluded.footprint, minx = excluded.minx, miny = excluded.miny,"
                    " maxx = excluded.maxx, maxy = excluded.maxy",
                    (ref.tile_id, raster_id, w.col_off, w.row_off, w.width, w.height, int(ref.scale),
                     json.dumps(ref.footprint_geojson()), min(xs), min(ys), max(xs), max(ys)),
                )
                c.execute("DELETE FROM captions WHERE tile_id = ? AND captioner_fp = ? AND variant_index >= ?",
                          (ref.tile_id, captioner_fp, len(variants)))
                c.execute("DELETE FROM empty_tiles WHERE tile_id = ?", (ref.tile_id,))
                for vi, (v, vec) in enumerate(zip(variants, arr)):
                    cid = c.execute(
                        "INSERT INTO captions (tile_id, captioner_fp, variant_index, one_sentence, feature, caption, created_at,"
                        " fallback) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(tile_id, captioner_fp, variant_index) DO UPDATE"
                        " SET one_sentence = excluded.one_sentence, feature = excluded.feature, caption = excluded.caption,"
                        " fallback = excluded.fallback RETURNING caption_id",
                        (ref.tile_id, captioner_fp, vi, v.one_sentence, v.feature, v.caption, now, v.fallback or None),
                    ).fetchone()[0]
                    c.execute("INSERT INTO embeddings (caption_id, vector) VALUES (?, ?) ON CONFLICT(caption_id)"
                              " DO UPDATE SET vector = excluded.vector", (cid, np.ascontiguousarray(vec).tobytes()))

    def retain_tiles(self, raster_id: str, keep: set[str]) -> int:
        """Take this raster's tiles not in `keep` (another tiling plan) out of search; returns how many.

        Their captions stay as cache (like another captioner's): going back to that tiling only
        re-embeds them. Deleting them is the explicit `prune` (or removing the raster)."""
        with self.transaction() as c:
            c.execute("CREATE TEMP TABLE IF NOT EXISTS keep_tiles (tile_id TEXT PRIMARY KEY)")
            c.execute("DELETE FROM keep_tiles")
            c.executemany("INSERT OR IGNORE INTO keep_tiles (tile_id) VALUES (?)", ((t,) for t in keep))
            gone = "raster_id = ? AND active = 1 AND tile_id NOT IN (SELECT tile_id FROM keep_tiles)"
            c.execute(f"DELETE FROM embeddings WHERE caption_id IN (SELECT c.caption_id FROM captions c WHERE c.tile_id IN"
                      f" (SELECT tile_id FROM tiles WHERE {gone}))", (raster_id,))
            n = c.execute(f"UPDATE tiles SET active = 0 WHERE {gone}", (raster_id,)).rowcount
            c.execute("DELETE FROM keep_tiles")
        return int(n)

    def mark_empty(self, raster_id: str, tile_ids: Iterable[str], min_valid: float) -> None:
        """Remember tiles the reader found (mostly) nodata, so updates skip them without reading."""
        with self.transaction() as c:
            c.executemany("INSERT INTO empty_tiles (tile_id, raster_id, min_valid) VALUES (?, ?, ?) ON CONFLICT(tile_id)"
                          " DO UPDATE SET min_valid = excluded.min_valid", ((t, raster_id, float(min_valid)) for t in tile_ids))

    def empty_tile_ids(self, raster_id: str, min_valid: float) -> set[str]:
        """Tiles known to be empty at this validity threshold (the raster id pins its content)."""
        if not self.has_active:
            return set()
        return {r[0] for r in self.conn.execute("SELECT tile_id FROM empty_tiles WHERE raster_id = ? AND min_valid = ?",
                                                (raster_id, float(min_valid)))}


def _chunks(seq: list, n: int) -> Iterator[list]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]
