"""A score surface GeoTIFF as a map layer, on the same fixed colour scale as the results layer:
below "low" (what unrelated text reaches) transparent, then the classes' colours up to "high"."""

from __future__ import annotations

from typing import Optional

from qgis.core import (
    QgsColorRampShader,
    QgsRasterLayer,
    QgsRasterShader,
    QgsSingleBandPseudoColorRenderer,
)
from qgis.PyQt.QtGui import QColor

from ..core.search.score_scale import CLASS_COLORS, ScoreScale, scale_for


def surface_layer(path: str, name: str, scale: Optional[ScoreScale] = None) -> QgsRasterLayer:
    layer = QgsRasterLayer(path, name, "gdal")
    if layer.isValid():
        style_surface(layer, scale or scale_for(None))
    return layer


def style_surface(layer: QgsRasterLayer, scale: ScoreScale) -> None:
    mid = (scale.weak + scale.strong) / 2.0
    transparent = QColor(CLASS_COLORS[0])
    transparent.setAlpha(0)
    grey = QColor(CLASS_COLORS[0])
    grey.setAlpha(90)
    items = [
        QgsColorRampShader.ColorRampItem(scale.low, transparent, f"{scale.low:.2f} unrelated"),
        QgsColorRampShader.ColorRampItem(scale.weak - 1e-3, grey, f"< {scale.weak:.2f} no confident match"),
        QgsColorRampShader.ColorRampItem(scale.weak, QColor(CLASS_COLORS[1]), f"{scale.weak:.2f} weak"),
        QgsColorRampShader.ColorRampItem(mid, QColor(CLASS_COLORS[2]), f"{mid:.2f} fair"),
        QgsColorRampShader.ColorRampItem(scale.strong, QColor(CLASS_COLORS[3]), f"{scale.strong:.2f} strong"),
        QgsColorRampShader.ColorRampItem(scale.high, QColor(CLASS_COLORS[4]), f"{scale.high:.2f} very strong"),
    ]
    ramp = QgsColorRampShader(scale.low, scale.high)
    ramp.setColorRampType(QgsColorRampShader.Interpolated)
    ramp.setColorRampItemList(items)
    ramp.setClip(False)
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(ramp)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(scale.low)
    renderer.setClassificationMax(scale.high)
    layer.setRenderer(renderer)
    layer.setOpacity(0.75)
