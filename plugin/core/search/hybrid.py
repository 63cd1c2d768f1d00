"""Rankers: dense cosine, lexical bm25, or both fused per caption variant (then per tile, as before).

The fusion rule is the one the captions-only proxies chose (benchmarks/RESULTS.md, "Hybrid
ranking"): a variant's hybrid score is its cosine plus a lexical bonus, `weight * bm25 / best
bm25 of the query`. Dividing by the query's best bm25 makes the bonus scale-free (bm25 grows
with the corpus through its IDF; a cosine does not) and it is exact on candidates: the best bm25
is the first row FTS5 returns. Per-query z-scores, the other rule tried, need the score
distribution over the whole index, which a top-k search never sees.

The same functions score the evaluation harness's matrices and the index's candidates, so what
the proxies measured is what `search()` does.
"""

from __future__ import annotations

import sqlite3
from typing import Optional, Sequence

import numpy as np

from ..errors import QueryError
from ..store import lexical as L

__all__ = ["RANKERS", "DEFAULT_RANKER", "HYBRID_WEIGHT", "check_ranker", "lexical_bonus", "bm25_matrix",
           "ranker_scores", "dense_of", "lexical_candidates", "matched_terms"]

RANKERS = ("dense", "lexical", "hybrid")
#: What `search()` uses unless told otherwise (see RESULTS.md for why).
DEFAULT_RANKER = "hybrid"
#: Weight of the max-normalised bm25 bonus beside the cosine (chosen on the proxies' sweep).
HYBRID_WEIGHT = 0.15
#: In search(), query words more searchable captions than this contain are left to the dense score
#: (lexical.selective_terms): bounds the FTS5 cost at any index size. The proxies (<= 1,093
#: captions) never reach it, so what they measured is what search() does on indexes that size.
LEXICAL_TERM_CAP = 2000


def check_ranker(ranker: str) -> str:
    if ranker not in RANKERS:
        raise QueryError(f"unknown ranker {ranker!r}: use one of {', '.join(RANKERS)}")
    return ranker


def lexical_bonus(bm25: np.ndarray, weight: float = HYBRID_WEIGHT, best: Optional[float] = None) -> np.ndarray:
    """weight * bm25 / best, where `best` is the query's best bm25 (the max of `bm25` by default)."""
    b = np.asarray(bm25, np.float64)
    top = float(b.max()) if best is None and b.size else float(best or 0.0)
    return np.zeros_like(b) if top <= 0 else float(weight) * b / top


def ranker_scores(dense: np.ndarray, bm25: np.ndarray, ranker: str, weight: float = HYBRID_WEIGHT) -> np.ndarray:
    """(Q, V) per-variant scores of a ranker from the dense cosines and bm25 scores (eval harness)."""
    check_ranker(ranker)
    if ranker == "dense":
        return np.asarray(dense)
    b = np.asarray(bm25, np.float64)
    if ranker == "lexical":
        return b
    best = b.max(axis=1, keepdims=True) if b.size else np.zeros((b.shape[0], 1))
    return np.asarray(dense, np.float64) + float(weight) * b / np.where(best > 0, best, 1.0)


def bm25_matrix(documents: Sequence[str], queries: Sequence[str]) -> np.ndarray:
    """(Q, D) bm25 of every query against every document (0 = no query word), by the index's own
    tokenizer and query words, in an in-memory FTS5 table."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(f"CREATE VIRTUAL TABLE docs USING fts5(text, tokenize = '{L.TOKENIZE}')")
        conn.executemany("INSERT INTO docs (rowid, text) VALUES (?, ?)", enumerate(documents))
        out = np.zeros((len(queries), len(documents)), np.float64)
        for qi, text in enumerate(queries):
            terms = L.query_terms(text)
            if terms:
                for rid, s in conn.execute("SELECT rowid, bm25(docs) FROM docs WHERE docs MATCH ?",
                                           (L.match_expression(terms),)):
                    out[qi, rid] = -s
        return out
    finally:
        conn.close()


def dense_of(conn: sqlite3.Connection, caption_ids: Sequence[int], q: np.ndarray) -> dict[int, float]:
    """Exact cosines of these captions' stored vectors with the unit query (lexical-only candidates)."""
    out: dict[int, float] = {}
    ids = [int(c) for c in caption_ids]
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        qs = ",".join("?" * len(chunk))
        rows = conn.execute(f"SELECT caption_id, vector FROM embeddings WHERE caption_id IN ({qs})", chunk).fetchall()
        if rows:
            vecs = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), -1)
            out.update(zip((int(r[0]) for r in rows), (float(s) for s in vecs @ q)))
    return out


def lexical_candidates(conn: sqlite3.Connection, terms: Sequence[str], k: int,
                       raster_ids: Optional[Sequence[str]] = None,
                       term_cap: Optional[int] = LEXICAL_TERM_CAP) -> tuple[np.ndarray, np.ndarray]:
    """The k best caption ids by bm25 for the selective query words (empty without words or FTS5 table)."""
    return L.lexical_top(conn, terms, k, raster_ids, term_cap)


def matched_terms(conn: sqlite3.Connection, caption_id: int, terms: Sequence[str]) -> list[str]:
    """The caption's words that matched the query (what the dock shows as "why it matched")."""
    return L.matched_terms(conn, caption_id, terms)
