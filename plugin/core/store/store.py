"""The index folder: manifest.json + index.sqlite (the truth) + captions.hnsw (derived, rebuildable).

One writer, many readers. Every write is one SQLite transaction, so a job killed at any point
leaves whole tiles or nothing; the ANN file is only a cache the next open reconciles (see ann.py).
Invariant that keeps the rest simple: an `embeddings` row exists only for a caption of its raster's
*current* captioner, made by the index's *current* embedder -- so "searchable" == "has an
embedding", and the hnswlib labels mirror that one table. Captions of other captioners stay as a
cache: switching back re-embeds them without captioning again.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from ..errors import IndexMissingError, IndexStoreError
from ..types import CaptionVariant, Hit
from . import store_schema as S
from .ann import AnnIndex
from .ann_files import clean_tmp
from .index_lock import IndexLock
from .store_rasters import RASTER_STATES, RasterRows
from .store_tiles import TileRows

__all__ = ["SearchIndex", "RASTER_STATES"]


class SearchIndex:
    """One index folder; open with `SearchIndex.open(...)`, use as a context manager. It owns the
    connection, the ANN file and its table helpers (`rasters`, `tiles`), whose methods it offers."""

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
        self._lock: Optional[IndexLock] = None
        self._owned_lock: Optional[IndexLock] = None
        #: Things the open fixed or noticed (rebuilt manifest, removed leftovers), one line each.
        self.notes: list[str] = []
        self.has_active = S.has_column(conn, "tiles", "active")
        self.rasters = RasterRows(self)
        self.tiles = TileRows(self)

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
        job: Optional[str] = None,
        wait_s: float = 0.0,
        lock: Optional[IndexLock] = None,
    ) -> SearchIndex:
        """Open (or create) the index at `folder`, checked against the embedder that will use it.

        A writer first takes the index's writer lock (`index_lock.py`: one writer per index; waits
        up to `wait_s`, then `IndexBusyError` naming the running `job`); readers take nothing and
        write nothing, so they work on read-only media and beside a running job.
        """
        folder = os.path.abspath(os.path.expanduser(str(folder)))
        db_path = os.path.join(folder, S.DB_FILE)
        exists = os.path.exists(db_path)
        if not exists and (not create or readonly):
            raise IndexMissingError(f"no index at {folder}: index some rasters first")
        if not exists and (not embedder_fingerprint or not dim):
            raise IndexStoreError("creating an index needs the embedder fingerprint and dimension")
        owned = None
        if not readonly and lock is None:  # a caller that holds the lock already (a job) passes it
            try:
                os.makedirs(folder, exist_ok=True)
                owned = IndexLock(folder, job).acquire(wait_s)
            except OSError as exc:
                raise IndexStoreError(f"cannot write the index at {folder} ({exc.strerror or exc}); "
                                      "search it read-only, or index into a folder you can write") from None
        try:
            self = cls._open_locked(folder, db_path, exists, embedder_fingerprint, dim, readonly, allow_new_embedder)
        except BaseException:
            if owned is not None:
                owned.release()
            raise
        self._lock, self._owned_lock = owned or lock, owned
        return self

    @classmethod
    def _open_locked(cls, folder: str, db_path: str, exists: bool, embedder_fingerprint: Optional[str],
                     dim: Optional[int], readonly: bool, allow_new_embedder: bool) -> SearchIndex:
        manifest, problem = S.read_manifest(folder)
        notes: list[str] = []
        if not readonly:
            freed = clean_tmp(folder)
            if freed:
                notes.append(f"removed {freed / 1e6:.1f} MB of temporary files left by a crashed job")
        if not exists:
            conn = S.connect(db_path, readonly=False)
            with S.db_errors(folder):
                S.init_db(conn, str(embedder_fingerprint), int(dim or 0))
                _ensure_lexical(conn)
            S.write_manifest(folder, str(embedder_fingerprint), int(dim or 0))
        else:
            conn = S.connect(db_path, readonly=readonly)
            try:
                with S.db_errors(folder):
                    if readonly and conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is None:
                        raise IndexMissingError(f"no index at {folder} yet (a first job is creating it): try again in a moment")
                    if not readonly:
                        S.init_db(conn, embedder_fingerprint or "", int(dim or 0))  # no-op on an existing schema
                        S.migrate(conn)
                        _ensure_lexical(conn)  # the FTS5 table beside the embeddings (built once for older indexes)
                    version = S.get_meta(conn, "schema_version")
            except BaseException:
                conn.close()
                raise
            if version is None or int(version) > S.SCHEMA_VERSION:
                conn.close()
                raise IndexStoreError(
                    f"the index at {folder} has schema version {version}, this plugin reads up to {S.SCHEMA_VERSION}: update the plugin"
                )
        with S.db_errors(folder):
            self = cls(folder, conn, readonly)
        self.notes = notes
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
                # A missing or broken manifest (or a crash between DB and manifest): the database knows.
                S.write_manifest(folder, self.embedder_fingerprint, self.dim)
                if problem:
                    notes.append(f"{problem}: rebuilt it from the database")
            elif problem:
                notes.append(f"{problem}; the database is intact, the next update rewrites it")
        except BaseException:
            self.close()
            raise
        return self

    def _switch_embedder(self, fingerprint: str, dim: int) -> None:
        """Drop every embedding (captions stay), new epoch so the old ANN file is never reused."""
        import uuid

        if dim <= 0:
            raise IndexStoreError("switching the embedder needs the new embedding dimension")
        with self.transaction():
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
            with S.db_errors(self.idx.folder):
                self.idx.conn.execute("BEGIN IMMEDIATE")
            return self.idx.conn

        def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
            conn = self.idx.conn
            if et is None:
                try:
                    conn.execute("COMMIT")
                except sqlite3.DatabaseError as exc:  # e.g. disk full at commit: nothing of it was stored
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise S.db_error(exc, self.idx.folder) from None
                self.idx._mutated = True
                return
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(ev, sqlite3.DatabaseError):
                raise S.db_error(ev, self.idx.folder) from None

    def transaction(self) -> SearchIndex._Tx:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on error); refused read-only."""
        return SearchIndex._Tx(self)

    def active_sql(self, alias: str) -> str:
        """SQL for "this tile is in its raster's current plan" (old databases opened read-only: all are)."""
        return f"{alias}.active = 1" if self.has_active else "1"

    # ---- the table helpers' operations --------------------------------------------------------
    def upsert_raster(self, info: Any, captioner_fp: str, params: dict) -> None:
        self.rasters.upsert_raster(info, captioner_fp, params)

    def raster_rows(self) -> list[dict]:
        return self.rasters.raster_rows()

    def get_raster(self, raster_id: str) -> Optional[dict]:
        return self.rasters.get_raster(raster_id)

    def find_raster_ids(self, path_or_id: str) -> list[str]:
        return self.rasters.find_raster_ids(path_or_id)

    def set_raster_state(self, raster_id: str, state: str) -> None:
        self.rasters.set_raster_state(raster_id, state)

    def remove_raster(self, raster_id: str) -> None:
        self.rasters.remove_raster(raster_id)

    def done_tile_ids(self, raster_id: str, captioner_fp: str) -> set[str]:
        return self.tiles.done_tile_ids(raster_id, captioner_fp)

    def cached_variants(self, tile_ids: Iterable[str], captioner_fp: str) -> dict[str, list[CaptionVariant]]:
        return self.tiles.cached_variants(tile_ids, captioner_fp)

    def add_tiles(self, raster_id: str, captioner_fp: str, items: Sequence[Any]) -> None:
        self.tiles.add_tiles(raster_id, captioner_fp, items)

    def retain_tiles(self, raster_id: str, keep: set[str]) -> int:
        return self.tiles.retain_tiles(raster_id, keep)

    def mark_empty(self, raster_id: str, tile_ids: Iterable[str], min_valid: float) -> None:
        self.tiles.mark_empty(raster_id, tile_ids, min_valid)

    def empty_tile_ids(self, raster_id: str, min_valid: float) -> set[str]:
        return self.tiles.empty_tile_ids(raster_id, min_valid)

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
            if self._owned_lock is not None:
                self._owned_lock.release()
                self._owned_lock = None

    # ---- ANN file, search, stats --------------------------------------------------------------
    def flush(self) -> None:
        """Bring the ANN index up to date and save it atomically; then trim the replayed log."""
        if self.readonly:
            return
        self.ann.save(self.conn)
        with self.transaction() as c:
            c.execute("DELETE FROM ann_log WHERE seq <= ?", (self.ann.last_seq,))
            floor = int(S.get_meta(c, "ann_log_floor") or 0)
            S.set_meta(c, "ann_log_floor", str(max(floor, self.ann.last_seq)))
        self._mutated = False

    def flush_or_keep_log(self) -> str:
        """`flush`, but a search file that cannot be saved is not an error: "" when saved, else the reason.

        The tiles and their vectors are committed in SQLite and the ANN log keeps every change since the
        last good file, so the next open replays (or rebuilds) it; a finished job says so in a note
        instead of failing after its work is safe.
        """
        try:
            self.flush()
        except IndexStoreError as exc:
            self._mutated = False  # close() must not try the same save again
            text = str(exc).strip()
            return text.splitlines()[0] if text else type(exc).__name__
        return ""

    def sync(self) -> int:
        """Apply what writers committed since this index was loaded (cheap when nothing changed)."""
        return self.ann.sync(self.conn)

    def search(self, query_vector: np.ndarray, *, top: int = 10, fusion: str = "max",
               raster_ids: Optional[Sequence[str]] = None, bbox: Optional[tuple[float, float, float, float]] = None,
               bbox_crs: Optional[str] = None, min_score: Optional[float] = None, suppress_overlaps: bool = False,
               oversample: int = 10, **ranking: Any) -> list[Hit]:
        """Rank tiles for a query vector; see `search.search` for the algorithm and the `ranking`
        options (ranker, query_text, lexical_weight, negatives, exclude_tiles)."""
        from ..search.search import search

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
            "rasters": one("SELECT COUNT(*) FROM rasters"), "tiles": one(f"SELECT COUNT(*) FROM tiles t WHERE {self.active_sql('t')}"),
            "cached_tiles": one(f"SELECT COUNT(*) FROM tiles t WHERE NOT ({self.active_sql('t')})"),
            "variants": one("SELECT COUNT(*) FROM captions"), "embedded": embedded,
            "captioners": caps, "embedder": self.embedder_fingerprint, "embedder_fingerprint": self.embedder_fingerprint,
            "dim": self.dim, "schema_version": int(S.get_meta(c, "schema_version") or 0), "hnsw": ann,
            "stale_rasters": stale, "stale": bool(stale),
        }

    def variants_per_tile(self) -> float:
        """Average searchable variants per tile (sizes the kNN oversampling); cached per log position."""
        key = self.ann.last_seq
        if self._vpt is None or self._vpt[0] != key:
            tiles = int(self.conn.execute(f"SELECT COUNT(*) FROM tiles t WHERE {self.active_sql('t')}").fetchone()[0])
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

