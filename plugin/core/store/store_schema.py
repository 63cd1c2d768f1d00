"""The index database schema and the folder's manifest: the one place that defines their layout.

Caption ids are AUTOINCREMENT so an id is never reused: a stale hnswlib file can then never
mistake a new caption for a deleted one. Triggers on `embeddings` append every change to `ann_log`
inside the writer's transaction, which is what lets the ANN file be reconciled after any crash.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import time
import uuid
from typing import Any, Iterator, Optional

from ..errors import IndexStoreError

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
DB_FILE = "index.sqlite"
METRIC = "cosine"
BUSY_TIMEOUT_MS = 30_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rasters (
    raster_id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    name TEXT NOT NULL,
    crs_wkt TEXT,
    info TEXT NOT NULL,
    captioner_fp TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rasters_path ON rasters(path);
CREATE TABLE IF NOT EXISTS tiles (
    tile_id TEXT PRIMARY KEY,
    raster_id TEXT NOT NULL REFERENCES rasters(raster_id) ON DELETE CASCADE,
    col_off INTEGER NOT NULL, row_off INTEGER NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
    scale INTEGER NOT NULL,
    footprint TEXT NOT NULL,
    minx REAL, miny REAL, maxx REAL, maxy REAL,
    active INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS tiles_raster ON tiles(raster_id);
CREATE TABLE IF NOT EXISTS captions (
    caption_id INTEGER PRIMARY KEY AUTOINCREMENT,
    tile_id TEXT NOT NULL REFERENCES tiles(tile_id) ON DELETE CASCADE,
    captioner_fp TEXT NOT NULL,
    variant_index INTEGER NOT NULL,
    one_sentence TEXT NOT NULL,
    feature TEXT NOT NULL,
    caption TEXT NOT NULL,
    created_at REAL NOT NULL,
    fallback TEXT,
    UNIQUE (tile_id, captioner_fp, variant_index)
);
CREATE TABLE IF NOT EXISTS empty_tiles (
    tile_id TEXT PRIMARY KEY,
    raster_id TEXT NOT NULL REFERENCES rasters(raster_id) ON DELETE CASCADE,
    min_valid REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS empty_tiles_raster ON empty_tiles(raster_id);
CREATE TABLE IF NOT EXISTS embeddings (
    caption_id INTEGER PRIMARY KEY REFERENCES captions(caption_id) ON DELETE CASCADE,
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS ann_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    caption_id INTEGER NOT NULL,
    op INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS embeddings_ins AFTER INSERT ON embeddings BEGIN
    INSERT INTO ann_log (caption_id, op) VALUES (NEW.caption_id, 1);
    UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'embedded_count';
END;
CREATE TRIGGER IF NOT EXISTS embeddings_upd AFTER UPDATE ON embeddings
    BEGIN INSERT INTO ann_log (caption_id, op) VALUES (NEW.caption_id, 1); END;
CREATE TRIGGER IF NOT EXISTS embeddings_del AFTER DELETE ON embeddings BEGIN
    INSERT INTO ann_log (caption_id, op) VALUES (OLD.caption_id, 0);
    UPDATE meta SET value = CAST(value AS INTEGER) - 1 WHERE key = 'embedded_count';
END;
"""


def connect(path: str, readonly: bool) -> sqlite3.Connection:
    """Autocommit connection (transactions are explicit) with WAL, foreign keys and a busy timeout.

    Read-only opens never write: on read-only media (or a folder this user may not write) a WAL
    database cannot create its -shm file, so the database is then opened `immutable` (nobody can
    be writing it from here anyway)."""
    try:
        if readonly:
            conn = _connect_ro(path)
        else:
            conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise db_error(exc, os.path.dirname(path), "cannot be opened") from None
    return conn


def _connect_ro(path: str) -> sqlite3.Connection:
    from pathlib import Path

    uri = Path(path).absolute().as_uri()
    last: Optional[sqlite3.DatabaseError] = None
    for query in ("?mode=ro", "?mode=ro&immutable=1"):
        try:
            conn = sqlite3.connect(uri + query, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000,
                                   check_same_thread=False)
        except sqlite3.OperationalError as exc:
            last = exc
            continue
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError as exc:  # e.g. "unable to open database file": no -shm possible here
            conn.close()
            last = exc
    assert last is not None
    raise last


def db_error(exc: BaseException, folder: str, doing: str = "is damaged") -> IndexStoreError:
    """One line with the next step for an SQLite error: disk full, locked, or damaged (-> repair)."""
    from ..errors import DiskFullError

    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    low = text.lower()
    try:
        free_b = shutil.disk_usage(folder).free
    except OSError:
        free_b = -1
    if "disk is full" in low or "disk full" in low or ("i/o error" in low and 0 <= free_b < (1 << 20)):
        free = f"{free_b / 1e6:.1f} MB free" if free_b >= 0 else "no space left"
        return DiskFullError(f"disk full: the index at {folder} cannot grow ({free}); free some space on that disk and"
                             " run again (what was committed is kept)")
    if "locked" in low or "busy" in low:
        return IndexStoreError(f"the index database at {folder} is busy ({text}); try again when the other job is done")
    if "readonly" in low or "read-only" in low:
        return IndexStoreError(f"the index at {folder} is read-only here ({text}); searching works, indexing needs write access")
    if "i/o error" in low:
        return IndexStoreError(f"the index database at {folder} could not be read or written ({text}): check that disk or"
                               f" network share; if it persists, run `python -m plugin repair --index {folder}`")
    if "unable to open" in low:
        return IndexStoreError(f"the index database at {folder} cannot be opened ({text}); check the folder exists and is readable")
    return IndexStoreError(
        f"the index database at {folder} {doing} ({text}); run `python -m plugin repair --index {folder}`"
        " to salvage it without re-captioning"
    )


@contextlib.contextmanager
def db_errors(folder: str) -> Iterator[None]:
    """Turn raw sqlite3 errors escaping an index operation into one-line `IndexStoreError`s."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        raise db_error(exc, folder) from None


def has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    return any(r[1] == column for r in conn.execute(f"PRAGMA table_info({table})"))


def migrate(conn: sqlite3.Connection) -> None:
    """Bring an older database up to the current layout (additive, idempotent, one transaction).

    Steps test for what they add rather than a version number, so they compose with other
    additive migrations in any order."""
    steps = []
    if not has_column(conn, "tiles", "active"):
        steps.append("ALTER TABLE tiles ADD COLUMN active INTEGER NOT NULL DEFAULT 1")
    if not has_column(conn, "captions", "fallback"):
        steps.append("ALTER TABLE captions ADD COLUMN fallback TEXT")
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'empty_tiles'").fetchone() is None:
        steps += [s for s in _statements(SCHEMA) if "empty_tiles" in s]
    if not steps:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for stmt in steps:
            conn.execute(stmt)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def init_db(conn: sqlite3.Connection, embedder_fp: str, dim: int) -> None:
    """Create the schema once; an initialised database is left alone without taking the write lock
    (searchers open the index while a job writes)."""
    try:
        if get_meta(conn, "schema_version") is not None:
            return
    except sqlite3.OperationalError:
        pass  # no meta table yet
    conn.execute("BEGIN IMMEDIATE")
    try:
        for stmt in _statements(SCHEMA):
            conn.execute(stmt)
        existing = get_meta(conn, "schema_version")
        if existing is None:
            set_meta(conn, "schema_version", str(SCHEMA_VERSION))
            set_meta(conn, "embedder_fingerprint", embedder_fp)
            set_meta(conn, "dim", str(int(dim)))
            set_meta(conn, "epoch", uuid.uuid4().hex)
            set_meta(conn, "created_at", str(time.time()))
            set_meta(conn, "embedded_count", "0")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """Split the schema into statements (triggers contain ';' inside BEGIN ... END)."""
    out, buf = [], []
    for line in script.strip().splitlines():
        buf.append(line)
        text = "\n".join(buf).strip()
        if text.endswith(";") and (not text.upper().startswith("CREATE TRIGGER") or text.upper().endswith("END;")):
            out.append(text)
            buf = []
    return out


def embedded_count(conn: sqlite3.Connection) -> int:
    """Number of embeddings rows, kept by triggers: COUNT(*) would read every vector page."""
    return int(get_meta(conn, "embedded_count") or 0)


def get_meta(conn: sqlite3.Connection, key: str) -> Optional[str]:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                 (key, value))


def read_manifest(folder: str) -> tuple[Optional[dict[str, Any]], str]:
    """(manifest, problem): (None, "") when there is none; (None, why) when it is unreadable.

    The manifest only repeats what the database's meta table holds, so a broken one is rebuilt
    from the database (`write_manifest`), never a reason to give an index up."""
    path = os.path.join(folder, MANIFEST_FILE)
    if not os.path.exists(path):
        return None, ""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        return None, f"the index manifest {path} is unreadable ({str(exc)[:80]})"
    if not isinstance(data, dict) or not data.get("embedder_fingerprint"):
        return None, f"the index manifest {path} is not a manifest"
    return data, ""


def write_manifest(folder: str, embedder_fp: str, dim: int) -> None:
    from .ann_files import atomic_write_text

    data = {
        "format": "semantic-imagery-search index",
        "schema_version": SCHEMA_VERSION,
        "embedder_fingerprint": embedder_fp,
        "dim": int(dim),
        "metric": METRIC,
        "database": DB_FILE,
        "ann": "captions.hnsw",
    }
    atomic_write_text(os.path.join(folder, MANIFEST_FILE), json.dumps(data, indent=2) + "\n")
