"""Synthetic tiles for captioner tests: reflectance-like raw bands and their stretched RGB."""

from __future__ import annotations

from typing import Optional

import numpy as np

from plugin.core.types import PixelWindow, TileImage, TileRef

# Typical top-of-atmosphere reflectances (R, G, B, NIR), in Sentinel-2 L1C digital numbers.
WATER = (600, 800, 1100, 300)
FOREST = (500, 800, 600, 3500)
SAND = (2900, 2700, 2300, 3200)
SOIL = (1500, 1200, 900, 2000)
CLOUD = (8500, 8600, 8800, 8700)
ROOF = (2200, 2100, 2000, 2600)
ASPHALT = (900, 900, 900, 1000)


def make_tile(raw: np.ndarray, *, has_nir: bool = True, valid: Optional[np.ndarray] = None,
              pixel_size: Optional[float] = 10.0, tile_id: str = "t0") -> TileImage:
    """A TileImage from raw (C, H, W) bands, stretched like a raster-wide 0..5000 stretch."""
    raw = np.asarray(raw, np.float32)
    if valid is None:
        valid = np.isfinite(raw).all(axis=0)
    raw = np.where(valid[None], raw, np.nan).astype(np.float32)
    rgb = np.clip(np.nan_to_num(raw[:3]) / 5000.0 * 255, 0, 255).astype(np.uint8).transpose(1, 2, 0)
    rgb[~valid] = 0
    if not has_nir:
        raw = raw[:3]
    h, w = valid.shape
    ref = TileRef(tile_id, "r0", PixelWindow(0, 0, w, h), 1, ((0, 0), (w, 0), (w, h), (0, h), (0, 0)))
    return TileImage(ref=ref, rgb=np.ascontiguousarray(rgb), raw=raw, valid=valid, has_nir=has_nir, pixel_size=pixel_size)


def fill(h: int, w: int, spectrum: tuple, noise: float = 0.03, seed: int = 0) -> np.ndarray:
    """(4, h, w) bands of one spectrum with multiplicative noise."""
    rng = np.random.default_rng(seed)
    base = np.asarray(spectrum, np.float32)[:, None, None] * np.ones((4, h, w), np.float32)
    return base * (1 + noise * rng.standard_normal((1, h, w)).astype(np.float32))


def city(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Blocks of roofs separated by asphalt streets: high edge density, gray tones."""
    rng = np.random.default_rng(seed)
    out = fill(h, w, ASPHALT, seed=seed)
    for y in range(0, h, 12):
        for x in range(0, w, 12):
            bh, bw = rng.integers(4, 9, size=2)
            tone = rng.uniform(0.7, 1.5)
            out[:, y + 2 : y + 2 + bh, x + 2 : x + 2 + bw] = np.asarray(ROOF, np.float32)[:, None, None] * tone
    return out


def fields(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Straight-edged rectangular fields alternating crops and bare soil."""
    out = np.empty((4, h, w), np.float32)
    for i, x in enumerate(range(0, w, 32)):
        out[:, :, x : x + 32] = fill(h, min(32, w - x), FOREST if i % 2 == 0 else SOIL, seed=seed + i)
    return out
