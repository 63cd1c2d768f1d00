"""The warm searcher: embeds a query and ranks an index's tiles, reusing the loaded embedder.

Queries go through the ONNX export of the index's model (`onnx_embedder`) when there is one, so a
fresh search worker imports neither torch nor sentence-transformers; without an export (or with
SIS_EMBEDDER_BACKEND=torch) they go through the torch embedder, as indexing does.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import unicodedata
from typing import Any, Optional, Sequence

from ..errors import EngineError, IndexStoreError, QueryError
from ..types import Hit

#: Queries are cut to this many characters: embedders only see their first few hundred tokens anyway.
MAX_QUERY_CHARS = 4000


def clean_query(query: Optional[str]) -> str:
    """The query with control, format and unpaired-surrogate characters blanked and the ends trimmed.

    A query of only such characters is empty (it used to reach the embedder and return noise);
    tokenizers drop them anyway, so a query that has words in it embeds as before.
    """
    text = str(query or "")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in text):
        text = "".join(" " if unicodedata.category(c) in ("Cc", "Cf", "Cs") else c for c in text)
    return text.strip()


_EMBEDDERS: dict[tuple[Optional[str], str, str], Any] = {}
_EMBEDDERS_LOCK = threading.Lock()


def cached_embedder(spec: Optional[str] = None, device: str = "auto", document_graph: str = "fp32") -> Any:
    """One loaded embedder per (model, device, document graph) and process: loading MiniLM costs
    seconds, a query milliseconds. `document_graph`: the index's (document_graph.py)."""
    from ..embedding.embedder import make_embedder

    key = (spec, device, document_graph)
    with _EMBEDDERS_LOCK:
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = make_embedder(spec, device=device, document_graph=document_graph)
        return _EMBEDDERS[key]


_QUERY_EMBEDDERS: dict[tuple[Optional[str], str, Optional[str]], Any] = {}


def cached_query_embedder(spec: Optional[str], device: str, index_fingerprint: Optional[str]) -> Any:
    """The embedder for queries against an index with this embedder fingerprint, loaded once per process.

    The ONNX export when it exists (torch-free, CPU whatever `device` says: one sentence is
    milliseconds); else the torch embedder of `cached_embedder`, whose load also makes the export.
    """
    key = (spec, device, index_fingerprint)
    with _EMBEDDERS_LOCK:
        if key in _QUERY_EMBEDDERS:
            return _QUERY_EMBEDDERS[key]
    from ..embedding.embedder import model_identity, resolve_spec
    from ..embedding.onnx_embedder import query_embedder

    emb = query_embedder(model_identity(resolve_spec(spec)), index_fingerprint)
    if emb is None:
        emb = cached_embedder(spec, device)
    with _EMBEDDERS_LOCK:
        return _QUERY_EMBEDDERS.setdefault(key, emb)


def _manifest_fingerprint(index_dir: str) -> Optional[str]:
    """The index's embedder fingerprint: from the manifest, else (broken manifest) from the database."""
    from ..store import store_schema as S

    fp = (S.read_manifest(index_dir)[0] or {}).get("embedder_fingerprint")
    if isinstance(fp, str):
        return fp
    try:
        conn = S.connect(os.path.join(index_dir, S.DB_FILE), readonly=True)
    except EngineError:
        return None
    try:
        return S.get_meta(conn, "embedder_fingerprint")
    except sqlite3.DatabaseError:
        return None
    finally:
        conn.close()


def open_index_for(index_dir: str, embedder: Any, *, create: bool, allow_new_embedder: bool = False,
                   readonly: bool = False, lock: Any = None) -> Any:
    """Open the index at `index_dir` checked against (or switched to) this embedder."""
    from ..store.store import SearchIndex

    return SearchIndex.open(
        index_dir,
        create=create,
        embedder_fingerprint=embedder.fingerprint,
        dim=embedder.dim,
        allow_new_embedder=allow_new_embedder,
        readonly=readonly,
        lock=lock,
    )


class Searcher:
    """Embeds queries and searches one index; the embedder is loaded once and reused.

    The index is reopened when its files change, so a warm searcher sees what a running indexing
    job has committed since the last query.
    """

    def __init__(self, index_dir: str, embedder: Optional[str] = None, device: str = "auto") -> None:
        self.index_dir = index_dir
        self._embedder_spec = embedder
        self._device = device
        self._emb: Any = None
        self._idx: Any = None
        self._stamp: tuple = ()

    def _files_stamp(self) -> tuple:
        """What forces a reopen: a new manifest (embedder switch) or a re-created database.

        Everything else -- commits by a running job, a rewritten hnsw file, a trimmed change log --
        the open index applies itself on each search (`SearchIndex.search` syncs first), so a warm
        searcher never reloads the ANN file while a job runs.
        """
        out = []
        for name in ("manifest.json", "index.sqlite"):
            try:
                st = os.stat(os.path.join(self.index_dir, name))
            except FileNotFoundError:
                continue
            out.append((name, st.st_ino, st.st_size if name == "manifest.json" else 0, st.st_mtime_ns if name == "manifest.json" else 0))
        return tuple(out)

    def _ensure(self) -> Any:
        if not os.path.exists(os.path.join(self.index_dir, "index.sqlite")):
            raise IndexStoreError(f"no search index at {self.index_dir}: index some rasters first")
        stamp = self._files_stamp()
        if self._emb is None or stamp != self._stamp:
            fp = _manifest_fingerprint(self.index_dir)
            self._emb = cached_query_embedder(self._embedder_spec, self._device, fp)
        if self._idx is None or stamp != self._stamp:
            if self._idx is not None:
                self._idx.close()
            # Searching never writes: read-only media, another user's folder and a running job are fine.
            self._idx = open_index_for(self.index_dir, self._emb, create=False, readonly=True)
            self._stamp = stamp
        return self._idx

    def search(
        self,
        query: str,
        *,
        top: int = 10,
        fusion: str = "max",
        rasters: Optional[Sequence[str]] = None,
        bbox: Optional[tuple[float, float, float, float]] = None,
        bbox_crs: Optional[str] = None,
        min_score: Optional[float] = None,
        suppress_overlaps: bool = False,
        ranker: Optional[str] = None,
        like: Optional[str] = None,
    ) -> list[Hit]:
        """Rank tiles for a query (negative terms allowed, see query.py) or, with `like`
        ("RASTER:COL,ROW[,SCALE]"), for similarity to that tile (the query text is then ignored)."""
        from .query import parse_query

        text = clean_query(query)
        if not text and not like:
            raise QueryError("the query is empty: describe what you are looking for, e.g. 'sandy beach next to the sea'")
        if top < 1:
            raise QueryError(f"top must be at least 1 (got {top})")
        from ..store.store_schema import db_errors

        with db_errors(self.index_dir):  # a damaged database: one line naming `repair`, not a traceback
            parsed = parse_query(text[:MAX_QUERY_CHARS]) if not like else None
            idx = self._ensure()
            raster_ids = None
            if rasters:
                raster_ids = []
                for key in rasters:
                    found = idx.find_raster_ids(os.path.abspath(key) if os.path.exists(key) else key)
                    raster_ids.extend(found)
                if not raster_ids:
                    return []
            opts: dict[str, Any] = dict(top=top, fusion=fusion, raster_ids=raster_ids, bbox=bbox, bbox_crs=bbox_crs,
                                        min_score=min_score, suppress_overlaps=suppress_overlaps)
            if like:
                from .similar import parse_like, search_like

                return search_like(idx, *parse_like(like), **opts)
            assert parsed is not None
            vecs = self._emb.encode_queries([parsed.text, *parsed.negatives])
            negatives = list(zip(parsed.negatives, vecs[1:]))
            return idx.search(vecs[0], ranker=ranker, query_text=parsed.text, negatives=negatives or None, **opts)

    def close(self) -> None:
        if self._idx is not None:
            self._idx.close()
            self._idx = None

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
