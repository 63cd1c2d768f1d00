"""The Processing provider (toolbox, Model Builder, batch mode, `qgis_process.bin run ...`).

The algorithms drive the same engine worker process as the dock, so Processing's Python never
imports torch either. Searches share one warm worker per interpreter (kept until the provider
unloads), so a batch of queries loads the embedder once.
"""

from __future__ import annotations

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .common import stop_shared_clients

PROVIDER_ID = "semantic_imagery_search"
ICON = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "resources", "icon.svg")

class SearchProvider(QgsProcessingProvider):
    def id(self) -> str:
        return PROVIDER_ID

    def name(self) -> str:
        return "Semantic Imagery Search"

    def longName(self) -> str:  # noqa: N802 (QGIS API)
        return "Semantic Imagery Search (caption, embed and search raster tiles)"

    def icon(self) -> QIcon:
        return QIcon(ICON)

    def loadAlgorithms(self) -> None:  # noqa: N802 (QGIS API)
        from .build_index import BuildIndexAlgorithm
        from .score_surface import ScoreSurfaceAlgorithm
        from .search_index import SearchIndexAlgorithm

        self.addAlgorithm(BuildIndexAlgorithm())
        self.addAlgorithm(SearchIndexAlgorithm())
        self.addAlgorithm(ScoreSurfaceAlgorithm())

    def unload(self) -> None:
        stop_shared_clients()
        super().unload()


def algorithm_ids() -> list[str]:
    return [f"{PROVIDER_ID}:build_index", f"{PROVIDER_ID}:search_index", f"{PROVIDER_ID}:score_surface"]
