"""Embedding rows and the ANN log as the hnsw index reads them from SQLite: decoding and checking
stored vectors, the log's sequence numbers, and one consistent read snapshot."""

from __future__ import annotations

import contextlib
import sqlite3
from typing import Iterator

import numpy as np

__all__ = ["UNIT_TOLERANCE", "count_embedded", "decode_checked", "log_floor", "max_seq", "snapshot", "vector_ok"]

#: A stored vector whose norm is further than this from 1 is damaged (float32 rounding is ~1e-7).
UNIT_TOLERANCE = 1e-3


def vector_ok(vecs: np.ndarray) -> np.ndarray:
    """Rows that are finite unit vectors (what the store writes); anything else is damage."""
    with np.errstate(all="ignore"):
        norms = np.linalg.norm(vecs.astype(np.float64), axis=1)
    return np.isfinite(vecs).all(axis=1) & (np.abs(norms - 1.0) < UNIT_TOLERANCE)


@contextlib.contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction (a consistent snapshot), unless the caller already holds one."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def count_embedded(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'embedded_count'").fetchone()
    return int(row[0]) if row else 0


def _blobs_to_array(rows: list, dim: int) -> np.ndarray:
    buf = b"".join(r[1] for r in rows)
    arr = np.frombuffer(buf, dtype=np.float32)
    if arr.size != len(rows) * dim:
        raise ValueError(f"stored embeddings do not have dimension {dim}")
    return arr.reshape(len(rows), dim)


def decode_checked(rows: list, dim: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(caption ids, vectors, damaged caption ids) of (caption_id, blob) rows: a blob of the wrong
    size, or not a finite unit vector, is damage (it would rank first with a score of 1e37)."""
    sized = [r for r in rows if isinstance(r[1], (bytes, bytearray, memoryview)) and len(r[1]) == dim * 4]
    bad = [int(r[0]) for r in rows if not (isinstance(r[1], (bytes, bytearray, memoryview)) and len(r[1]) == dim * 4)]
    if not sized:
        return np.zeros(0, np.int64), np.zeros((0, dim), np.float32), bad
    vecs = _blobs_to_array(sized, dim)
    ids = np.fromiter((r[0] for r in sized), dtype=np.int64, count=len(sized))
    ok = vector_ok(vecs)
    if not ok.all():
        bad += ids[~ok].tolist()
        ids, vecs = ids[ok], vecs[ok]
    return ids, vecs, bad


def max_seq(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT MAX(seq) FROM ann_log").fetchone()
    floor = log_floor(conn)
    return max(int(row[0] or 0), floor)


def log_floor(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'ann_log_floor'").fetchone()
    return int(row[0]) if row else 0
