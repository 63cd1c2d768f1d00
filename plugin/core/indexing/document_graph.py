"""Which graph embeds an index's caption variants (its documents): "fp32" or "int8", decided per index.

Why per index: the int8 graph (embedding/onnx_export.ensure_int8) embeds documents ~1.6x faster
than the fp32 graph on a CPU (~1.9x torch), but its vectors differ from the fp32 / torch ones by a
small per-text amount (worst cosine to torch ~0.99; a query's score moves by std 0.006, without
bias: benchmarks/RESULTS.md, "third pass"). So that an index's vectors are reproducible and never
mix two graphs unknowingly, the index records the graph it was built with (meta key
`document_graph`; an index from before this has none and is fp32), every later run embeds its
documents with that graph whatever the executor or device (a GPU run on an int8 index runs the
int8 graph on the CPU), and a request that contradicts the record is refused with one line.
Queries always go through the fp32 graph: the fingerprint is the same for both.

The record may change only while the index holds no document vector (a new index, or one emptied).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from typing import Any, Optional

from ..definitions import DOCUMENT_GRAPHS, check_graph
from ..errors import EngineError

__all__ = ["GRAPHS", "META_KEY", "check_graph", "choose_graph", "default_graph", "recorded_graph", "record_graph"]

log = logging.getLogger(__name__)

GRAPHS = DOCUMENT_GRAPHS
META_KEY = "document_graph"
#: Deprecated alias of `--document-graph int8` (the opt-in switch before the graph was recorded per index).
_ENV_ALIAS = "SIS_DOCUMENTS_INT8"


def default_graph(executor: str, device: str) -> str:
    """The graph of a new index nobody asked about: int8 where documents are embedded on a CPU.

    The local executor embeds on `device` (an accelerator keeps torch's fp32 vectors: it is faster
    there). Ray executors embed in actors that hold no GPU, so on CPUs. $SIS_DOCUMENTS_INT8 (the old
    opt-in switch, deprecated) still picks int8 (1) or fp32 (0) for a new index."""
    alias = os.environ.get(_ENV_ALIAS, "").strip().lower()
    if alias in ("1", "true", "yes", "on"):
        return "int8"
    if alias in ("0", "false", "no", "off"):
        return "fp32"
    if executor != "local":
        return "int8"
    from ..env.devices import resolve_device

    return "int8" if resolve_device(device) == "cpu" else "fp32"


def recorded_graph(index_dir: str) -> tuple[Optional[str], int]:
    """(recorded graph, document vectors held) of the index at `index_dir`; (None, 0) when there is none.

    An index from before the record (no key) holding vectors reads as "fp32": that is what built it."""
    from ..store import store_schema as S

    path = os.path.join(index_dir, S.DB_FILE)
    if not os.path.exists(path):
        return None, 0
    try:
        conn = S.connect(path, readonly=True)
    except EngineError:
        return None, 0
    try:
        value = S.get_meta(conn, META_KEY)
        count = S.embedded_count(conn)
    except sqlite3.DatabaseError:  # no meta table yet (a first job is creating it), or damage: open says which
        return None, 0
    finally:
        conn.close()
    if value not in GRAPHS:
        value = "fp32" if count else None
    return value, count


def choose_graph(index_dir: str, requested: Optional[str], executor: str, device: str) -> str:
    """The graph this run embeds documents with: the index's record, else the request, else the default."""
    want = check_graph(requested)
    recorded, count = recorded_graph(index_dir)
    if recorded is not None and count:
        if want is not None and want != recorded:
            raise EngineError(f"the index at {index_dir} holds {count} document vectors from the {recorded} graph: "
                              f"--document-graph {want} applies only to a new index (index into a new folder)")
        return recorded
    return want or default_graph(executor, device)


def record_graph(idx: Any, graph: str) -> None:
    """Write the graph into the index's meta table (the writer's open `SearchIndex`), if not there yet."""
    from ..store import store_schema as S

    if S.get_meta(idx.conn, META_KEY) == graph:
        return
    with idx.transaction() as c:
        S.set_meta(c, META_KEY, graph)


def index_graph(conn: sqlite3.Connection) -> str:
    """What `info` shows: the recorded graph, "fp32" for an index from before the record."""
    from ..store import store_schema as S

    value = S.get_meta(conn, META_KEY)
    return value if value in GRAPHS else "fp32"
