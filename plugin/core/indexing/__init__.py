"""The indexing job, grouped by concern.

- `plan`: resolve and open the sources, plan their tiles (bad input fails here, before any model).
- `local`: the default executor, which reads, captions and embeds tiles in this process.
- `commit`: the single writer, which commits each executor batch and paces hnsw rewrites.
- `job`: `index_rasters`, which ties the three together; `manage`: `remove_rasters`, `index_info`.

An executor only turns tile references into (refs, caption variants, vectors) batches; what is
planned, what the caption cache already holds and what gets committed never leave this process.
"""

from __future__ import annotations

from .job import IndexReport, index_rasters
from .manage import index_info, preview_index, prune_index_dir, remove_rasters, repair_index_dir

__all__ = ["IndexReport", "index_info", "index_rasters", "preview_index", "prune_index_dir", "remove_rasters",
           "repair_index_dir"]
