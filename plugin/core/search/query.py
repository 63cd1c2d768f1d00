"""Query syntax: what to find, and what to push down ("negative terms").

    beach -buildings                 a word after "-" is a negative term
    beach -"parking lot"             a quoted phrase after "-" is one negative term
    beach without buildings          "without" makes the rest (up to a comma or ";") a negative term

Tiles whose best caption variant matches a negative term (cosine >= negation.NEGATIVE_THRESHOLD)
rank after all the others; a variant that says the thing is absent ("a beach with no buildings")
does not count (negation.negates). A "-" inside a word ("built-up", "north-west") is not an operator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import QueryError

__all__ = ["ParsedQuery", "parse_query", "SYNTAX_HELP"]

#: One line for the query box's tooltip / placeholder and the CLI help.
SYNTAX_HELP = 'Exclude with -word, -"a phrase" or "without ..." (e.g. beach -buildings, beach without buildings)'

_NEG_QUOTED = re.compile(r'(?:(?<=\s)|^)-"([^"]+)"')
_NEG_WORD = re.compile(r"(?:(?<=\s)|^)-([^\s\"-][^\s\"]*)")
_WITHOUT = re.compile(r"\bwithout\s+([^,;]+)", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedQuery:
    """The positive text (embedded and matched) and the negative terms, in the order written."""

    text: str
    negatives: tuple[str, ...] = ()


def parse_query(query: str) -> ParsedQuery:
    """Split a query into its positive text and negative terms (see the module docstring)."""
    text = str(query or "")
    negs: list[str] = []

    def take(m: re.Match) -> str:
        term = " ".join(m.group(1).split()).strip(" .")
        if term and term.lower() not in (n.lower() for n in negs):
            negs.append(term)
        return " "

    for pattern in (_NEG_QUOTED, _NEG_WORD, _WITHOUT):
        text = pattern.sub(take, text)
    text = " ".join(text.replace(",", ", ").split()).strip(" ,;")
    text = re.sub(r"\s+,", ",", text)
    if not text and negs:
        raise QueryError("the query only excludes things: say what to find too, e.g. 'beach -buildings'")
    return ParsedQuery(text, tuple(negs))
