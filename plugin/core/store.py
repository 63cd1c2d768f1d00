"""The index folder: manifest.json + index.sqlite (the truth) + captions.hnsw (derived, rebuildable).

One writer, many readers. Every write is one SQLite transaction, so a job killed at any point
leaves whole tiles or nothing; the ANN file is only a cache the next open reconciles (see ann.py).
Invariant that keeps the rest simple: an `embeddings` row exists only for a caption of its raster's
*current* captioner, made by the index's *current* embedder -- so "searchable" == "has an
embedding", and the hnswlib labels mirror that one table. Captions of other captioners stay as a
cache: switching back re-embeds them without captioning again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np

from . import store_schema as S
from .ann import AnnIndex
from .errors import IndexStoreError
from .types import CaptionVariant, Hit, TileRef

__all__ = ["SearchIndex", "RASTER_STATES"]

RASTER_STATES = ("indexing", "indexed", "stale")


class SearchIndex:
    """Facade over one index folder; open with `SearchIndex.open(...)`, use as a context manager."""

    SCHEMA_VERSION = S.SCHEMA_VERSION

    def __init__(self, folder: str, conn: sqlite3.Connection, readonly: bool) -> None:
        self.folder = folder
        self.readonly = readonly
        self._conn: Optional[sqlite3.Connection] = conn
        self.embedder_fingerprint = str(S.get_meta(conn, "embedder_fingerprint"))
        self.dim = int(S.get_meta(conn, "dim") or 0)
        self._ann = AnnIndex(folder, self.dim, str(S.get_meta(conn, "epoch")))
        self._ann_ready = False
        self._mutated = False
        self._vpt: Optional[tuple[int, float]] = None

    # ---- opening ------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        folder: str,
        *,
        create: bool = False,
        embedder_fingerprint: Optional[str] = None,
        dim: Optional[int] = None,
        readonly: bool = False,
        allow_new_embedder: bool = False,
    ) -> SearchIndex:
        """Open (or create) the index at `folder`, checked against the embedder that will use it."""
        folder = os.path.abspath(os.path.expanduser(str(folder)))
        db_path = os.path.join(folder, S.DB_FILE)
        manifest = S.read_manifest(folder) if os.path.isdir(folder) else None
        exists = manifest is not None and os.path.exists(db_path)
        if not exists:
            if not create or readonly:
                raise IndexStoreError(f"no index at {folder}: index some rasters first")
            if not embedder_fingerprint or not dim:
                raise IndexStoreError("creating an index needs the embedder fingerprint and dimension")
            os.makedirs(folder, exist_ok=True)
            conn = S.connect(db_path, readonly=False)
            S.init_db(conn, embedder_fingerprint, int(dim))
            S.write_manifest(folder, embedder_fingerprint, int(dim))
        else:
            conn = S.connect(db_path, readonly=readonly)
            if not readonly:
                S.init_db(conn, embedder_fingerprint or "", int(dim or 0))  # no-op on an existing schema
        version = S.get_meta(conn, "schema_version")
        if version is None or int(version) > S.SCHEMA_VERSION:
            conn.close()
            raise IndexStoreError(
                f"the index at {folder} has schema version {version}, this plugin reads up to {S.SCHEMA_VERSION}: update the plugin"
            )
        if not readonly:
            _ensure_lexical(conn)  # the FTS5 table beside the embeddings (built once for older indexes)
        self = cls(folder, conn, readonly)
        try:
            if embedder_fingerprint and embedder_fingerprint != self.embedder_fingerprint:
                if not allow_new_embedder or readonly:
                    raise IndexStoreError(
                        f"the index at {folder} was built with embedder {self.embedder_fingerprint}, not "
                        f"{embedder_fingerprint}: use the same embedder or re-embed (allow_new_embedder)"
                    )
                self._switch_embedder(embedder_fingerprint, int(dim or 0))
            elif dim and int(dim) != self.dim:
                raise IndexStoreError(f"the index at {folder} holds {self.dim}-d vectors, the embedder gives {dim}-d")
            if not readonly and (manifest or {}).get("embedder_fingerprint") != self.embedder_fingerprint:
                S.write_manifest(folder, self.embedder_fingerprint, self.dim)  # crash between DB and manifest
        except BaseException:
            self.close()
            raise
        return self

    def _switch_embedder(self, fingerprint: str, dim: int) -> None:
        """Drop every embedding (captions stay), new epoch so the old ANN file is never reused."""
        import uuid

        if dim <= 0:
            raise IndexStoreError("switching the embedder needs the new embedding dimension")
        with self._write():
            self.conn.execute("DROP TRIGGER IF EXISTS embeddings_del")
            self.conn.execute("DELETE FROM embeddings")
            self.conn.execute("DELETE FROM ann_log")
            for stmt in S._statements(S.SCHEMA):
                if "embeddings_del" in stmt:
                    self.conn.execute(stmt)
            S.set_meta(self.conn, "embedder_fingerprint", fingerprint)
            S.set_meta(self.conn, "dim", str(dim))
            S.set_meta(self.conn, "epoch", uuid.uuid4().hex)
            S.set_meta(self.conn, "ann_log_floor", "0")
            S.set_meta(self.conn, "embedded_count", "0")
            self.conn.execute("UPDATE rasters SET state = 'stale'")
        S.write_manifest(self.folder, fingerprint, dim)
        self.embedder_fingerprint, self.dim = fingerprint, dim
        self._ann = AnnIndex(self.folder, dim, str(S.get_meta(self.conn, "epoch")))
        self._ann_ready = False

    # ---- plumbing -----------------------------------------------------------------------------
    @property
    def ann(self) -> AnnIndex:
        """The ANN index, loaded (and reconciled) on first use: writers that only add tiles never pay for it."""
        if not self._ann_ready:
            self._ann.load(self.conn)
            self._ann_ready = True
        return self._ann

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise IndexStoreError(f"the index at {self.folder} is closed")
        return self._conn

    class _Tx:
        def __init__(self, idx: SearchIndex) -> None:
            self.idx = idx

        def __enter__(self) -> sqlite3.Connection:
            if self.idx.readonly:
                raise IndexStoreError(f"the index at {self.idx.folder} was opened read-only")
            self.idx.conn.execute("BEGIN IMMEDIATE")
            return self.idx.conn

        def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
            if et is None:
                self.idx.conn.execute("COMMIT")
                self.idx._mutated = True
            else:
                self.idx.conn.execute("ROLLBACK")

    def _write(self) -> SearchIndex._Tx:
        return SearchIndex._Tx(self)

    def __enter__(self) -> SearchIndex:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close; a writer that changed something saves the ANN file first (readers never write)."""
        if self._conn is None:
            return
        try:
            if self._mutated and not self.readonly:
                self.flush()
        finally:
            self._conn.close()
            self._conn = None

    # ---- rasters ------------------------------------------------------------------------------
    def upsert_raster(self, info: Any, captioner_fp: str, params: dict) -> None:
        """Register or update a raster (path, name, metadata) and mark it "indexing".

        A new captioner makes the other captioners' captions of this raster unsearchable (their
        embeddings are dropped, the captions stay as cache).
        """
        d = info.to_dict() if hasattr(info, "to_dict") else dict(info)
        rid = str(d["raster_id"])
        now = time.time()
        name = str(d.get("name") or os.path.basename(str(d["path"])))
        with self._write() as c:
            c.execute(
                "INSERT INTO rasters (raster_id, path, name, crs_wkt, info, captioner_fp, params, state, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'indexing', ?, ?) ON CONFLICT(raster_id) DO UPDATE SET path = excluded.path,"
                " name = excluded.name, crs_wkt = excluded.crs_wkt, info = excluded.info, captioner_fp = excluded.captioner_fp,"
                " params = excluded.params, state = 'indexing', updated_at = excluded.updated_at",
                (rid, str(d["path"]), name, d.get("crs_wkt"), json.dumps(d, default=str), captioner_fp,
                 json.dumps(params or {}, sort_keys=True, default=str), now, now),
            )
            c.execute(
                "DELETE FROM embeddings WHERE caption_id IN (SELECT c.caption_id FROM captions c JOIN tiles t"
                " ON t.tile_id = c.tile_id WHERE t.raster_id = ? AND c.captioner_fp != ?)", (rid, captioner_fp),
            )

    def raster_rows(self) -> list[dict]:
        """Every raster with its state, captioner and counts of tiles and current-captioner variants."""
        rows = self.conn.execute(
            "SELECT r.raster_id, r.path, r.name, r.crs_wkt, r.state, r.captioner_fp, r.params, r.info, r.updated_at,"
            " (SELECT COUNT(*) FROM tiles t WHERE t.raster_id = r.raster_id),"
            " (SELECT COUNT(*) FROM captions c JOIN tiles t ON t.tile_id = c.tile_id"
            "   WHERE t.raster_id = r.raster_id AND c.captioner_fp = r.captioner_fp),"
            " (SELECT COUNT(*) FROM embeddings e JOIN captions c ON c.caption_id = e.caption_id JOIN tiles t"
            "   ON t.tile_id = c.tile_id WHERE t.raster_id = r.raster_id)"
            " FROM rasters r ORDER BY r.created_at, r.raster_id"
        ).fetchall()
        out = []
        for rid, path, name, crs, state, cfp, params, info, upd, ntiles, nvar, nemb in rows:
            info_d = json.loads(info)
            out.append({
                "raster_id": rid, "path": path, "name": name, "crs_wkt": crs, "state": state, "captioner_fp": cfp,
                "params": json.loads(params), "tiles": ntiles, "variants": nvar, "embedded": nemb, "updated_at": upd,
                "band_map": info_d.get("band_map"), "info": info_d,
            })
        return out

    def get_raster(self, raster_id: str) -> Optional[dict]:
        for r in self.raster_rows():
            if r["raster_id"] == raster_id:
                return r
        return None

    def find_raster_ids(self, path_or_id: str) -> list[str]:
        """Raster ids matching an id, an id prefix (>= 6 chars), a path or a display name."""
        key = str(path_or_id)
        rows = self.conn.execute(
            "SELECT raster_id FROM rasters WHERE raster_id = ? OR path = ? OR name = ? ORDER BY raster_id", (key, key, key)
        ).fetchall()
        if not rows and len(key) >= 6:
            rows = self.conn.execute("SELECT raster_id FROM rasters WHERE raster_id LIKE ? ORDER BY raster_id",
                                     (key.replace("%", "") + "%",)).fetchall()
        return [r[0] for r in rows]

    def set_raster_state(self, raster_id: str, state: str) -> None:
        if state not in RASTER_STATES:
            raise IndexStoreError(f"unknown raster state {state!r} (expected one of {', '.join(RASTER_STATES)})")
        with self._write() as c:
            c.execute("UPDATE rasters SET state = ?, updated_at = ? WHERE raster_id = ?", (state, time.time(), raster_id))

    def remove_raster(self, raster_id: str) -> None:
        """Delete the raster's rows (tiles, captions, embeddings cascade; triggers log the labels)."""
        with self._write() as c:
            c.execute("DELETE FROM rasters WHERE raster_id = ?", (raster_id,))

    # ---- tiles, captions, embeddings ----------------------------------------------------------
    def done_tile_ids(self, raster_id: str, captioner_fp: str) -> set[str]:
        """Tiles captioned by this captioner AND embedded with the current embedder (nothing to do)."""
        rows = self.conn.execute(
            "SELECT DISTINCT c.tile_id FROM captions c JOIN tiles t ON t.tile_id = c.tile_id JOIN embeddings e"
            " ON e.caption_id = c.caption_id WHERE t.raster_id = ? AND c.captioner_fp = ?", (raster_id, captioner_fp),
        ).fetchall()
        return {r[0] for r in rows}

    def cached_variants(self, tile_ids: Iterable[str], captioner_fp: str) -> dict[str, list[CaptionVariant]]:
        """The caption cache: variants this captioner wrote for these tiles, embedded or not."""
        out: dict[str, list[CaptionVariant]] = {}
        for chunk in _chunks(list(tile_ids), 500):
            q = ",".join("?" * len(chunk))
            for tid, _vi, a, b, cap in self.conn.execute(
                f"SELECT tile_id, variant_index, one_sentence, feature, caption FROM captions WHERE captioner_fp = ?"
                f" AND tile_id IN ({q}) ORDER BY tile_id, variant_index", (captioner_fp, *chunk),
            ):
                out.setdefault(tid, []).append(CaptionVariant(a, b, cap))
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
        with self._write() as c:
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
                    "INSERT INTO tiles (tile_id, raster_id, col_off, row_off, width, height, scale, footprint, minx, miny, maxx, maxy)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(tile_id) DO UPDATE SET raster_id = excluded.raster_id,"
                    " col_off = excluded.col_off, row_off = excluded.row_off, width = excluded.width, height = excluded.height,"
                    " scale = excluded.scale, footprint = excluded.footprint, minx = excluded.minx, miny = excluded.miny,"
                    " maxx = excluded.maxx, maxy = excluded.maxy",
                    (ref.tile_id, raster_id, w.col_off, w.row_off, w.width, w.height, int(ref.scale),
                     json.dumps(ref.footprint_geojson()), min(xs), min(ys), max(xs), max(ys)),
                )
                c.execute("DELETE FROM captions WHERE tile_id = ? AND captioner_fp = ? AND variant_index >= ?",
                          (ref.tile_id, captioner_fp, len(variants)))
                for vi, (v, vec) in enumerate(zip(variants, arr)):
                    cid = c.execute(
                        "INSERT INTO captions (tile_id, captioner_fp, variant_index, one_sentence, feature, caption, created_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(tile_id, captioner_fp, variant_index) DO UPDATE SET"
                        " one_sentence = excluded.one_sentence, feature = excluded.feature, caption = excluded.caption"
                        " RETURNING caption_id",
                        (ref.tile_id, captioner_fp, vi, v.one_sentence, v.feature, v.caption, now),
                    ).fetchone()[0]
                    c.execute("INSERT INTO embeddings (caption_id, vector) VALUES (?, ?) ON CONFLICT(caption_id)"
                              " DO UPDATE SET vector = excluded.vector", (cid, np.ascontiguousarray(vec).tobytes()))

    def retain_tiles(self, raster_id: str, keep: set[str]) -> int:
        """Delete this raster's tiles not in `keep` (a changed tiling plan); returns how many went."""
        with self._write() as c:
            c.execute("CREATE TEMP TABLE IF NOT EXISTS keep_tiles (tile_id TEXT PRIMARY KEY)")
            c.execute("DELETE FROM keep_tiles")
            c.executemany("INSERT OR IGNORE INTO keep_tiles (tile_id) VALUES (?)", ((t,) for t in keep))
            n = c.execute("DELETE FROM tiles WHERE raster_id = ? AND tile_id NOT IN (SELECT tile_id FROM keep_tiles)",
                          (raster_id,)).rowcount
            c.execute("DELETE FROM keep_tiles")
        return int(n)

    # ---- ANN file, search, stats --------------------------------------------------------------
    def flush(self) -> None:
        """Bring the ANN index up to date and save it atomically; then trim the replayed log."""
        if self.readonly:
            return
        self.ann.save(self.conn)
        with self._write() as c:
            c.execute("DELETE FROM ann_log WHERE seq <= ?", (self.ann.last_seq,))
            floor = int(S.get_meta(c, "ann_log_floor") or 0)
            S.set_meta(c, "ann_log_floor", str(max(floor, self.ann.last_seq)))
        self._mutated = False

    def sync(self) -> int:
        """Apply what writers committed since this index was loaded (cheap when nothing changed)."""
        return self.ann.sync(self.conn)

    def search(self, query_vector: np.ndarray, *, top: int = 10, fusion: str = "max",
               raster_ids: Optional[Sequence[str]] = None, bbox: Optional[tuple[float, float, float, float]] = None,
               bbox_crs: Optional[str] = None, min_score: Optional[float] = None, suppress_overlaps: bool = False,
               oversample: int = 10, **ranking: Any) -> list[Hit]:
        """Rank tiles for a query vector; see `search.search` for the algorithm and the `ranking`
        options (ranker, query_text, lexical_weight, negatives, exclude_tiles)."""
        from .search import search

        return search(self, query_vector, top=top, fusion=fusion, raster_ids=raster_ids, bbox=bbox, bbox_crs=bbox_crs,
                      min_score=min_score, suppress_overlaps=suppress_overlaps, oversample=oversample, **ranking)

    def stats(self) -> dict:
        c = self.conn
        self.sync()
        one = lambda sql: int(c.execute(sql).fetchone()[0])  # noqa: E731
        caps = [r[0] for r in c.execute("SELECT DISTINCT captioner_fp FROM rasters ORDER BY captioner_fp")]
        stale = [r[0] for r in c.execute("SELECT raster_id FROM rasters WHERE state != 'indexed' ORDER BY raster_id")]
        embedded = S.embedded_count(c)
        ann = self.ann.file_state()
        ann["deleted"] = max(0, ann["elements"] - embedded)
        ann["pending_log"] = one("SELECT COUNT(*) FROM ann_log")
        return {
            "rasters": one("SELECT COUNT(*) FROM rasters"), "tiles": one("SELECT COUNT(*) FROM tiles"),
            "variants": one("SELECT COUNT(*) FROM captions"), "embedded": embedded,
            "captioners": caps, "embedder": self.embedder_fingerprint, "embedder_fingerprint": self.embedder_fingerprint,
            "dim": self.dim, "schema_version": int(S.get_meta(c, "schema_version") or 0), "hnsw": ann,
            "stale_rasters": stale, "stale": bool(stale),
        }

    def variants_per_tile(self) -> float:
        """Average searchable variants per tile (sizes the kNN oversampling); cached per log position."""
        key = self.ann.last_seq
        if self._vpt is None or self._vpt[0] != key:
            tiles = int(self.conn.execute("SELECT COUNT(*) FROM tiles").fetchone()[0])
            self._vpt = (key, max(1.0, S.embedded_count(self.conn) / tiles) if tiles else 1.0)
        return self._vpt[1]

    def active_count(self) -> int:
        """Searchable variants (labels not deleted) in the in-memory ANN index."""
        return self.ann.active


def _ensure_lexical(conn: sqlite3.Connection) -> None:
    from .lexical import ensure_lexical

    try:
        ensure_lexical(conn)
    except BaseException:
        conn.close()
        raise


def _chunks(seq: list, n: int) -> Iterator[list]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]
