"""One-line notes about one raster's indexing run, shared by the CLI, the dock and Processing.

Kept free of numpy and of the engine, so QGIS's side can import it without loading either.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_TILES", "fallback_line", "raster_notes", "tiling_change_line"]

#: A raster planned past this many tiles is refused unless forced (1M caption variants at 5 per tile;
#: the refused S2 plan was 2.8 million tiles, 4.6 GB of plan and ~150 h of captioning).
MAX_TILES = 200_000


def tiling_change_line(old: dict[str, Any], tile_size: int, overlap: float, scales: tuple[int, ...]) -> str:
    """For the dock, before Index: what a new tiling does to an indexed raster ("" when unchanged)."""
    new = {"tile_size": tile_size, "overlap": float(overlap), "scales": list(scales)}
    diff = [f"{k.replace('_', ' ')} {old.get(k)}" for k in ("tile_size", "overlap", "scales")
            if k in old and (list(old[k]) if k == "scales" else old[k]) != new[k]]
    if not diff or old.get("tile_size_units") is not None:
        return ""
    return (f"indexed with {', '.join(diff)}: Index captions its tiles again for this tiling; the old captions"
            " stay as cache, so going back costs no captioning")


def fallback_line(entry: dict[str, Any]) -> str:
    """ "12 of 400 tiles fell back to spectral captions: the server returned no text" ("" if none)."""
    n = entry.get("tiles_fallback") or 0
    if not n:
        return ""
    return (f"{n} of {entry.get('tiles_new', 0)} tiles fell back to spectral captions: {entry.get('fallback_reason')}"
            " (kept apart from the captioner's answers; the next update asks again)")


def raster_notes(r: dict[str, Any]) -> list[str]:
    """What a user must know about one raster's run: a new tiling (and its cache), fallback captions."""
    out = []
    old = r.get("tiling_changed_from")
    if old is not None:
        new = r.get("tiling") or {}
        diff = ", ".join(f"{k.replace('_', ' ')} {old.get(k)} -> {new.get(k)}" for k in sorted(new) if old.get(k) != new.get(k))
        out.append(f"tiling changed ({diff or 'parameters'}): {r.get('tiles_new', 0)} tile(s) captioned for it, "
                   f"{r.get('tiles_cached', 0)} from the caption cache; {r.get('tiles_retired', 0)} tile(s) of the previous"
                   " tiling kept as cache (switching back costs no captioning; `prune` frees them)")
    elif r.get("tiles_retired"):
        out.append(f"{r['tiles_retired']} tile(s) no longer planned kept as cache (`prune` frees them)")
    line = fallback_line(r)
    if line:
        out.append(line)
    return out
