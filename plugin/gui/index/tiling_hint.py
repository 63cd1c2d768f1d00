"""Informed tiling in the index panel: the suggested tile size and scales for the checked rasters,
and before indexing the tile count, ground size per scale and a rough time.

Only layer metadata is read (size, extent, CRS): nothing touches pixels, so it is cheap enough to
run on every edit. The advice itself is `core.tiling_advice` (plain Python).
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsDistanceArea,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsUnitTypes,
)
from qgis.PyQt.QtCore import QObject

from ...core.progress_text import duration
from ...core.rasters.tiling_advice import TilingAdvice, estimate_seconds, ground_text, suggest_tiling, tile_counts
from .index_options_widget import IndexOptionsWidget


def pixel_metres(layer: QgsRasterLayer) -> float:
    """Ground size of one pixel in metres (ellipsoidal for geographic CRSs); 0 when unknown."""
    crs: QgsCoordinateReferenceSystem = layer.crs()
    px = abs(layer.rasterUnitsPerPixelX())
    if not crs.isValid() or not px or not math.isfinite(px):
        return 0.0
    if crs.isGeographic():
        c = layer.extent().center()
        da = QgsDistanceArea()
        da.setSourceCrs(crs, QgsProject.instance().transformContext())
        da.setEllipsoid(crs.ellipsoidAcronym() or "WGS84")
        return float(da.measureLine(QgsPointXY(c.x(), c.y()), QgsPointXY(c.x() + px, c.y())))
    factor = QgsUnitTypes.fromUnitToUnitFactor(crs.mapUnits(), QgsUnitTypes.DistanceMeters)
    return px * factor if factor and math.isfinite(factor) else 0.0


class TilingHint(QObject):
    def __init__(self, options: IndexOptionsWidget, layers: Callable[[], list[QgsRasterLayer]], auto: bool,
                 parent=None, indexed: Optional[Callable[[], list[dict]]] = None,
                 preview: Optional[Callable[[dict, Callable[[list[dict]], None]], None]] = None) -> None:
        super().__init__(parent)
        self.options, self.layers = options, layers
        #: the index rows (name, params) of the checked layers that are indexed already
        self.indexed = indexed or (lambda: [])
        #: asks the engine for exact counts (to caption / from the caption cache) of a tiling
        self.preview = preview
        self._exact: dict[tuple, list[str]] = {}
        self._asked: set[tuple] = set()
        #: apply the advice once, when rasters are first checked and the user never chose a tile size
        self.auto = auto
        o = options
        o.tile_spin.valueChanged.connect(self.update)
        o.overlap_spin.valueChanged.connect(self.update)
        o.scales_edit.textChanged.connect(self.update)
        o.kind_combo.currentIndexChanged.connect(self.update)
        o.suggest_button.clicked.connect(self.apply)

    def advice(self) -> Optional[TilingAdvice]:
        """For the finest checked raster (its tiles are the smallest on the ground)."""
        best = None
        for layer in self.layers():
            m = pixel_metres(layer)
            if best is None or (m and m < best[0]):
                best = (m, layer)
        if best is None:
            return None
        m, layer = best
        return suggest_tiling(m, layer.width(), layer.height(), str(self.options.kind_combo.currentData()))

    def apply(self) -> Optional[TilingAdvice]:
        adv = self.advice()
        if adv is not None:
            self.options.tile_spin.setValue(adv.tile_size)
            self.options.scales_edit.setText(adv.scales_text())
            self.update()
        return adv

    def update(self, *_args) -> str:
        """Refresh the estimate line; returns its text."""
        layers = self.layers()
        if self.auto and layers:
            self.auto = False
            self.apply()
            return self.options.estimate_label.text()
        o = self.options.options()
        try:
            scales = o.scale_tuple()
        except ValueError as exc:
            return self._set(str(exc))
        if not layers:
            return self._set("Tick raster layers to see the tile count and time")
        per_scale: dict[int, int] = {s: 0 for s in scales}
        grounds: dict[int, float] = {}
        for layer in layers:
            for s, n in tile_counts(layer.width(), layer.height(), o.tile_size, o.overlap, scales).items():
                per_scale[s] += n
            m = pixel_metres(layer)
            if m:
                for s in scales:
                    grounds[s] = min(grounds.get(s, math.inf), o.tile_size * s * m)
        total = sum(per_scale.values())
        parts = [f"scale {s}: {per_scale[s]:,}" + (f" × {ground_text(grounds[s])}" if s in grounds else "") for s in scales]
        secs = estimate_seconds(total, o.captioner_kind)
        text = f"≈ {total:,} tiles ({'; '.join(parts)}) · roughly {duration(secs, rough=True)} with {o.captioner_kind}"
        adv = self.advice()
        if adv is not None and (adv.tile_size != o.tile_size or adv.scales != scales):
            text += f" · suggested {adv.tile_size} px, scales {adv.scales_text()} ({adv.reason})"
        from ...core.report_lines import MAX_TILES, tiling_change_line

        for layer in layers:
            n = sum(tile_counts(layer.width(), layer.height(), o.tile_size, o.overlap, scales).values())
            if n > MAX_TILES:
                text += f" · {layer.name()}: {n:,} tiles is over the {MAX_TILES:,} limit, Index refuses it (use larger tiles)"
        key = (o.tile_size, float(o.overlap), tuple(scales))
        rule = [f"{row.get('name')}: {line}" for row in self.indexed()
                if (line := tiling_change_line(row.get("params") or {}, o.tile_size, o.overlap, scales))]
        if rule:
            # The rule first; the engine's exact counts (the caption cache included) replace it.
            for line in self._exact.get(key, rule):
                text += f" · {line}"
            if key not in self._asked and self.preview is not None:
                self._asked.add(key)
                tiling = {"tile_size": o.tile_size, "overlap": float(o.overlap), "scales": list(scales)}
                self.preview(tiling, functools.partial(self._on_preview, key))
        return self._set(text)

    def forget(self) -> None:
        """The index changed (a job ended): exact counts must be asked again."""
        self._exact.clear()
        self._asked.clear()

    def _on_preview(self, key: tuple, items: list[dict]) -> None:
        lines = []
        for it in items:
            if not it.get("tiling_changed") or it.get("too_many"):
                continue
            to_cap, cached = int(it.get("to_caption", 0)), int(it.get("from_cache", 0))
            if to_cap:
                lines.append(f"{it.get('name')}: another tiling than indexed: Index captions {to_cap:,} tile(s), "
                             f"{cached:,} come from the caption cache (the old tiling's captions stay as cache)")
            else:
                lines.append(f"{it.get('name')}: another tiling than indexed, all {cached:,} tile(s) come from the caption"
                             " cache: nothing to caption")
        self._exact[key] = lines
        o = self.options.options()
        try:
            if (o.tile_size, float(o.overlap), tuple(o.scale_tuple())) == key:
                self.update()
        except ValueError:
            pass

    def _set(self, text: str) -> str:
        self.options.estimate_label.setText(text)
        self.options.estimate_label.setToolTip(
            "Tile count of the plan's grid (mostly empty tiles are skipped when indexing) and a rough time from "
            "measured captioning rates: spectral ~7 tiles/s on 2 CPU cores, a 7B VLM ~0.25 tiles/s on one GPU")
        return text

