"""Names the engine and its front ends share: executor kinds, document graphs, tiling keys.

Stdlib only (the QGIS process imports it at plugin start through the index request).
"""

from __future__ import annotations

from typing import Optional

from .errors import EngineError

#: Where an indexing job runs: this process, a Ray cluster from this process (driver mode), a Ray job.
EXECUTORS = ("local", "ray", "ray-job")
#: The graphs that embed an index's captions (indexing/document_graph.py records one per index).
DOCUMENT_GRAPHS = ("fp32", "int8")
#: The keys of a tiling request (rasters/tiling.TilingParams.to_dict).
TILING_KEYS = ("tile_size", "tile_size_units", "overlap", "scales", "out_size", "min_valid_fraction")


def check_graph(value: Optional[str]) -> Optional[str]:
    """'fp32' / 'int8', or None for no request (None, '', 'auto'); anything else is a one-line error."""
    text = (value or "").strip().lower()
    if text in ("", "auto"):
        return None
    if text not in DOCUMENT_GRAPHS:
        raise EngineError(f"document graph {value!r}: use auto, fp32 or int8")
    return text
