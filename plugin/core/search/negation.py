"""Does a caption *deny* a thing rather than show it? ("a beach with no buildings" vs "-buildings")

A small embedder puts "a beach with no buildings" close to "buildings" (MiniLM: 0.50, well above
search.NEGATIVE_THRESHOLD), so without this check a negative term would demote exactly the tiles
whose captions say the thing is absent. The check is lexical: an occurrence of the term (its words
in order, plurals folded) is negated when a negation cue ("no", "not", "without", "there are
no", "free of", ...) comes before it in the same clause, within a few words. A caption negates the
term only when it mentions it and every mention is negated ("no buildings on the beach, buildings
inland" still shows buildings).

A single-word term also stands for its near-synonyms in remote-sensing captions (NEAR_SYNONYMS, a
small explicit table: building/house/residential, tree/forest/woodland, car/vehicle, ...), so "a beach
with no houses" negates "-buildings" too; every mention of any of them must be negated ("no houses,
only apartment buildings" still shows buildings). Limit: a word outside the table, and phrases
("parking lot"), must appear as they are; anything else similar by meaning only is still demoted.

`demote` applies it in search(): a variant that scores above the threshold for a negative term but
negates it does not count, so a tile is demoted only by a variant that shows the thing.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .candidates import Candidates

__all__ = ["NEAR_SYNONYMS", "NEGATION_CUES", "NEGATION_WINDOW", "NEGATIVE_THRESHOLD", "demote", "fold", "negates"]

#: A tile whose best variant has at least this cosine with a negative phrase (and does not negate
#: it) ranks after the others.
NEGATIVE_THRESHOLD = 0.35

#: Words after which, in the same clause, a thing is said to be absent.
NEGATION_CUES = frozenset(
    "no not without none nor neither never lacks lack lacking lacked absent absence devoid "
    "isn't aren't wasn't weren't doesn't don't didn't hasn't haven't cannot can't nothing".split()
)
#: How many words before the term a cue may stand ("no tall white residential buildings").
NEGATION_WINDOW = 6
#: Words that end the negated part of a clause ("no trees but buildings", "no trees while buildings ...").
_BREAKS = frozenset("but while whereas although though except yet and with".split())
#: Words a caption uses for the same thing (folded singulars), consulted by `negates` only: a caption
#: denying one of a group denies a negative term naming another. Kept to near-synonyms on purpose (no
#: "water"/"river", no "field": a guess here would hide tiles that show the thing).
NEAR_SYNONYMS: tuple[frozenset[str], ...] = tuple(frozenset(g.split()) for g in (
    "building house residential dwelling",
    "tree forest woodland grove",
    "car vehicle automobile",
    "road street highway",
    "boat ship vessel",
    "airplane aircraft plane airliner",
    "grass grassland lawn meadow",
))
_SAME = {w: g for g in NEAR_SYNONYMS for w in g}
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[.,;:!?()]")
_PUNCT = frozenset(".,;:!?()")


def fold(word: str) -> str:
    """Lower case, simple plural folding ("buildings" -> "building", "ponds" -> "pond", "bushes" -> "bush")."""
    w = word.lower()
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("ches", "shes", "sses", "xes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(str(text).lower().replace("’", "'"))


def negates(caption: str, term: str) -> bool:
    """True when `caption` mentions `term` (a word or phrase; a single word or any of its NEAR_SYNONYMS)
    and every mention is negated."""
    words = [fold(t) for t in _tokens(term) if t not in _PUNCT]
    if not words:
        return False
    toks = _tokens(caption)
    folded = [fold(t) for t in toks]
    n, found = len(words), 0
    same = _SAME.get(words[0], frozenset(words)) if n == 1 else frozenset()
    for i in range(len(toks) - n + 1):
        if folded[i : i + n] != words and folded[i] not in same:
            continue
        found += 1
        if not _negated_before(toks, i):
            return False
    return found > 0


def _negated_before(toks: list[str], i: int) -> bool:
    """A cue within NEGATION_WINDOW words before position i, with no clause break in between
    ("or" continues a negation: "no roads or buildings"; "and", "but", punctuation end it)."""
    seen = 0
    for j in range(i - 1, -1, -1):
        t = toks[j]
        if t in _PUNCT:
            return False
        if t in NEGATION_CUES or t.endswith("n't"):
            return True
        if t in _BREAKS:
            return False
        seen += 1
        if seen >= NEGATION_WINDOW:
            return False
    return False


def demote(ranked: list[tuple[str, float, int]], cands: Candidates, neg: np.ndarray,
           names: list[str]) -> tuple[list[tuple[str, float, int]], dict[str, tuple[str, float]]]:
    """Stable partition: tiles showing none of the negatives first, then the demoted ones.

    A tile is demoted by negative j when one of its variants scores >= NEGATIVE_THRESHOLD for it
    and does not negate it (`negates`); returns the order and {tile: (term, that variant's score)}.
    """
    per_neg = []
    for v, name in zip(neg, names):
        rows = cands.variant_scores(v)
        hot = np.flatnonzero(rows >= NEGATIVE_THRESHOLD)
        if len(hot):
            cids = [cands.row_cid[i] for i in hot.tolist()]
            texts = _texts(cands, cids)
            denied = np.fromiter((negates(texts.get(c, ""), name) for c in cids), bool, len(cids))
            rows[hot[denied]] = -np.inf
        per_neg.append(cands.best_per_tile(v, rows))
    demoted: dict[str, tuple[str, float]] = {}
    for tid, _s, _c in ranked:
        pos = cands.tiles[tid]["pos"]
        scores = [float(p[pos]) for p in per_neg]
        j = int(np.argmax(scores))
        if scores[j] >= NEGATIVE_THRESHOLD:
            demoted[tid] = (names[j], round(scores[j], 4))
    return [r for r in ranked if r[0] not in demoted] + [r for r in ranked if r[0] in demoted], demoted


def _texts(cands: Candidates, caption_ids: list[int]) -> dict[int, str]:
    """The caption texts of these variants (the three fields, sentence-separated so clauses stay apart)."""
    out: dict[int, str] = {}
    conn = cands.index.conn
    for i in range(0, len(caption_ids), 500):
        chunk = caption_ids[i : i + 500]
        q = ",".join("?" * len(chunk))
        for cid, a, b, c in conn.execute(
                f"SELECT caption_id, one_sentence, feature, caption FROM captions WHERE caption_id IN ({q})", chunk):
            out[int(cid)] = ". ".join(s.strip() for s in (a, b, c) if s and s.strip())
    return out
