"""What physics can tell about a tile: land-cover masks, their positions, colours, texture, lines.

Everything is measured on a small grid (at most `GRID` pixels a side) so a tile costs a few
milliseconds. Brightness and colours come from the raster-wide stretched RGB (comparable across
tiles); the ratio indices (NDVI, NDWI, ExG, VARI) come from the raw bands, which makes them
independent of the raster's units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..errors import EngineError
from ..types import TileImage

GRID = 128
#: Coverage below this is noise, not a finding.
MIN_FRACTION = 0.02
_EPS = 1e-6


@dataclass
class Finding:
    """One land cover (or structure) found in the tile: how much and where."""

    kind: str
    fraction: float
    where: str  # "throughout", "centre", "north", "north-east", ..., "scattered"
    detail: dict[str, float] = field(default_factory=dict)


@dataclass
class Measures:
    """Everything the wording layer may state; nothing else is ever said about the tile."""

    valid_fraction: float
    nodata_where: str
    findings: list[Finding]
    colours: list[tuple[str, float]]
    brightness: float
    edge_density: float
    linear: float  # share of textured cells whose gradients share one orientation
    linear_orientation: str  # "north-south", "east-west", "diagonal", "mixed", ""
    has_nir: bool
    ndvi_mean: Optional[float]
    ndwi_mean: Optional[float]
    water_fragmentation: float
    extent_m: Optional[float]
    #: NDVI 90th minus 10th percentile over vegetated land: fields of different crops differ, forest doesn't.
    ndvi_spread: float = 0.0

    def get(self, kind: str) -> Optional[Finding]:
        return next((f for f in self.findings if f.kind == kind), None)

    def frac(self, kind: str) -> float:
        f = self.get(kind)
        return f.fraction if f else 0.0


def _block_reduce(a: np.ndarray, step: int) -> np.ndarray:
    """Mean over step x step blocks along the last two axes, NaN-aware (NaN when a block is empty)."""
    h, w = a.shape[-2] // step * step, a.shape[-1] // step * step
    a = a[..., :h, :w]
    shape = a.shape[:-2] + (h // step, step, w // step, step)
    finite = np.isfinite(a)
    if finite.all():  # the common case: summing the contiguous axis first is several times faster
        return a.reshape(shape).mean(axis=-1).mean(axis=-2)
    total = np.where(finite, a, 0).reshape(shape).sum(axis=-1).sum(axis=-2)
    count = finite.reshape(shape).sum(axis=-1).sum(axis=-2)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(a.dtype)


def _shrink(tile: TileImage) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb float 0..1 (3,h,w), raw (C,h,w), valid (h,w)) on a grid of at most GRID pixels a side."""
    rgb = np.asarray(tile.rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
    raw = np.asarray(tile.raw, dtype=np.float32)
    valid = np.asarray(tile.valid, dtype=bool)
    if raw.ndim != 3 or raw.shape[0] < 3 or raw.shape[-2:] != valid.shape or rgb.shape[1:] != valid.shape:
        raise EngineError(
            f"tile {tile.ref.tile_id}: raw bands {raw.shape}, RGB {tuple(tile.rgb.shape)} and mask {valid.shape} "
            "do not describe the same (C>=3, H, W) pixels"
        )
    raw = np.where(valid[None], raw, np.nan)
    rgb = np.where(valid[None], rgb, np.nan)
    step = max(1, int(np.ceil(max(valid.shape) / GRID)))
    if step > 1:
        rgb, raw = _block_reduce(rgb, step), _block_reduce(raw, step)
        valid = np.isfinite(rgb).all(axis=0)
    return rgb, raw, valid & np.isfinite(raw).all(axis=0)


_DIRS = ("east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east")


def where(mask: np.ndarray, valid: np.ndarray) -> str:
    """Position of `mask` inside the tile in compass words (top = North)."""
    n_valid = max(int(valid.sum()), 1)
    frac = mask.sum() / n_valid
    if frac > 0.85:
        return "throughout"
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return ""
    # Offsets in -1..1, y up (North) positive.
    cx = (xs.mean() + 0.5) / w * 2 - 1
    cy = 1 - (ys.mean() + 0.5) / h * 2
    # 3x3 occupancy: a cover present in most cells but without a clear centroid is "scattered".
    cell_min = max(0.02, 0.5 * frac)
    cells = [mask[i * h // 3 : (i + 1) * h // 3, j * w // 3 : (j + 1) * w // 3].mean() > cell_min for i in range(3) for j in range(3)]
    r = float(np.hypot(cx, cy))
    if r < 0.18:
        if sum(cells) >= 6 and frac < 0.6:
            return "scattered"
        return "centre"
    if r < 0.3 and sum(cells) >= 7:
        return "scattered"
    angle = (np.degrees(np.arctan2(cy, cx)) + 360 + 22.5) % 360
    return _DIRS[int(angle // 45)]


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r+1) square, with shifts (no scipy in the engine's requirements)."""
    out = mask.copy()
    for _ in range(max(0, radius)):
        p = np.pad(out, 1)
        out = p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:] | p[:-2, :-2] | p[:-2, 2:] | p[2:, :-2] | p[2:, 2:]
    return out


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r, g, b = rgb
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    d = mx - mn
    s = np.where(mx > _EPS, d / (mx + _EPS), 0)
    h = np.zeros_like(mx)
    dd = np.where(d > _EPS, d, 1)
    h = np.where(mx == r, ((g - b) / dd) % 6, h)
    h = np.where(mx == g, (b - r) / dd + 2, h)
    h = np.where(mx == b, (r - g) / dd + 4, h)
    h = np.where(d > _EPS, h * 60, 0)
    return h, s, mx


def colour_names(rgb: np.ndarray, valid: np.ndarray) -> list[tuple[str, float]]:
    """Named colours covering at least 12% of the valid pixels, largest first."""
    h, s, v = (x[valid] for x in _hsv(np.nan_to_num(rgb)))
    if h.size == 0:
        return []
    names = np.full(h.shape, "gray", dtype=object)
    gray = s < 0.18
    names[gray & (v > 0.82)] = "white"
    names[gray & (v > 0.55) & (v <= 0.82)] = "light gray"
    names[gray & (v <= 0.3)] = "dark gray"
    hue_bins = [(0, 15, "red"), (15, 45, "brown"), (45, 70, "yellow"), (70, 165, "green"),
                (165, 200, "turquoise"), (200, 260, "blue"), (260, 300, "purple"), (300, 345, "pink"), (345, 361, "red")]
    for lo, hi, name in hue_bins:
        sel = ~gray & (h >= lo) & (h < hi)
        if name == "brown":
            names[sel & (v > 0.65)] = "orange"
            names[sel & (v <= 0.65)] = "brown"
        elif name == "yellow":
            names[sel & (s < 0.45)] = "beige"
            names[sel & (s >= 0.45)] = "yellow"
        elif name in ("green", "blue"):
            names[sel & (v < 0.4)] = f"dark {name}"
            names[sel & (v >= 0.4)] = name
        else:
            names[sel] = name
    names[v < 0.1] = "very dark"
    uniq, counts = np.unique(names.astype(str), return_counts=True)
    order = np.argsort(-counts)
    return [(str(uniq[i]), float(counts[i] / h.size)) for i in order if counts[i] / h.size >= 0.12][:3]


def _gradients(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.pad(gray, 1, mode="edge")
    gx = (p[1:-1, 2:] - p[1:-1, :-2]) * 2 + (p[:-2, 2:] - p[:-2, :-2]) + (p[2:, 2:] - p[2:, :-2])
    gy = (p[2:, 1:-1] - p[:-2, 1:-1]) * 2 + (p[2:, :-2] - p[:-2, :-2]) + (p[2:, 2:] - p[:-2, 2:])
    return gx / 8, gy / 8


def texture(gray: np.ndarray, valid: np.ndarray) -> tuple[float, np.ndarray, float, str, np.ndarray]:
    """(edge density, per-pixel roughness, linear share, dominant line orientation, per-pixel 'in a lined cell')."""
    g = np.where(valid, gray, np.nanmean(gray[valid]) if valid.any() else 0)
    gx, gy = _gradients(g)
    mag = np.hypot(gx, gy)
    edges = (mag > 0.045) & valid
    edge_density = float(edges.sum() / max(valid.sum(), 1))
    # Local roughness: edge share in 8x8 cells, upsampled back to the grid.
    c = 8 if min(g.shape) >= 32 else max(1, min(g.shape) // 4)
    hh, ww = g.shape[0] // c * c, g.shape[1] // c * c
    rough = np.zeros_like(g)
    if hh and ww:
        cell = edges[:hh, :ww].reshape(hh // c, c, ww // c, c).mean(axis=(1, 3))
        rough[:hh, :ww] = np.kron(cell, np.ones((c, c)))
    # Linear structures: in 16x16 cells with edges, structure-tensor coherence near 1 means the
    # gradients share one orientation (roads, field boundaries, coastlines), unlike speckle.
    s = 16 if min(g.shape) >= 48 else max(4, min(g.shape) // 3)
    hh, ww = g.shape[0] // s * s, g.shape[1] // s * s
    if not hh or not ww:
        return edge_density, rough, 0.0, "", np.zeros(g.shape, bool)

    def cells(a: np.ndarray) -> np.ndarray:
        return a[:hh, :ww].reshape(hh // s, s, ww // s, s).sum(axis=(1, 3))

    jxx, jyy, jxy = cells(gx * gx), cells(gy * gy), cells(gx * gy)
    busy = cells(edges.astype(np.float32)) > 0.05 * s * s
    coh = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (jxx + jyy + _EPS)
    lined = busy & (coh > 0.45)
    linear = float(lined.sum() / max(busy.sum(), 1)) if busy.sum() >= 2 else 0.0
    orient = ""
    if lined.any():
        # Gradient angle is perpendicular to the line.
        theta = 0.5 * np.degrees(np.arctan2(2 * jxy[lined], jxx[lined] - jyy[lined]))
        line_angle = (theta + 90) % 180
        hist = np.histogram(line_angle, bins=[0, 22.5, 67.5, 112.5, 157.5, 180])[0]
        ew, diag, ns = hist[0] + hist[4], hist[1] + hist[3], hist[2]
        top = max(ew, diag, ns)
        orient = "mixed" if top < 0.6 * lined.sum() else ("east-west" if top == ew else "north-south" if top == ns else "diagonal")
    lined_px = np.zeros(g.shape, bool)
    lined_px[:hh, :ww] = np.kron(lined, np.ones((s, s), bool)).astype(bool)
    return edge_density, rough, linear, orient, lined_px


def measure(tile: TileImage) -> Measures:
    """All measurements of one tile (see `Measures`)."""
    full_valid = np.asarray(tile.valid, dtype=bool)
    valid_fraction = float(full_valid.mean()) if full_valid.size else 0.0
    rgb, raw, valid = _shrink(tile)
    n = max(int(valid.sum()), 1)
    nodata_where = where(~valid, np.ones_like(valid)) if 0 < valid_fraction < 0.98 else ""
    extent_m = float(tile.pixel_size * max(full_valid.shape)) if tile.pixel_size else None
    if not valid.any():
        return Measures(valid_fraction, "throughout", [], [], 0.0, 0.0, 0.0, "", tile.has_nir, None, None, 0.0, extent_m)

    r, g, b = rgb
    bright = (r + g + b) / 3
    h, sat, v = _hsv(np.nan_to_num(rgb))
    R, G, B = raw[0], raw[1], raw[2]
    has_nir = bool(tile.has_nir and raw.shape[0] >= 4)
    ndvi: Optional[np.ndarray] = None
    ndwi: Optional[np.ndarray] = None
    if has_nir:
        nir = raw[3]
        ndvi = (nir - R) / (nir + R + _EPS)
        ndwi = (G - nir) / (G + nir + _EPS)
    exg = (2 * G - R - B) / (R + G + B + _EPS)
    vari = (G - R) / (G + R - B + _EPS)

    edge_density, rough, linear, orient, lined_px = texture(np.where(valid, bright, np.nan), valid)
    # Below ~2 m a pixel shows single trees and roofs: tree crowns make texture everywhere, so there
    # built-up land needs straight edges and dark bluish patches are shadows rather than water.
    fine = tile.pixel_size is not None and 0 < tile.pixel_size < 2.0
    # Clouds scatter blue as much as red; very bright ground (beach sand) stays warm.
    cloud = valid & (bright > 0.8) & (sat < 0.22) & (b > 0.7) & (r <= b * 1.05)
    cloud &= rough < 0.35  # cloud tops are smooth; white specks in a textured scene are bright ground
    wet = np.zeros_like(valid)
    if ndvi is not None and ndwi is not None:
        water = valid & ~cloud & ((ndwi > 0.05) | ((ndvi < 0.0) & (bright < 0.3)))
        # Salt marsh, reed beds and tidal flats: dark, wet, barely vegetated -- a mixed water /
        # mud / vegetation signal between open water (NDWI well above 0.3) and land (NDVI > 0.25).
        wet = valid & ~cloud & (bright < 0.4) & (ndvi < 0.25) & (ndwi > -0.05) & (ndwi < 0.3)
        water &= ~wet
        veg = valid & ~cloud & ~water & ~wet & (ndvi > 0.25)
        dense = veg & (ndvi > 0.5)
    else:
        blueish = (b >= r) & (h >= 165) & (h <= 260)
        water = valid & ~cloud & (((bright < 0.38) & blueish & (b > g * 0.85)) | ((bright < 0.5) & blueish & (sat > 0.35)))
        water &= rough < 0.3  # water is smooth; dark bluish speckle is shadow between crowns
        greenish = (exg > 0.04) & (vari > 0.0)
        veg = valid & ~cloud & ~water & greenish
        dense = veg & ((exg > 0.1) | (v < 0.45))
    # A beach is the bright strip at the water's edge; a cloud is a bright blob that doesn't hug the
    # shore. So bright, white, smooth pixels lying mostly within ~100 m of water (beach plus surf zone)
    # are sand, not cloud.
    grid_px = (tile.pixel_size or 0.0) * (full_valid.shape[0] / max(valid.shape[0], 1))
    near = int(np.ceil(100.0 / grid_px)) if grid_px > 0 else 4
    wetted = water | wet
    near_water = dilate(wetted, min(max(near, 1), 12)) if wetted.sum() >= MIN_FRACTION * n else np.zeros_like(valid)
    shore_bright = cloud & near_water
    beach_white = bool(cloud.any() and shore_bright.sum() >= 0.5 * cloud.sum())
    if beach_white:
        cloud = np.zeros_like(cloud)
    shadow = valid & ~water & ~wet & ~veg & ~cloud & ((bright < 0.12) | (fine & (bright < 0.3) & (b > r)))
    rest = valid & ~water & ~wet & ~veg & ~cloud & ~shadow
    built = rest & (rough > 0.35) & (sat < 0.35) & ~(shore_bright if beach_white else np.zeros_like(valid))
    if fine:
        built &= lined_px
    warm = (r >= b) & (h <= 70)
    sand = rest & ~built & (bright > 0.45) & warm
    if sand.sum() < 0.5 * n and not fine:
        # Bright bare fields inland are soil, not sand: sand is claimed at the shore or in a sea of it.
        sand &= near_water
    if beach_white:
        sand |= rest & shore_bright
    bare = rest & ~built & ~sand & warm & (bright > 0.18)

    findings: list[Finding] = []
    for kind, mask in (("water", water), ("wetland", wet), ("vegetation", veg), ("built", built), ("sand", sand),
                       ("bare", bare), ("cloud", cloud), ("shadow", shadow)):
        frac = float(mask.sum() / n)
        if frac >= MIN_FRACTION:
            detail: dict[str, float] = {}
            if kind == "vegetation":
                detail["dense_share"] = float(dense.sum() / max(mask.sum(), 1))
                detail["roughness"] = float(rough[mask].mean())
                detail["brightness"] = float(bright[mask].mean())
            findings.append(Finding(kind, frac, where(mask, valid), detail))
    findings.sort(key=lambda f: -f.fraction)

    # Water fragmentation: share of water pixels touching land -- high for channels, low for open water.
    frag = 0.0
    if water.sum() > 0:
        p = np.pad(water, 1, mode="edge")
        inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
        frag = float((water & ~inner).sum() / water.sum())
    spread = 0.0
    if ndvi is not None and veg.sum() >= 20:
        lo, hi = np.nanpercentile(ndvi[veg], [10, 90])
        spread = float(hi - lo)
    return Measures(
        valid_fraction=valid_fraction, nodata_where=nodata_where, findings=findings,
        colours=colour_names(rgb, valid), brightness=float(np.nanmean(bright[valid])),
        edge_density=edge_density, linear=linear, linear_orientation=orient, has_nir=has_nir,
        ndvi_mean=float(np.nanmean(ndvi[valid])) if ndvi is not None else None,
        ndwi_mean=float(np.nanmean(ndwi[valid])) if ndwi is not None else None,
        water_fragmentation=frag, extent_m=extent_m, ndvi_spread=spread,
    )
