"""All caption variants of one hit (double-click on a result), so the user sees why a tile matched."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Optional

from qgis.PyQt.QtWidgets import QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout

if TYPE_CHECKING:  # numpy comes with core.types: not at QGIS start-up
    from ..core.types import CaptionVariant, Hit


def hit_variants(hit: Hit) -> list[CaptionVariant]:
    """Caption variants carried by the hit (`extra["variants"]`), else the best one alone."""
    from ..core.types import CaptionVariant

    raw = hit.extra.get("variants") if isinstance(hit.extra, dict) else None
    out: list[CaptionVariant] = []
    for v in raw or []:
        if isinstance(v, dict):
            out.append(CaptionVariant.from_dict(v))
        elif isinstance(v, str):
            out.append(CaptionVariant("", "", v))
    return out or [CaptionVariant("", "", hit.caption)]


def variants_html(hit: Hit, variants: Optional[list[CaptionVariant]] = None) -> str:
    variants = variants if variants is not None else hit_variants(hit)
    parts = [
        f"<h3>#{hit.rank} &nbsp; score {hit.score:.3f}</h3>",
        f"<p><b>{html.escape(hit.raster_name or hit.raster)}</b> &mdash; tile {html.escape(hit.tile_id)}, scale {hit.scale}</p>",
    ]
    for i, v in enumerate(variants):
        best = " (best match)" if i == hit.variant_index else ""
        parts.append(f"<h4>Variant {i + 1}{best}</h4>")
        for label, text in (("One sentence", v.one_sentence), ("Features", v.feature), ("Caption", v.caption)):
            if text and text.strip():
                parts.append(f"<p><i>{label}:</i> {html.escape(text)}</p>")
    return "\n".join(parts)


class CaptionDialog(QDialog):
    def __init__(self, hit: Hit, variants: Optional[list[CaptionVariant]] = None, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Caption variants — result #{hit.rank}")
        self.resize(520, 420)
        self.browser = QTextBrowser(self)
        self.browser.setHtml(variants_html(hit, variants))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(self.browser)
        lay.addWidget(buttons)
