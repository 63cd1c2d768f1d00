"""What tells hits apart in the results list: the sentences of each best caption variant that are not
shared by most hits, the one closest to the query's words first; and each tile's ground size.

At small tiles every caption of a scene starts with the same words ("The tile spans about 1.3 km
across and shows ..."), so showing the captions as they are made every row look alike. Plain Python.
"""

from __future__ import annotations

import math
import re
from typing import Optional, Sequence

_SENT = re.compile(r"(?<=[.;!?])\s+")
_WORD = re.compile(r"[a-zA-Z]{3,}")
_STOP = {"the", "and", "with", "of", "in", "on", "a", "an", "to", "is", "are", "this", "that", "from", "for",
         "tile", "image", "view", "shows", "there", "near", "next"}


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT.split(text or "") if s.strip()]


def _key(sentence: str) -> str:
    return re.sub(r"[\d.,]+", "#", sentence.lower()).strip()


def _stems(text: str) -> set[str]:
    return {w.lower()[:4] for w in _WORD.findall(text or "") if w.lower() not in _STOP}


def matched_sentence(caption: str, query: str) -> str:
    """The caption's sentence sharing most word stems with the query ("" when none shares any)."""
    q = _stems(query)
    best, score = "", 0
    for s in sentences(caption):
        n = len(q & _stems(s))
        if n > score:
            best, score = s, n
    return best


def shared_match(captions: Sequence[str], query: str) -> str:
    """The matched sentence when most captions share it (said once, above the list, not in every row)."""
    if len(captions) < 3 or not query:
        return ""
    keys: dict[str, tuple[int, str]] = {}
    for c in captions:
        m = matched_sentence(c, query)
        if m:
            n, _s = keys.get(_key(m), (0, m))
            keys[_key(m)] = (n + 1, m)
    best = max(keys.values(), default=(0, ""))
    return best[1] if best[0] > len(captions) / 2 else ""


def distinct_texts(captions: Sequence[str], query: str = "") -> list[str]:
    """Per caption: its sentences minus those most captions share, the matched sentence first."""
    split = [sentences(c) for c in captions]
    counts: dict[str, int] = {}
    for ss in split:
        for k in {_key(s) for s in ss}:
            counts[k] = counts.get(k, 0) + 1
    common = {k for k, n in counts.items() if len(captions) >= 3 and n > len(captions) / 2}
    out = []
    for caption, ss in zip(captions, split):
        keep = [s for s in ss if _key(s) not in common] or ss
        m = matched_sentence(" ".join(keep), query) if query else ""
        if m and m in keep:
            keep = [m] + [s for s in keep if s != m]
        out.append(" · ".join(keep) if keep else caption)
    # a word prefix all rows still share says nothing either
    words = [t.split(" ") for t in out]
    if len(out) >= 3:
        n = 0
        while all(len(w) > n + 1 for w in words) and len({w[n].lower() for w in words}) == 1:
            n += 1
        if n >= 3:
            out = ["…" + " ".join(w[n:]) for w in words]
    return out


def ring_ground_m(ring: Sequence[Sequence[float]], geographic: bool) -> Optional[float]:
    """Side length of a tile footprint ring (first edge), in metres; degrees converted at its latitude."""
    if len(ring) < 2:
        return None
    (x0, y0), (x1, y1) = ring[0][:2], ring[1][:2]
    if geographic:
        lat = math.radians((y0 + y1) / 2.0)
        dx, dy = (x1 - x0) * 111320.0 * math.cos(lat), (y1 - y0) * 110540.0
    else:
        dx, dy = x1 - x0, y1 - y0
    return math.hypot(dx, dy) or None


def ground_text(metres: Optional[float]) -> str:
    if not metres:
        return ""
    return f"{metres / 1000:.2f} km" if metres >= 1000 else f"{metres:.0f} m"


def matched_words(extra: Optional[dict]) -> list[str]:
    """The query words the hit's best variant holds (hybrid / lexical ranking: `extra.matched_terms`)."""
    words = (extra or {}).get("matched_terms") or []
    return [str(w) for w in words if str(w).strip()]


def demoted_text(extra: Optional[dict]) -> str:
    """One line saying which negative term demoted the hit ("" when none did)."""
    term = (extra or {}).get("demoted_by")
    if not term:
        return ""
    score = (extra or {}).get("negative_score")
    return f"ranked last: shows “{term}”" + (f" (similarity {float(score):.2f})" if score is not None else "")


def why_line(extra: Optional[dict]) -> str:
    """The result row's second line: the words that matched and what demoted it, plain text."""
    parts = []
    words = matched_words(extra)
    if words:
        parts.append("words: " + ", ".join(words))
    demoted = demoted_text(extra)
    if demoted:
        parts.append(demoted)
    return " · ".join(parts)


_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


def bold_words(text: str, words: Sequence[str]) -> str:
    """`text` as HTML (escaped) with every word whose plural-folded form is one of `words`' in <b>."""
    import html

    from ...core.search.negation import fold

    keys = {fold(w) for w in words}
    if not keys:
        return html.escape(text or "")
    out, last = [], 0
    for m in _TOKEN.finditer(text or ""):
        if fold(m.group(0)) in keys:
            out.append(html.escape(text[last : m.start()]) + f"<b>{html.escape(m.group(0))}</b>")
            last = m.end()
    out.append(html.escape((text or "")[last:]))
    return "".join(out)
