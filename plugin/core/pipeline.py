"""Compatibility facade: the indexing job now lives in `plugin.core.indexing` (plan / local / commit).

Front ends (CLI, worker, QGIS tasks, benchmarks) keep importing from here.
"""

from __future__ import annotations

from .indexing import (
    IndexReport,
    index_info,
    index_rasters,
    preview_index,
    prune_index_dir,
    remove_rasters,
    repair_index_dir,
)
from .search.searcher import Searcher
from .types import RasterSource

__all__ = ["IndexReport", "RasterSource", "Searcher", "index_info", "index_rasters", "preview_index", "prune_index_dir",
           "remove_rasters", "repair_index_dir"]
