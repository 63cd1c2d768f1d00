"""The lexical index beside the dense one: SQLite FTS5 (bm25) over every searchable caption variant.

Captions name concrete things ("storage tanks", "runway", "tennis court"); a query that names them
should win on those words even where a small embedder blurs them. The FTS5 table lives in the same
index.sqlite and mirrors the `embeddings` table through triggers, so it is written in the very
transaction that writes (or deletes) an embedding: a job killed at any point leaves the two in
step, and nothing in Python has to remember to update it. An index made before the table existed
gets it on open (`ensure_lexical`, one transaction, no re-captioning).

Tokenisation: FTS5's `porter unicode61` folds case, diacritics and plurals ("tanks" -> "tank",
"buildings" -> "build") on both the captions and the query. Stop words (English function words and
caption boilerplate such as "the image shows") are dropped from the query only: bm25 only scores
query terms, so they cost nothing in the index.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Mapping, Optional, Sequence

import numpy as np

__all__ = [
    "LEXICAL_TABLE", "LEXICAL_VERSION", "STOP_WORDS", "ensure_lexical", "has_lexical", "lexical_top",
    "match_expression", "matched_terms", "matched_terms_in", "query_terms", "selective_terms",
]

LEXICAL_TABLE = "captions_lex"
#: Bumped when the table's tokenizer or the triggers change: the next open rebuilds the table.
LEXICAL_VERSION = "1"
#: FTS5 tokenizer of the table (and of the eval harness's in-memory twin): case, diacritics and plurals folded.
TOKENIZE = "porter unicode61 remove_diacritics 2"
_TEXT = ("trim(c.one_sentence) || ' ' || trim(c.feature) || ' ' || trim(c.caption)")
_FILL_ONE = (f"INSERT INTO {LEXICAL_TABLE} (rowid, text) SELECT c.caption_id, {_TEXT} FROM captions c"
             " WHERE c.caption_id = {id}")
_TRIGGERS = {
    "lex_emb_ins": f"CREATE TRIGGER lex_emb_ins AFTER INSERT ON embeddings BEGIN {_FILL_ONE.format(id='NEW.caption_id')}; END",
    "lex_emb_upd": (f"CREATE TRIGGER lex_emb_upd AFTER UPDATE ON embeddings BEGIN"
                    f" DELETE FROM {LEXICAL_TABLE} WHERE rowid = OLD.caption_id;"
                    f" {_FILL_ONE.format(id='NEW.caption_id')}; END"),
    "lex_emb_del": f"CREATE TRIGGER lex_emb_del AFTER DELETE ON embeddings BEGIN DELETE FROM {LEXICAL_TABLE} WHERE rowid = OLD.caption_id; END",
    # A caption re-written in place keeps its id; its text row follows when it is searchable.
    "lex_cap_upd": (f"CREATE TRIGGER lex_cap_upd AFTER UPDATE OF one_sentence, feature, caption ON captions"
                    f" WHEN EXISTS (SELECT 1 FROM embeddings WHERE caption_id = NEW.caption_id) BEGIN"
                    f" DELETE FROM {LEXICAL_TABLE} WHERE rowid = OLD.caption_id;"
                    f" {_FILL_ONE.format(id='NEW.caption_id')}; END"),
}

#: Dropped from queries: English function words and what every caption says about itself.
STOP_WORDS = frozenset("""
a about above across after against along also am among an and any are around as at be been being below
beside besides between both but by can could did do does each either few for from had has have having here
how i if in into is it its itself just many may might more most much near next nor not of off on one only
onto or other our out over own same several she should so some such than that the their them then there
these they this those through to too under up upon very was we were what when where which while who whom
why will with within would you your
image images picture pictures photo photos photograph aerial view views shows show showing shown depicts
depicted depicting visible see seen can appears appear scene lot lots kind sort
""".split())

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)


def query_terms(text: str) -> list[str]:
    """The words of a query bm25 should score: lower case, no stop words, no duplicates, in order."""
    out: list[str] = []
    for w in _WORD.findall(str(text).lower()):
        w = w.split("'")[0]
        if len(w) > 1 and w not in STOP_WORDS and not w.isdigit() and w not in out:
            out.append(w)
    return out


def match_expression(terms: Sequence[str]) -> str:
    """An FTS5 MATCH expression: any of the terms (each quoted, so no word is read as an operator)."""
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


def has_lexical(conn: sqlite3.Connection) -> bool:
    """True when the index has its FTS5 table (an index opened read-only before its migration has not)."""
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (LEXICAL_TABLE,)).fetchone()
    return row is not None


def _current(conn: sqlite3.Connection) -> bool:
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")}
    if LEXICAL_TABLE not in names or not set(_TRIGGERS) <= names:
        return False
    row = conn.execute("SELECT value FROM meta WHERE key = 'lexical_version'").fetchone()
    return row is not None and str(row[0]) == LEXICAL_VERSION


def ensure_lexical(conn: sqlite3.Connection) -> bool:
    """Create (or rebuild) the FTS5 table and its triggers; returns True when it had to.

    Cheap and lock-free when the table is current (every open calls it). Otherwise one
    transaction drops what is there, creates the table and triggers and fills it from the
    searchable captions: a kill midway rolls back and the next open starts again.
    """
    if _current(conn):
        return False
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not _current(conn):  # another writer may have migrated while we waited for the lock
            for name in _TRIGGERS:
                conn.execute(f"DROP TRIGGER IF EXISTS {name}")
            conn.execute(f"DROP TABLE IF EXISTS {LEXICAL_TABLE}")
            conn.execute(f"CREATE VIRTUAL TABLE {LEXICAL_TABLE} USING fts5(text, tokenize = '{TOKENIZE}')")
            conn.execute(f"INSERT INTO {LEXICAL_TABLE} (rowid, text) SELECT c.caption_id, {_TEXT} FROM captions c"
                         " JOIN embeddings e ON e.caption_id = c.caption_id ORDER BY c.caption_id")
            for sql in _TRIGGERS.values():
                conn.execute(sql)
            conn.execute("INSERT INTO meta (key, value) VALUES ('lexical_version', ?) ON CONFLICT(key)"
                         " DO UPDATE SET value = excluded.value", (LEXICAL_VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return True


def lexical_top(conn: sqlite3.Connection, terms: Sequence[str], k: int,
                raster_ids: Optional[Sequence[str]] = None,
                term_cap: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """The k caption ids with the best bm25 for any of `terms` (in these rasters only, when
    given), best first, with positive scores (FTS5's bm25() is "lower is better": negated here).

    `term_cap`: leave out the words more than this many captions contain (see `selective_terms`).
    """
    if term_cap is not None and terms and has_lexical(conn):
        terms = selective_terms(conn, terms, term_cap)
    if not terms or k < 1 or not has_lexical(conn):
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    where, args = "", []
    if raster_ids is not None:
        where = (" AND rowid IN (SELECT c.caption_id FROM captions c JOIN tiles t ON t.tile_id = c.tile_id"
                 f" WHERE t.raster_id IN ({','.join('?' * len(raster_ids))}))")
        args = list(raster_ids)
    rows = conn.execute(
        f"SELECT rowid, bm25({LEXICAL_TABLE}) AS s FROM {LEXICAL_TABLE} WHERE {LEXICAL_TABLE} MATCH ?{where}"
        " ORDER BY s LIMIT ?", (match_expression(terms), *args, int(k)),
    ).fetchall()
    return np.fromiter((r[0] for r in rows), np.int64, len(rows)), -np.fromiter((r[1] for r in rows), np.float64, len(rows))


def selective_terms(conn: sqlite3.Connection, terms: Sequence[str], cap: int) -> list[str]:
    """The terms at most `cap` searchable captions contain.

    FTS5 scores bm25 for every caption that holds any query word, so one common word ("green",
    "area") costs time in proportion to the index; its IDF, and so its share of bm25, is small, and
    the dense score already carries it. Each probe reads at most cap + 1 rows (no scoring), so the
    lexical side's cost is bounded whatever the index size.
    """
    keep = []
    for t in terms:
        n = conn.execute(f"SELECT COUNT(*) FROM (SELECT rowid FROM {LEXICAL_TABLE} WHERE {LEXICAL_TABLE} MATCH ?"
                         " LIMIT ?)", (match_expression([t]), int(cap) + 1)).fetchone()[0]
        if int(n) <= cap:
            keep.append(t)
    return keep


def matched_terms(conn: sqlite3.Connection, caption_id: int, terms: Sequence[str]) -> list[str]:
    """The words of caption `caption_id` that matched the query terms (as written in the caption)."""
    if not terms or not has_lexical(conn):
        return []
    row = conn.execute(
        f"SELECT highlight({LEXICAL_TABLE}, 0, char(1), char(2)) FROM {LEXICAL_TABLE}"
        f" WHERE {LEXICAL_TABLE} MATCH ? AND rowid = ?", (match_expression(terms), int(caption_id)),
    ).fetchone()
    return [] if row is None else _marked(str(row[0]))


def matched_terms_in(texts: Mapping[int, str], terms: Sequence[str]) -> dict[int, list[str]]:
    """`matched_terms` for a few caption texts at once (the hits of a search), by key.

    The same tokenizer on a scratch in-memory FTS5 table of just these texts: on a large index a
    MATCH restricted to one rowid still walks the doclists of common words (~1-2 ms per hit at 1M
    captions), here it is a few microseconds.
    """
    out: dict[int, list[str]] = {int(k): [] for k in texts}
    if not terms or not texts:
        return out
    scratch = sqlite3.connect(":memory:")
    try:
        scratch.execute(f"CREATE VIRTUAL TABLE t USING fts5(text, tokenize = '{TOKENIZE}')")
        scratch.executemany("INSERT INTO t (rowid, text) VALUES (?, ?)", ((int(k), str(v)) for k, v in texts.items()))
        for rid, marked in scratch.execute("SELECT rowid, highlight(t, 0, char(1), char(2)) FROM t WHERE t MATCH ?",
                                           (match_expression(terms),)):
            out[int(rid)] = _marked(str(marked))
    finally:
        scratch.close()
    return out


def _marked(highlighted: str) -> list[str]:
    """The distinct words between highlight()'s markers, lower case, in order."""
    out: list[str] = []
    for w in re.findall("\x01(.*?)\x02", highlighted, flags=re.S):
        w = w.lower()
        if w not in out:
            out.append(w)
    return out
