"""Which tile size and scales suit a raster and a captioner, and what a choice costs before indexing.

Why: 512 px on a 10 m scene makes 5 km tiles; the top "sandy beach" hit was marsh, while 128 px at
scales 1,2 followed the beach. Scenes in the remote-sensing caption benchmarks (RSITMD, RSICD, UCM)
span roughly 100 m to 1 km, and a vision-language model sees about 336-448 px (a larger tile is
downsampled before it is seen). So the advice aims at ~1 km of ground per tile, in pixels no larger
than a VLM looks at, and adds larger scales while they stay within a few km. Plain Python, no I/O:
the dock and Processing pass the raster's size and ground resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Tile sizes offered, in pixels (multiples of 32, which every captioner and VLM processor likes).
TILE_CHOICES = (64, 96, 128, 192, 256, 320, 384, 448, 512, 768, 1024)
#: Ground covered by one tile at scale 1 that the advice aims at (metres).
TARGET_GROUND_M = 1000.0
#: Larger scales are added while a tile covers at most this much ground (metres).
MAX_SCALE_GROUND_M = 3000.0
#: Largest tile a vision-language model looks at without downsampling (pixels).
VLM_MAX_PX = 448
#: Rough captioning rates (tiles per second) used for the time estimate: spectral measured by
#: `make demo` on 2 CPU cores (RESULTS.md, ~7 tiles/s with embedding); a 7B VLM at the paper's
#: settings on one GPU ~0.25 tiles/s (issue 9); a served VLM taken as the same order.
RATES = {"spectral": 7.0, "transformers": 0.25, "openai": 0.3}


@dataclass(frozen=True)
class TilingAdvice:
    tile_size: int
    scales: tuple[int, ...]
    ground_m: float  # ground covered by one scale-1 tile (metres)
    reason: str

    def scales_text(self) -> str:
        return ",".join(str(s) for s in self.scales)


def suggest_tiling(pixel_m: float, width: int, height: int, captioner_kind: str = "spectral") -> TilingAdvice:
    """Tile size and scales for a raster with `pixel_m` metres per pixel and `width` x `height` pixels."""
    vlm = captioner_kind != "spectral"
    max_px = VLM_MAX_PX if vlm else TILE_CHOICES[-1]
    if not pixel_m or pixel_m <= 0 or not math.isfinite(pixel_m):
        tile = min(448 if vlm else 512, max(32, min(width, height)))
        return TilingAdvice(tile, (1,), 0.0, "the raster has no ground resolution: a tile of what a VLM sees")
    want = TARGET_GROUND_M / pixel_m
    tile = next((t for t in TILE_CHOICES if t >= want), TILE_CHOICES[-1])
    tile = max(min(tile, max_px), TILE_CHOICES[0])
    tile = min(tile, max(32, min(width, height)))
    scales = [1]
    for s in (2, 4):
        if tile * s * pixel_m <= MAX_SCALE_GROUND_M and tile * s <= min(width, height):
            scales.append(s)
    why = (f"~{_km(tile * pixel_m)} per tile (caption benchmarks show 0.1-1 km scenes)"
           + (f", no larger than the {VLM_MAX_PX} px a VLM sees" if vlm and want > VLM_MAX_PX else ""))
    return TilingAdvice(tile, tuple(scales), tile * pixel_m, why)


def tile_counts(width: int, height: int, tile_size: int, overlap: float, scales: tuple[int, ...]) -> dict[int, int]:
    """Tiles per scale on a `width` x `height` raster (the plan's grid; empty tiles are skipped later)."""
    out = {}
    for s in scales:
        size = tile_size * s
        step = max(1, int(round(size * (1.0 - overlap))))
        nx = 1 if width <= size else math.ceil((width - size) / step) + 1
        ny = 1 if height <= size else math.ceil((height - size) / step) + 1
        out[s] = nx * ny
    return out


def estimate_seconds(tiles: int, captioner_kind: str) -> float:
    return tiles / RATES.get(captioner_kind, RATES["transformers"])


def _km(metres: float) -> str:
    return f"{metres / 1000:.2f} km" if metres >= 1000 else f"{metres:.0f} m"


def ground_text(metres: float) -> str:
    return _km(metres)
