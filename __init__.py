"""Semantic Imagery Search QGIS plugin.

Kept free of side effects: pytest imports this package during collection and QGIS imports it
at start-up, so the real plugin (and everything heavy) is imported only inside classFactory.
"""


def classFactory(iface):  # noqa: N802 (QGIS API name)
    from .plugin.plugin import SemanticImagerySearchPlugin

    return SemanticImagerySearchPlugin(iface)
