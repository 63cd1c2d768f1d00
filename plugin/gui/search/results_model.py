"""The results list: one row per hit (rank, score, thumbnail, best caption variant, raster name).

A table model rather than a QListWidget so that thumbnails, which arrive later from a background
task, update one cell without rebuilding the list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from qgis.PyQt.QtCore import QAbstractTableModel, QModelIndex, QSize, Qt
from qgis.PyQt.QtGui import QBrush, QColor, QImage, QPixmap

COLUMNS = ("#", "Score", "Tile", "Scale", "Caption", "Raster")
COL_RANK, COL_SCORE, COL_THUMB, COL_SCALE, COL_CAPTION, COL_RASTER = range(6)
THUMB_SIZE = 64

_DISPLAY = Qt.ItemDataRole.DisplayRole
_DECORATION = Qt.ItemDataRole.DecorationRole
_TOOLTIP = Qt.ItemDataRole.ToolTipRole
_SIZE = Qt.ItemDataRole.SizeHintRole
_ALIGN = Qt.ItemDataRole.TextAlignmentRole
_FOREGROUND = Qt.ItemDataRole.ForegroundRole
HIT_ROLE = Qt.ItemDataRole.UserRole + 1

if TYPE_CHECKING:  # numpy comes with core.types: not at QGIS start-up
    from ...core.search.score_scale import ScoreScale
    from ...core.types import Hit


class ResultsModel(QAbstractTableModel):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._hits: list[Hit] = []
        self._thumbs: dict[str, QPixmap] = {}
        self._scale: Optional[ScoreScale] = None
        self._texts: list[str] = []
        self._matched: list[str] = []
        self._grounds: list[str] = []

    def set_scale(self, scale: Optional[ScoreScale]) -> None:
        """The embedder's fixed score scale: the score cell is coloured and explained by it."""
        self._scale = scale

    # --- data in -----------------------------------------------------------------------------
    def set_hits(self, hits: list[Hit], query: str = "") -> None:
        """Rows for `hits`; the caption column shows what differs between them (see result_text)."""
        from .result_text import distinct_texts, matched_sentence

        self.beginResetModel()
        self._hits = list(hits)
        self._texts = distinct_texts([h.caption for h in self._hits], query)
        self._matched = [matched_sentence(h.caption, query) if query else "" for h in self._hits]
        self._grounds = [_ground(h) for h in self._hits]
        self.endResetModel()

    def single_raster(self) -> bool:
        """All rows come from one raster (its column would only repeat the name)."""
        return len({h.raster_id for h in self._hits}) <= 1

    def clear(self) -> None:
        self.set_hits([])

    def set_thumbnail(self, tile_id: str, image: QImage) -> None:
        """Attach a thumbnail to every row showing `tile_id` (the same tile may not repeat, but be safe)."""
        if image is None or image.isNull():
            return
        pix = QPixmap.fromImage(image).scaled(
            THUMB_SIZE, THUMB_SIZE, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
        )
        self._thumbs[tile_id] = pix
        for row, hit in enumerate(self._hits):
            if hit.tile_id == tile_id:
                idx = self.index(row, COL_THUMB)
                self.dataChanged.emit(idx, idx, [_DECORATION])

    def hits(self) -> list[Hit]:
        return list(self._hits)

    def hit(self, row: int) -> Optional[Hit]:
        return self._hits[row] if 0 <= row < len(self._hits) else None

    def has_thumbnail(self, tile_id: str) -> bool:
        return tile_id in self._thumbs

    # --- Qt model API ------------------------------------------------------------------------
    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self._hits)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation, role=_DISPLAY) -> Any:  # noqa: N802
        if role == _DISPLAY and orientation == Qt.Orientation.Horizontal and 0 <= section < len(COLUMNS):
            return COLUMNS[section]
        return None

    def data(self, index: QModelIndex, role=_DISPLAY) -> Any:
        hit = self.hit(index.row()) if index.isValid() else None
        if hit is None:
            return None
        col = index.column()
        if role == HIT_ROLE:
            return hit
        if role == _DISPLAY:
            if col == COL_RANK:
                return str(hit.rank)
            if col == COL_SCORE:
                return f"{hit.score:.3f}"
            if col == COL_SCALE:
                ground = self._grounds[index.row()] if index.row() < len(self._grounds) else ""
                return f"×{hit.scale}" + (f"\n{ground}" if ground else "")
            if col == COL_CAPTION:
                text = self._texts[index.row()] if index.row() < len(self._texts) else hit.caption
                from .result_text import why_line

                why = why_line(hit.extra)
                return text + (f"\n{why}" if why else "")
            if col == COL_RASTER:
                return hit.raster_name or hit.raster.rsplit("/", 1)[-1]
            return None
        if role == _DECORATION and col == COL_THUMB:
            return self._thumbs.get(hit.tile_id)
        if role == _SIZE and col == COL_THUMB:
            return QSize(THUMB_SIZE + 4, THUMB_SIZE + 4)
        if role == _FOREGROUND and col == COL_SCORE and self._scale is not None:
            from ...core.search.score_scale import CLASS_COLORS, match_strength

            return QBrush(QColor(CLASS_COLORS[self._scale.class_index(match_strength(hit.score, hit.extra))]).darker(130))
        if role == _TOOLTIP and col == COL_SCORE and self._scale is not None:
            from ...core.search.score_scale import match_strength

            s = self._scale
            cos = match_strength(hit.score, hit.extra)
            words = ", ".join(hit.extra.get("matched_terms") or [])
            bonus = (f" (similarity {cos:.3f} + {hit.score - cos:.3f} for the words {words or 'it names'})"
                     if hit.score - cos > 1e-6 else "")
            return (f"{hit.score:.3f}{bonus}: {s.label(cos)} match on the {s.embedder} scale"
                    + ("" if s.calibrated else " (not calibrated for this embedder: MiniLM's numbers)")
                    + "\n" + "; ".join(text for _lo, _hi, text, _c in s.ranges()))
        if role == _ALIGN:
            if col in (COL_RANK, COL_SCORE):
                return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop)
            return int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        if role == _TOOLTIP:
            return self._tooltip(hit, self._matched[index.row()] if index.row() < len(self._matched) else "")
        return None

    @staticmethod
    def _tooltip(hit: Hit, matched: str) -> str:
        """Rich text: the matched sentence and the caption with the query words it holds in bold, the
        words and the negative term that demoted the hit said plainly, then where the tile is."""
        import html

        from .result_text import bold_words, demoted_text, matched_words

        words = matched_words(hit.extra)
        lines = []
        if matched:
            lines.append(f"Matched: {bold_words(matched, words)}")
        if words:
            lines.append("Query words in the caption: " + ", ".join(f"<b>{html.escape(w)}</b>" for w in words))
        if demoted_text(hit.extra):
            lines.append(f"<i>{html.escape(demoted_text(hit.extra)[:1].upper() + demoted_text(hit.extra)[1:])}</i>")
        w = hit.window
        lines += [bold_words(hit.caption, words), "",
                  html.escape(f"raster: {hit.raster}") + "<br>" + html.escape(
                      f"tile: {hit.tile_id} (scale {hit.scale}, window {w.col_off},{w.row_off} {w.width}x{w.height})")]
        return "<qt>" + "<br>".join(lines) + "</qt>"


def _ground(hit: Hit) -> str:
    """The tile's side on the ground ("1.28 km"), from its footprint in the raster's CRS."""
    from qgis.core import QgsCoordinateReferenceSystem

    from .result_text import ground_text, ring_ground_m

    try:
        ring = hit.footprint["coordinates"][0]
        crs = QgsCoordinateReferenceSystem.fromWkt(hit.crs) if hit.crs else QgsCoordinateReferenceSystem()
        if not crs.isValid():  # pixel coordinates: no ground size to tell
            return ""
        return ground_text(ring_ground_m(ring, crs.isGeographic()))
    except (KeyError, IndexError, TypeError, ValueError):
        return ""
