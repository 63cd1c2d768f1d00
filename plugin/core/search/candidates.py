"""Candidate tiles of one search and all their searchable variants, kept columnar for scoring.

search.py asks the kNN (and FTS5) for caption ids; this class turns them into tiles, fetches what
scoring needs in batches, and scores every candidate with a handful of numpy calls.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Optional, Protocol, Sequence

import numpy as np

from ..store.ann_rows import decode_checked
from ..types import PixelWindow

__all__ = ["Candidates", "Searchable"]


class Searchable(Protocol):
    """What ranking needs from an index (`store.SearchIndex` is one); search.py never imports the store,
    so the arrow points one way: store -> search."""

    @property
    def conn(self) -> sqlite3.Connection: ...

    @property
    def dim(self) -> int: ...

    @property
    def embedder_fingerprint(self) -> str: ...

    @property
    def ann(self) -> Any: ...

    def sync(self) -> int: ...

    def active_count(self) -> int: ...

    def variants_per_tile(self) -> float: ...


class Candidates:
    """Candidate tiles and all their searchable variants, fetched in batches and kept columnar.

    Each tile's variant rows are appended contiguously, so scoring every candidate is a handful of
    numpy calls (one matmul, a lexsort, reduceat) instead of a Python loop per tile.
    """

    def __init__(self, index: Searchable, vectors: bool = True) -> None:
        self.index = index
        #: False (max fusion): a tile's score is its best *retrieved* variant's kNN similarity, which
        #: is exact for every tile that can rank (its best variant beats the k-th one), so no vectors
        #: need fetching; mean / top2 need all variants of each candidate, scored from stored vectors.
        self.vectors = vectors
        self.row_sim: list[float] = []
        self.tile_of: dict[int, Optional[str]] = {}
        self.tiles: dict[str, dict[str, Any]] = {}
        self.t_ids: list[str] = []
        self.t_raster: list[str] = []
        self.t_env: list[tuple[float, float, float, float]] = []
        self.row_seg: list[int] = []
        self.row_cid: list[int] = []
        self.blobs: list[bytes] = []
        self.sims = np.zeros(0, np.float32)
        #: Per-caption lexical bonus added to the cosine (hybrid ranker); empty for dense.
        self.bonus: dict[int, float] = {}
        #: Weight of the cosine in the score (0 for the lexical ranker, whose bm25 is the bonus).
        self.dense_weight = 1.0

    def add_labels(self, labels: Sequence[int], sims: Sequence[float]) -> None:
        sim_of = dict(zip((int(x) for x in labels), (float(v) for v in sims)))
        new = [int(x) for x in labels if int(x) not in self.tile_of]
        conn = self.index.conn
        for i in range(0, len(new), 500):
            chunk = new[i : i + 500]
            for cid in chunk:
                self.tile_of[cid] = None  # a label whose rows a writer deleted since we loaded
            q = ",".join("?" * len(chunk))
            for cid, tid in conn.execute(f"SELECT caption_id, tile_id FROM captions WHERE caption_id IN ({q})", chunk):
                self.tile_of[int(cid)] = tid
        self._load_tiles(sorted(t for t in {self.tile_of[c] for c in new} if t and t not in self.tiles))
        if not self.vectors:
            for cid in new:
                t = self.tiles.get(self.tile_of[cid] or "")
                if t is not None:
                    self.row_seg.append(t["pos"])
                    self.row_cid.append(cid)
                    self.row_sim.append(sim_of[cid])

    def add_tiles_of_rasters(self, raster_ids: Sequence[str]) -> None:
        q = ",".join("?" * len(raster_ids))
        rows = self.index.conn.execute(f"SELECT tile_id FROM tiles WHERE raster_id IN ({q})", list(raster_ids)).fetchall()
        self._load_tiles([r[0] for r in rows if r[0] not in self.tiles])

    def _load_tiles(self, tile_ids: list[str]) -> None:
        conn = self.index.conn
        for i in range(0, len(tile_ids), 500):
            chunk = tile_ids[i : i + 500]
            q = ",".join("?" * len(chunk))
            for row in conn.execute(
                "SELECT t.tile_id, t.raster_id, t.col_off, t.row_off, t.width, t.height, t.scale, t.footprint,"
                f" t.minx, t.miny, t.maxx, t.maxy FROM tiles t WHERE t.tile_id IN ({q})", chunk,
            ):
                self.tiles[row[0]] = {"raster_id": row[1], "window": PixelWindow(*row[2:6]), "scale": row[6],
                                      "footprint": row[7], "pos": len(self.t_ids)}
                self.t_ids.append(row[0])
                self.t_raster.append(row[1])
                self.t_env.append(tuple(float(v) for v in row[8:12]))  # type: ignore[arg-type]
            if not self.vectors:
                continue
            # Every searchable variant of these tiles, with its vector, for exact scoring.
            rows = conn.execute(
                "SELECT c.caption_id, c.tile_id, e.vector FROM captions c JOIN embeddings e"
                f" ON e.caption_id = c.caption_id WHERE c.tile_id IN ({q}) ORDER BY c.tile_id, c.variant_index", chunk,
            ).fetchall()
            bad = set(decode_checked([(r[0], r[2]) for r in rows], self.index.dim)[2]) if rows else set()
            for cid, tid, vec in rows:
                if cid in bad:  # damaged bytes (not a finite unit vector) would score 1e37: never rank them
                    continue
                t = self.tiles.get(tid)
                if t is not None:
                    self.row_seg.append(t["pos"])
                    self.row_cid.append(int(cid))
                    self.blobs.append(vec)

    def variant_scores(self, vectors: np.ndarray) -> np.ndarray:
        """Each stored variant's best cosine with any of `vectors` (one per row of `row_cid`). Needs `vectors=True`."""
        if not self.blobs:
            return np.zeros(0)
        m = np.frombuffer(b"".join(self.blobs), np.float32).reshape(len(self.blobs), -1) @ np.atleast_2d(vectors).T
        return m.max(axis=1).astype(np.float64)

    def best_per_tile(self, vectors: np.ndarray, row_scores: Optional[np.ndarray] = None) -> np.ndarray:
        """Each candidate tile's best cosine with any of `vectors` over all its stored variants
        (indexed by tile position; -inf for a tile without variants). Needs `vectors=True`.
        `row_scores`: per-variant scores to use instead (variant_scores, some set to -inf)."""
        out = np.full(len(self.t_ids), -np.inf)
        rows = self.variant_scores(vectors) if row_scores is None else row_scores
        if len(rows):
            np.maximum.at(out, np.asarray(self.row_seg, np.int64), rows)
        return out

    def fused(self, q: np.ndarray, rule: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tile positions, fused scores, best caption ids) for every candidate tile with variants."""
        if not self.vectors:
            self.sims = np.asarray(self.row_sim, np.float32)
        elif len(self.sims) < len(self.blobs):
            new = np.frombuffer(b"".join(self.blobs[len(self.sims):]), dtype=np.float32).reshape(-1, q.shape[-1])
            s = new @ q.T  # several query vectors (search by example): the best of them
            self.sims = np.concatenate([self.sims, s.max(axis=1) if s.ndim == 2 else s])
        if not len(self.sims):
            return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
        sims = self.sims.astype(np.float64) * self.dense_weight
        if self.bonus:
            sims = sims + np.fromiter((self.bonus.get(c, 0.0) for c in self.row_cid), np.float64, len(self.row_cid))
        seg = np.asarray(self.row_seg, np.int64)
        order = np.lexsort((-sims, seg))
        s_sorted, seg_sorted = sims[order], seg[order]
        first = np.flatnonzero(np.r_[True, seg_sorted[1:] != seg_sorted[:-1]])
        counts = np.diff(np.r_[first, len(order)])
        best = s_sorted[first]
        if rule == "max":
            score = best
        elif rule == "mean":
            score = np.add.reduceat(s_sorted, first) / counts
        else:  # top2
            second = np.where(counts >= 2, s_sorted[np.minimum(first + 1, len(order) - 1)], best)
            score = (best + second) / 2.0
        return seg_sorted[first], score, np.asarray(self.row_cid, np.int64)[order[first]]
