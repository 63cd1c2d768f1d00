"""How a person reads an indexing job's progress: one line from a phase's fields.

Plain Python (no numpy, no indexing package), so QGIS's side (the dock, Processing) formats the
engine's progress events with the very words the engine uses; the phases themselves and the rate /
ETA computation live in core/indexing/progress.py.
"""

from __future__ import annotations

from typing import Any


def describe(done: int, total: int, info: dict[str, Any]) -> str:
    """One line for a person: 'captioned 120/3,000 tiles · 2.1 tiles/s · about 23 min left'."""
    if info.get("phase") != "captioning" or not total:
        return ""
    text = f"captioned {done:,}/{total:,} tiles"
    rate = float(info.get("rate") or 0.0)
    if rate > 0:
        text += f" · {rate:.1f} tiles/s" if rate >= 1 else f" · {1 / rate:.1f} s/tile"
        if info.get("eta_s") is not None:
            text += f" · about {duration(float(info['eta_s']))} left"
    return text


def duration(seconds: float, rough: bool = False) -> str:
    """'33 min 16 s', '2 h 05 min': precise, for an ETA that is re-measured all along. `rough`: '33 min',
    '2.1 h' (never '0 s'), for an estimate made before anything ran (the dock's tiling hint)."""
    if rough:
        seconds = max(1, int(round(seconds)))
        if seconds < 60:
            return f"{seconds} s"
        if seconds < 3600:
            return f"{round(seconds / 60)} min"
        return f"{seconds / 3600:.1f} h"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
