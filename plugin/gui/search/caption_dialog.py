"""All caption variants of one hit (double-click on a result), so the user sees why a tile matched."""

from __future__ import annotations

import html
import os
from typing import TYPE_CHECKING, Optional

from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout

if TYPE_CHECKING:  # numpy comes with core.types: not at QGIS start-up
    from ...core.types import CaptionVariant, Hit


def hit_variants(hit: Hit) -> list[CaptionVariant]:
    """Caption variants carried by the hit (`extra["variants"]`), else the best one alone."""
    from ...core.types import CaptionVariant

    raw = hit.extra.get("variants") if isinstance(hit.extra, dict) else None
    out: list[CaptionVariant] = []
    for v in raw or []:
        if isinstance(v, dict):
            out.append(CaptionVariant.from_dict(v))
        elif isinstance(v, str):
            out.append(CaptionVariant("", "", v))
    return out or [CaptionVariant("", "", hit.caption)]


def load_variants(index_dir: str, hit: Hit) -> list[CaptionVariant]:
    """Every caption variant of the hit's tile (current captioner of its raster), read-only from the index.

    A few rows from SQLite (stdlib, WAL: never blocks the indexing writer), so it is fine on the main
    thread; falls back to what the hit carries when the index cannot be read.
    """
    import sqlite3

    from ...core.store.store_schema import DB_FILE
    from ...core.types import CaptionVariant

    path = os.path.join(index_dir, DB_FILE)
    if not os.path.exists(path):
        return hit_variants(hit)
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.5)
        try:
            rows = conn.execute(
                "SELECT one_sentence, feature, caption FROM captions WHERE tile_id = ? AND captioner_fp ="
                " (SELECT captioner_fp FROM rasters WHERE raster_id = ?) ORDER BY variant_index",
                (hit.tile_id, hit.raster_id),
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return hit_variants(hit)
    return [CaptionVariant(a or "", b or "", c or "") for a, b, c in rows] or hit_variants(hit)


def variants_html(hit: Hit, variants: Optional[list[CaptionVariant]] = None, query: str = "") -> str:
    """The best-matching variant first (numbers kept), then the others in their order."""
    from .result_text import bold_words, demoted_text, matched_words

    variants = variants if variants is not None else hit_variants(hit)
    words = matched_words(hit.extra)
    parts = [
        f"<h3>#{hit.rank} &nbsp; score {hit.score:.3f}"
        + (f" &nbsp; for &ldquo;{html.escape(query)}&rdquo;" if query else "") + "</h3>",
        f"<p><b>{html.escape(hit.raster_name or hit.raster)}</b> &mdash; tile {html.escape(hit.tile_id)}, scale {hit.scale}</p>",
    ]
    if words:  # why it matched: the query words its best variant holds (bold in every variant below)
        parts.append("<p>Query words in the best variant: " + ", ".join(f"<b>{html.escape(w)}</b>" for w in words) + "</p>")
    if demoted_text(hit.extra):
        d = demoted_text(hit.extra)
        parts.append(f"<p><i>{html.escape(d[:1].upper() + d[1:])} (a negative term of the query)</i></p>")
    order = sorted(range(len(variants)), key=lambda i: i != hit.variant_index)
    for i in order:
        v = variants[i]
        best = " (best match)" if i == hit.variant_index else ""
        parts.append(f"<h4>Variant {i + 1}{best}</h4>")
        for label, text in (("One sentence", v.one_sentence), ("Features", v.feature), ("Caption", v.caption)):
            if text and text.strip():
                parts.append(f"<p><i>{label}:</i> {bold_words(text, words)}</p>")
    return "\n".join(parts)


class CaptionDialog(QDialog):
    def __init__(self, hit: Hit, variants: Optional[list[CaptionVariant]] = None, parent=None, query: str = "") -> None:
        super().__init__(parent)
        what = f"“{query[:60]}”" if query else "the search"
        self.setWindowTitle(f"Result #{hit.rank} for {what} — caption variants")
        self.resize(520, 420)
        self.browser = QTextBrowser(self)
        self.browser.setHtml(variants_html(hit, variants, query))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(self.browser)
        lay.addWidget(buttons)
