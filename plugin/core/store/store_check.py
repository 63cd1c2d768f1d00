"""Checking, repairing and pruning an index folder: `info --check`, `repair`, `prune`.

Captions are the expensive part of an index (GPU-hours), embeddings are cheap (seconds per
thousand), the hnsw file is free (rebuilt from the embeddings). So a check reads every vector
(finite, unit length: damaged bytes pass SQLite's integrity_check), and a repair copies whatever
SQLite can still read into a new database -- row ranges that fail are bisected down to the single
unreadable rows -- and re-embeds from the caption texts; it never re-captions. The damaged database
is kept beside the index (`damaged-<time>/`), never deleted.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
import uuid
from typing import Any, Callable, Iterator, Optional

import numpy as np

from ..errors import IndexStoreError
from . import store_schema as S
from .ann import HNSW_FILE, SIDECAR_FILE
from .ann_files import tmp_dir
from .ann_rows import decode_checked
from .index_lock import IndexLock

__all__ = ["check_index", "repair_index", "prune_index", "reembed_damaged"]

#: Tables copied by a repair, parents first; ann_log is not copied (the hnsw file is rebuilt).
_TABLES = ("meta", "rasters", "tiles", "empty_tiles", "captions", "embeddings")
_CHUNK = 2000


def check_index(folder: str) -> dict[str, Any]:
    """Read-only health check: manifest, SQLite integrity, every stored vector, the hnsw file.

    Returns {"ok", "problems": [one line each, with the next step], "damaged_vectors", ...}."""
    from .store import SearchIndex

    folder = os.path.abspath(folder)
    problems: list[str] = []
    _, why = S.read_manifest(folder)
    if why:
        problems.append(f"{why}: the next `index` run rebuilds it from the database (nothing is re-captioned)")
    out: dict[str, Any] = {"index_dir": folder, "integrity": "not checked", "vectors_checked": 0, "damaged_vectors": 0,
                           "fallback_tiles": 0}
    repair = f"run `python -m plugin repair --index {folder}`"
    # Each stage on its own: a damaged page stops that stage only, the others still report.
    with SearchIndex.open(folder, readonly=True) as idx:
        c = idx.conn
        try:
            rows = [r[0] for r in c.execute("PRAGMA integrity_check(20)")]
        except sqlite3.DatabaseError as exc:
            rows = [str(exc)]
        out["integrity"] = "ok" if rows == ["ok"] else "; ".join(rows)[:300]
        if rows != ["ok"]:
            problems.append(f"SQLite integrity check failed ({out['integrity'][:120]}): {repair}")
        try:
            bad = _scan_vectors(c, idx.dim, out)
        except sqlite3.DatabaseError as exc:
            bad = []
            problems.append(f"the stored vectors cannot all be read ({exc}): {repair}")
        out["damaged_vectors"] = len(bad)
        if bad:
            problems.append(f"{len(bad)} stored vector(s) are damaged (not finite unit vectors); they are left out of"
                            f" search: run `python -m plugin index` again or {repair} to re-embed them from their captions")
        try:
            fb = c.execute("SELECT COUNT(DISTINCT c.tile_id) FROM captions c JOIN rasters r ON r.captioner_fp ="
                           " c.captioner_fp JOIN tiles t ON t.tile_id = c.tile_id AND t.raster_id = r.raster_id"
                           " WHERE c.fallback IS NOT NULL").fetchone()[0] if idx.has_active else 0
            out["fallback_tiles"] = int(fb)
            if fb:
                problems.append(f"{fb} tile(s) hold fallback (spectral) captions: the next `index` run asks the captioner again")
            out["hnsw"] = idx.ann.file_state()
        except sqlite3.DatabaseError as exc:
            problems.append(f"the index cannot be read completely ({exc}): {repair}")
    out["problems"] = problems
    out["ok"] = not problems
    return out


def _scan_vectors(c: sqlite3.Connection, dim: int, out: dict[str, Any]) -> list[int]:
    bad: list[int] = []
    cur = c.execute("SELECT caption_id, vector FROM embeddings ORDER BY caption_id")
    while True:
        rows = cur.fetchmany(20_000)
        if not rows:
            return bad
        bad += decode_checked(rows, dim)[2]
        out["vectors_checked"] += len(rows)


def reembed_damaged(idx: Any, embedder: Any, caption_ids: list[int]) -> int:
    """Re-embed these captions from their stored text (damaged vectors); returns how many."""
    done = 0
    for i in range(0, len(caption_ids), 256):
        chunk = caption_ids[i : i + 256]
        q = ",".join("?" * len(chunk))
        rows = idx.conn.execute(f"SELECT caption_id, one_sentence, feature, caption FROM captions WHERE caption_id IN ({q})",
                                chunk).fetchall()
        if not rows:
            continue
        from ..types import CaptionVariant

        texts = [CaptionVariant(a, b, t).text() or "(empty)" for _, a, b, t in rows]
        vecs = np.asarray(embedder.encode_documents(texts), np.float32)
        vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        with idx.transaction() as c:
            c.executemany("UPDATE embeddings SET vector = ? WHERE caption_id = ?",
                          [(np.ascontiguousarray(v).tobytes(), int(r[0])) for r, v in zip(rows, vecs)])
        done += len(rows)
    return done


def prune_index(idx: Any, dry_run: bool = False) -> dict[str, int]:
    """Delete the caption cache: tiles of tilings no longer current and captions of captioners no
    longer used by their raster. Returns counts and the caption text bytes freed."""
    c = idx.conn
    gone_tiles = "SELECT tile_id FROM tiles WHERE active = 0"
    other = ("SELECT c.caption_id FROM captions c JOIN tiles t ON t.tile_id = c.tile_id JOIN rasters r"
             " ON r.raster_id = t.raster_id WHERE c.captioner_fp != r.captioner_fp")
    where = f"tile_id IN ({gone_tiles}) OR caption_id IN ({other})"
    n_caps, n_bytes = c.execute(
        f"SELECT COUNT(*), COALESCE(SUM(LENGTH(one_sentence) + LENGTH(feature) + LENGTH(caption)), 0) FROM captions"
        f" WHERE {where}").fetchone()
    n_tiles = c.execute(f"SELECT COUNT(*) FROM ({gone_tiles})").fetchone()[0]
    if not dry_run and (n_caps or n_tiles):
        with idx.transaction() as w:
            w.execute(f"DELETE FROM captions WHERE {where}")
            w.execute("DELETE FROM tiles WHERE active = 0")
    return {"tiles": int(n_tiles), "captions": int(n_caps), "bytes": int(n_bytes)}


# ---- repair ---------------------------------------------------------------------------------
def repair_index(folder: str, embedder: Any = None, progress: Callable[[int, int, str], None] = lambda d, t, m: None,
                 job: Optional[str] = None) -> dict[str, Any]:
    """Salvage the readable rows into a new database, re-embed missing or damaged vectors from the
    captions with `embedder` (must be the index's; None: leave them for the next `index` run),
    swap it in and keep the old database in `damaged-<time>/`. Nothing is re-captioned."""
    folder = os.path.abspath(folder)
    db_path = os.path.join(folder, S.DB_FILE)
    if not os.path.exists(db_path):
        raise IndexStoreError(f"no index database at {folder}: nothing to repair")
    with IndexLock(folder, job).acquire():
        old = S._connect_ro(db_path)
        try:
            fp, dim = _identity(old, folder)
            new_path = os.path.join(tmp_dir(folder), f"repair-{uuid.uuid4().hex}.sqlite")
            new = S.connect(new_path, readonly=False)
            try:
                S.init_db(new, fp, dim)
                report = _copy_all(old, new, dim, progress)
                report.update(_finish(new, dim, embedder, fp, progress))
            finally:
                new.close()
        finally:
            old.close()
        kept = _swap(folder, new_path)
        S.write_manifest(folder, fp, dim)
    report.update({"index_dir": folder, "old_database": kept, "embedder": fp})
    return report


def _identity(old: sqlite3.Connection, folder: str) -> tuple[str, int]:
    """The index's embedder fingerprint and dimension: from the database, else from the manifest."""
    try:
        fp, dim = S.get_meta(old, "embedder_fingerprint"), S.get_meta(old, "dim")
        if fp and dim:
            return fp, int(dim)
    except sqlite3.DatabaseError:
        pass
    m, _ = S.read_manifest(folder)
    if m and m.get("embedder_fingerprint") and m.get("dim"):
        return str(m["embedder_fingerprint"]), int(m["dim"])
    raise IndexStoreError(f"the index at {folder} is damaged beyond repair: neither the database nor the manifest says"
                          " which embedder built it")


def _ranges(old: sqlite3.Connection, table: str) -> Iterator[tuple[int, int]]:
    try:
        lo, hi = old.execute(f"SELECT MIN(rowid), MAX(rowid) FROM {table}").fetchone()
    except sqlite3.DatabaseError:
        lo, hi = 0, 1 << 24  # the b-tree's edge is damaged: probe a wide range
    if lo is None:
        return
    for a in range(int(lo), int(hi) + 1, _CHUNK):
        yield a, min(a + _CHUNK, int(hi) + 1)


def _read(old: sqlite3.Connection, table: str, a: int, b: int, lost: list[int]) -> list[tuple]:
    """Rows with rowid in [a, b); a failing range is bisected down to its unreadable rows."""
    try:
        return old.execute(f"SELECT rowid, * FROM {table} WHERE rowid >= ? AND rowid < ?", (a, b)).fetchall()
    except sqlite3.DatabaseError:
        if b - a <= 1:
            lost[0] += 1
            return []
        m = (a + b) // 2
        return _read(old, table, a, m, lost) + _read(old, table, m, b, lost)


def _copy_all(old: sqlite3.Connection, new: sqlite3.Connection, dim: int, progress: Any) -> dict[str, Any]:
    copied: dict[str, int] = {}
    unreadable: dict[str, int] = {}
    new.execute("PRAGMA foreign_keys = OFF")
    new.execute("BEGIN IMMEDIATE")
    for table in _TABLES:
        try:
            cols = [r[1] for r in old.execute(f"PRAGMA table_info({table})")]
        except sqlite3.DatabaseError:
            cols = []
        if not cols:
            unreadable[table] = -1
            continue
        have = {r[1] for r in new.execute(f"PRAGMA table_info({table})")}
        keep = [i for i, col in enumerate(cols) if col in have]
        names = ",".join(cols[i] for i in keep)
        verb = "INSERT OR REPLACE" if table == "meta" else "INSERT OR IGNORE"
        sql = f"{verb} INTO {table} ({names}) VALUES ({','.join('?' * len(keep))})"
        lost, n = [0], 0
        for a, b in _ranges(old, table):
            rows = _read(old, table, a, b, lost)
            if table == "meta":
                rows = [r for r in rows if r[1] not in ("epoch", "embedded_count", "ann_log_floor", "schema_version")]
            if table == "embeddings":
                ok = set(decode_checked([(r[1], r[2]) for r in rows], dim)[0].tolist())
                rows = [r for r in rows if r[1] in ok]
            new.executemany(sql, [tuple(r[1:][i] for i in keep) for r in rows])
            n += len(rows)
            progress(n, 0, f"repair: {table} {n} rows")
        copied[table], unreadable[table] = n, lost[0]
    # Orphans of lost parents go; the triggers keep the embedded count and the change log right.
    new.execute("DELETE FROM tiles WHERE raster_id NOT IN (SELECT raster_id FROM rasters)")
    new.execute("DELETE FROM empty_tiles WHERE raster_id NOT IN (SELECT raster_id FROM rasters)")
    new.execute("DELETE FROM captions WHERE tile_id NOT IN (SELECT tile_id FROM tiles)")
    new.execute("DELETE FROM embeddings WHERE caption_id NOT IN (SELECT caption_id FROM captions)")
    new.execute("DELETE FROM ann_log")
    S.set_meta(new, "embedded_count", str(new.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]))
    new.execute("COMMIT")
    new.execute("PRAGMA foreign_keys = ON")
    return {"copied": copied, "unreadable_rows": unreadable}


def _finish(new: sqlite3.Connection, dim: int, embedder: Any, fp: str, progress: Any) -> dict[str, Any]:
    """Re-embed the current captions of planned tiles that have no (valid) vector; mark rasters
    that lost tiles or vectors stale so the next update completes them."""
    need = new.execute(
        "SELECT c.caption_id, c.one_sentence, c.feature, c.caption FROM captions c JOIN tiles t ON t.tile_id = c.tile_id"
        " JOIN rasters r ON r.raster_id = t.raster_id AND r.captioner_fp = c.captioner_fp"
        " WHERE t.active = 1 AND c.caption_id NOT IN (SELECT caption_id FROM embeddings)").fetchall()
    out: dict[str, Any] = {"reembedded": 0, "not_reembedded": 0}
    if need and embedder is not None and getattr(embedder, "fingerprint", None) == fp:
        from ..types import CaptionVariant

        for i in range(0, len(need), 256):
            chunk = need[i : i + 256]
            vecs = np.asarray(embedder.encode_documents([CaptionVariant(a, b, c).text() or "(empty)"
                                                          for _, a, b, c in chunk]), np.float32)
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
            new.execute("BEGIN IMMEDIATE")
            new.executemany("INSERT INTO embeddings (caption_id, vector) VALUES (?, ?)",
                            [(int(r[0]), np.ascontiguousarray(v).tobytes()) for r, v in zip(chunk, vecs)])
            new.execute("COMMIT")
            out["reembedded"] += len(chunk)
            progress(out["reembedded"], len(need), "repair: re-embedding from the captions")
    else:
        out["not_reembedded"] = len(need)
    # A raster whose tiles lack captions or vectors is incomplete: "stale" makes the next update finish it.
    new.execute("BEGIN IMMEDIATE")
    new.execute(
        "UPDATE rasters SET state = 'stale' WHERE raster_id IN (SELECT t.raster_id FROM tiles t JOIN rasters r"
        " ON r.raster_id = t.raster_id LEFT JOIN captions c ON c.tile_id = t.tile_id AND c.captioner_fp = r.captioner_fp"
        " LEFT JOIN embeddings e ON e.caption_id = c.caption_id WHERE t.active = 1 AND e.caption_id IS NULL)")
    new.execute("DELETE FROM ann_log")
    new.execute("COMMIT")
    new.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return out


def _swap(folder: str, new_path: str) -> str:
    """Move the old database (and its -wal/-shm) to damaged-<time>/, the new one into place."""
    keep = os.path.join(folder, "damaged-" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(keep, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        src = os.path.join(folder, S.DB_FILE + suffix)
        if os.path.exists(src):
            shutil.move(src, os.path.join(keep, S.DB_FILE + suffix))
    for suffix in ("-wal", "-shm"):
        if os.path.exists(new_path + suffix):
            os.unlink(new_path + suffix)
    os.replace(new_path, os.path.join(folder, S.DB_FILE))
    for name in (HNSW_FILE, SIDECAR_FILE):  # from the old epoch: rebuilt from the new database on open
        if os.path.exists(os.path.join(folder, name)):
            os.unlink(os.path.join(folder, name))
    return keep
