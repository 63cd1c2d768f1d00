"""The hnswlib file: a derived, crash-safe cache of the embeddings stored in SQLite.

SQLite is the truth. Every insert, update or delete of an embedding row appends to `ann_log`
(by triggers, in the same transaction), so the ANN index never has to be trusted: the file is saved
with a sidecar recording the last log sequence it contains, the database epoch, and the file's size,
mtime and CRC. On load the sidecar is checked against the file and the database; a file that is
missing, corrupt, from another epoch or whose log entries were truncated is rebuilt from the stored
embeddings, and a merely stale one is brought up to date by replaying the log -- in memory, so
readers never write. Labels are caption ids.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from typing import Any, Callable, Optional

import numpy as np

from ..errors import IndexStoreError
from .ann_files import (
    atomic_write_text,
    crc_file,
    disk_full,
    disk_full_error,
    header_ok,
    layout_problem,
    tmp_name,
)
from .ann_rows import count_embedded, decode_checked, log_floor, max_seq, snapshot

__all__ = ["AnnIndex", "HNSW_FILE", "SIDECAR_FILE", "query_ef"]

HNSW_FILE = "captions.hnsw"
SIDECAR_FILE = "captions.hnsw.json"
SIDECAR_FORMAT = 1
#: Graph parameters: a dense graph (M=32) for 384-d text embeddings; the rest of the recall is bought with ef.
M = 32
EF_CONSTRUCTION = 200
#: Default query-time ef (a floor); oversampled queries run with the EF_RULE.
EF_SEARCH = 256
#: Query ef for an oversampled k by index size: (up to this many labels, ef as a multiple of k).
#: Measured (benchmarks/RESULTS.md, issue 12 item 4: realistic data) on vectors shaped like real caption
#: embeddings: 2k keeps recall@10 >= 0.98 at 100k and 200k; at 1M 2k gives 0.982-0.986 and 3k
#: 0.986 (exact ties counted 0.998-1.0) at 26-28x numpy brute force. It was 4k above 250k and 8k
#: above 500k, set on isotropic-noise vectors (the graph's worst case, 3x the intrinsic dimension of
#: captions), where 3k gives recall 0.90 at 1M instead of 0.98.
EF_RULE: tuple[tuple[float, int], ...] = ((500_000, 2), (float("inf"), 3))
#: Files up to this size are checksummed whole on load (corruption -> rebuild, never a crash).
CRC_LIMIT = 1 << 30
#: Rebuild compacted on save once this share of the graph is deleted labels.
MAX_DELETED_SHARE = 0.3
_CHUNK = 20_000


def query_ef(k: int, active: int, ef: Optional[int] = None) -> int:
    """The hnswlib ef a k-nearest query over `active` labels runs with: `ef`, or the size rule; never below k.

    The rule (EF_RULE) was measured in benchmarks/search_latency.py (RESULTS.md, issue 12).
    """
    if ef is None:
        ef = k * next((f for limit, f in EF_RULE if active <= limit), EF_RULE[-1][1])
    return max(EF_SEARCH, int(ef), int(k))


class AnnIndex:
    """hnswlib index over caption embeddings (inner product on unit vectors = cosine).

    `state` says how the in-memory index came to be: "loaded", "replayed" (file + log),
    "rebuilt:<why>" or "empty"; `stats()` exposes it so staleness is visible to users.
    """

    def __init__(self, folder: str, dim: int, epoch: str) -> None:
        self.folder = folder
        self.dim = int(dim)
        self.epoch = epoch
        self.index: Any = None
        self.last_seq = 0
        self.state = "empty"
        #: True when the in-memory index differs from the saved file (a writer should save it).
        self.dirty = False
        #: Labels not marked deleted (what a query can return).
        self.active = 0
        #: Caption ids whose stored vector is damaged (left out of the graph; re-embed them).
        self.bad: set[int] = set()

    # ---- construction -------------------------------------------------------------------------
    def _new(self, capacity: int) -> Any:
        import hnswlib

        idx = hnswlib.Index(space="ip", dim=self.dim)
        idx.init_index(max_elements=max(1024, int(capacity)), ef_construction=EF_CONSTRUCTION, M=M)
        idx.set_ef(EF_SEARCH)
        return idx

    @property
    def path(self) -> str:
        return os.path.join(self.folder, HNSW_FILE)

    @property
    def sidecar_path(self) -> str:
        return os.path.join(self.folder, SIDECAR_FILE)

    def load(self, conn: sqlite3.Connection) -> None:
        """Load the saved file and replay the log, or rebuild from `conn`'s embeddings when needed."""
        why = self._try_load(conn)
        if why:
            self.rebuild(conn, why)
            return
        floor = log_floor(conn)
        if self.last_seq < floor:
            self.rebuild(conn, "log truncated past the saved file")
            return
        n = self.sync(conn)
        self.state = "replayed" if n else "loaded"
        if self.active + len(self.bad) != count_embedded(conn):
            # The index must mirror the embeddings table exactly; anything else is a damaged pair.
            self.rebuild(conn, "label count does not match the database")

    def _try_load(self, conn: sqlite3.Connection) -> Optional[str]:
        import hnswlib

        if not os.path.exists(self.path):
            return "missing"
        try:
            with open(self.sidecar_path, encoding="utf-8") as f:
                side = json.load(f)
        except (OSError, ValueError):
            return "no sidecar"
        try:
            st = os.stat(self.path)
            if (
                side.get("format") != SIDECAR_FORMAT
                or side.get("dim") != self.dim
                or side.get("epoch") != self.epoch
                or side.get("size") != st.st_size
                or side.get("mtime_ns") != st.st_mtime_ns
            ):
                return "sidecar does not match"
            if st.st_size <= CRC_LIMIT and side.get("crc32") != crc_file(self.path):
                return "checksum mismatch (corrupt)"
            if not header_ok(self.path, self.dim):
                return "corrupt header"
            idx = hnswlib.Index(space="ip", dim=self.dim)
            idx.load_index(self.path, max_elements=int(side.get("max_elements", 0)))
        except (OSError, RuntimeError, ValueError, MemoryError) as exc:
            return f"unreadable ({str(exc)[:80]})"
        if idx.element_count != side.get("elements"):
            return "element count does not match"
        idx.set_ef(EF_SEARCH)
        self.index = idx
        self.last_seq = int(side.get("log_seq", 0))
        self.active = int(side.get("active", -1))
        self.bad = {int(c) for c in side.get("bad", [])}
        self.dirty = False
        return None

    def rebuild(self, conn: sqlite3.Connection, why: str = "rebuild", progress: Optional[Callable[[int, int], None]] = None) -> None:
        """Build the whole index from the stored embeddings (one consistent read snapshot)."""
        with snapshot(conn):
            seq = max_seq(conn)
            total = count_embedded(conn)
            idx = self._new(total)
            done, seen = 0, 0
            bad: set[int] = set()
            cur = conn.execute("SELECT caption_id, vector FROM embeddings ORDER BY caption_id")
            while True:
                rows = cur.fetchmany(_CHUNK)
                if not rows:
                    break
                ids, vecs, wrong = decode_checked(rows, self.dim)
                bad.update(wrong)
                if len(ids):
                    idx.add_items(vecs, ids)
                done += len(ids)
                seen += len(rows)
                if progress:
                    progress(seen, total)
        self.index = idx
        self.bad = bad
        self.last_seq = seq
        self.active = done
        self.state = f"rebuilt: {why}"
        self.dirty = True

    # ---- keeping up with the database ----------------------------------------------------------
    def sync(self, conn: sqlite3.Connection) -> int:
        """Apply log entries newer than what the index holds; returns how many labels changed.

        Runs in one read transaction so the log and the vectors it points to are one snapshot.
        """
        if self.index is None:
            self.rebuild(conn, "not loaded")
            return 0
        if self.last_seq < log_floor(conn):
            # A writer saved a newer file and trimmed the log: start from that file.
            self.load(conn)
            return self.element_count
        with snapshot(conn):
            rows = conn.execute("SELECT seq, caption_id, op FROM ann_log WHERE seq > ? ORDER BY seq", (self.last_seq,)).fetchall()
            if not rows:
                return 0
            last: dict[int, int] = {}
            for _seq, cid, op in rows:
                last[int(cid)] = int(op)
            adds = [c for c, op in last.items() if op == 1]
            dels = [c for c, op in last.items() if op == 0]
            self.bad.difference_update(dels)
            for cid in dels:
                try:
                    self.index.mark_deleted(cid)
                    self.active -= 1
                except RuntimeError:
                    pass  # never added, or already deleted: both mean "not searchable", as wanted
            for i in range(0, len(adds), 500):
                chunk = adds[i : i + 500]
                q = ",".join("?" * len(chunk))
                found = conn.execute(f"SELECT caption_id, vector FROM embeddings WHERE caption_id IN ({q})", chunk).fetchall()
                ids, vecs, wrong = decode_checked(found, self.dim)
                self.bad.difference_update(c for c in chunk)
                self.bad.update(wrong)
                for cid in wrong:  # a rewritten row that is now damaged: its old vector must go too
                    try:
                        self.index.mark_deleted(cid)
                        self.active -= 1
                    except RuntimeError:
                        pass
                if len(ids):
                    self.add(ids, vecs)
            self.last_seq = int(rows[-1][0])
        self.dirty = True
        return len(last)

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        """Add or update labels (an existing or deleted label is updated in place by hnswlib)."""
        for label in labels.tolist():
            if not self._is_active(label):
                self.active += 1
        need = self.index.element_count + len(labels)
        if need > self.index.get_max_elements():
            self.index.resize_index(max(need, 2 * self.index.get_max_elements()))
        self.index.add_items(np.ascontiguousarray(vectors, np.float32), labels)

    def _is_active(self, label: int) -> bool:
        try:
            self.index.get_items([label])
            return True
        except RuntimeError:
            return False

    @property
    def element_count(self) -> int:
        return int(self.index.element_count) if self.index is not None else 0

    def deleted_estimate(self, conn: sqlite3.Connection) -> int:
        """Deleted labels still in the graph = elements - embeddings (the index mirrors the table)."""
        return max(0, self.element_count - count_embedded(conn))

    # ---- queries ------------------------------------------------------------------------------
    def query(self, vector: np.ndarray, k: int, ef: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
        """k nearest labels and their cosine similarities (best first); k is capped by the active count.

        `ef` (search breadth) defaults to the EF_RULE (2k, 3k above 500k labels), at least EF_SEARCH; more buys recall for latency."""
        k = min(int(k), int(self.active))
        if self.index is None or k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        self.index.set_ef(query_ef(k, self.active, ef))
        q = np.ascontiguousarray(vector, np.float32).reshape(1, -1)
        while True:
            try:
                labels, dist = self.index.knn_query(q, k=k)
                break
            except RuntimeError:
                # Fewer reachable labels than k (deleted ones are skipped): ask for fewer.
                if k <= 1:
                    return np.zeros(0, np.int64), np.zeros(0, np.float32)
                k = max(1, k // 2)
        return labels[0].astype(np.int64), (1.0 - dist[0]).astype(np.float32)

    # ---- persistence --------------------------------------------------------------------------
    def save(self, conn: sqlite3.Connection) -> None:
        """Write the file atomically (tmp + os.replace), then its sidecar; compact if mostly deleted."""
        if self.index is None:
            return
        self.sync(conn)
        if not self.dirty and os.path.exists(self.path):
            return  # the file already holds exactly this
        deleted = self.deleted_estimate(conn)
        if self.element_count and deleted > MAX_DELETED_SHARE * self.element_count:
            self.rebuild(conn, "compacting deleted labels")
        need = self.expected_size()
        try:
            free = shutil.disk_usage(self.folder).free
        except OSError:
            free = need
        if free < need:  # fail before writing a byte; the old file stays as it is
            raise disk_full_error(self.folder, need)
        tmp = tmp_name(self.folder, "captions-", ".hnsw")
        try:
            self.index.save_index(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            # hnswlib writes with unchecked streams: a full disk leaves a short file without an error.
            # Verify the written layout before it replaces anything.
            why = layout_problem(tmp, self.dim, self.element_count)
            if why:
                if shutil.disk_usage(self.folder).free < need // 8 + (1 << 20):
                    raise disk_full_error(self.folder, need)
                raise IndexStoreError(f"writing the search file {tmp} failed verification ({why}); the previous file was kept")
            crc = crc_file(tmp) if os.path.getsize(tmp) <= CRC_LIMIT else None
            os.replace(tmp, self.path)
        except BaseException as exc:
            if os.path.exists(tmp):
                os.unlink(tmp)
            if disk_full(exc):
                raise disk_full_error(self.folder, need) from None
            raise
        st = os.stat(self.path)
        side = {
            "format": SIDECAR_FORMAT, "dim": self.dim, "epoch": self.epoch, "log_seq": self.last_seq,
            "elements": self.element_count, "active": self.active, "max_elements": int(self.index.get_max_elements()),
            "size": st.st_size, "mtime_ns": st.st_mtime_ns, "crc32": crc, "M": M, "ef_construction": EF_CONSTRUCTION,
            "bad": sorted(self.bad),
        }
        atomic_write_text(self.sidecar_path, json.dumps(side))
        self.dirty = False

    def expected_size(self) -> int:
        """About what `save` writes: the level-0 graph and vectors of every element, plus upper links."""
        per = 2 * M * 4 + 4 + self.dim * 4 + 8
        return 96 + self.element_count * (per + 4) + self.element_count // max(1, M) * (M * 4 + 4)

    def file_state(self) -> dict[str, Any]:
        return {
            "state": self.state, "elements": self.element_count, "log_seq": self.last_seq,
            "file": os.path.exists(self.path), "unsaved_changes": self.dirty,
        }


