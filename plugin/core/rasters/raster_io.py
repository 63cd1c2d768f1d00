"""Pixel reads shared by `raster.py` (stretch sample) and `tiling.py` (tiles).

Validity comes from GDAL's own mask model, asked for only when it can say something: bands flagged
all-valid cost nothing, a nodata value is compared on the pixels already read (no second read),
and only per-dataset masks (internal/.msk masks) and alpha bands are read as masks. Float NaN/inf
is always invalid.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

#: A raster this small (pixels) gets its stretch from one decimated read of the whole thing.
_SMALL_PIXELS = 4096 * 4096
#: Longest side of the decimated stretch sample.
_SAMPLE_SIDE = 1024
#: Larger rasters without overviews: a grid x grid sample of full-resolution windows of side px.
_GRID, _GRID_SIDE = 8, 256


def _unique(indexes: Sequence[int]) -> list[int]:
    out: list[int] = []
    for i in indexes:
        if i not in out:
            out.append(i)
    return out


def read_bands(
    ds: Any,
    indexes: Sequence[int],
    window: Any = None,
    out_shape: Optional[tuple[int, int]] = None,
    resampling: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read the mapped channels (duplicates allowed, e.g. gray 1,1,1) in their native dtype.

    Returns (data (C, H, W) native dtype, valid (H, W) bool). Each distinct band is read once.
    """
    data, valid = read_bands_lazy(ds, indexes, window, out_shape, resampling)
    if valid is None:
        valid = np.ones(data.shape[1:], dtype=bool)
    return data, valid


class BandPlan:
    """What validity costs for these bands of this dataset, worked out once per dataset (rasterio
    rebuilds `mask_flag_enums` / `nodatavals` on every access: ~0.1-0.5 ms a tile in the hot loop)."""

    def __init__(self, ds: Any, indexes: Sequence[int]) -> None:
        from rasterio.enums import MaskFlags

        self.uniq = _unique(indexes)
        self.reorder: Optional[list[int]] = None if list(indexes) == self.uniq else [self.uniq.index(i) for i in indexes]
        all_flags, nodatavals = ds.mask_flag_enums, ds.nodatavals
        #: Bands whose GDAL mask must be read (a per-dataset mask once, alpha bands each).
        self.mask_bands: list[int] = []
        dataset_mask = False
        #: (position in the read, nodata value) for bands with a (non-NaN) nodata value.
        self.nodata: list[tuple[int, Any]] = []
        for k, b in enumerate(self.uniq):
            flags = all_flags[b - 1]
            if MaskFlags.per_dataset in flags and not dataset_mask:
                self.mask_bands.append(b)
                dataset_mask = True
            elif MaskFlags.alpha in flags and MaskFlags.per_dataset not in flags:
                self.mask_bands.append(b)
            nd = nodatavals[b - 1]
            if nd is not None and not np.isnan(nd):
                self.nodata.append((k, nd))


def read_bands_lazy(
    ds: Any,
    indexes: Sequence[int],
    window: Any = None,
    out_shape: Optional[tuple[int, int]] = None,
    resampling: Any = None,
    plan: Optional[BandPlan] = None,
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """As read_bands, but valid is None when no pixel can be invalid (no mask, no nodata, not float),
    so the hot tiling loop skips building and scanning an all-true mask. `plan`: a `BandPlan` of
    (ds, indexes) made once for many reads."""
    if plan is None:
        plan = BandPlan(ds, indexes)
    kw: dict[str, Any] = {"window": window}
    if out_shape is not None:
        from rasterio.enums import Resampling

        kw["out_shape"] = (len(plan.uniq), out_shape[0], out_shape[1])
        kw["resampling"] = resampling if resampling is not None else Resampling.nearest
    data = ds.read(plan.uniq, **kw)
    valid: Optional[np.ndarray] = None

    def _and(m: np.ndarray) -> None:
        nonlocal valid
        valid = m if valid is None else (valid & m)

    for b in plan.mask_bands:
        mkw: dict[str, Any] = {"window": window}
        if out_shape is not None:
            mkw["out_shape"] = out_shape
        _and(ds.read_masks(b, **mkw) > 0)
    for k, nd in plan.nodata:
        _and(data[k] != np.asarray(nd).astype(data.dtype))
    if data.dtype.kind == "f":
        for k in range(len(plan.uniq)):
            _and(np.isfinite(data[k]))
    if plan.reorder is not None:
        data = data[plan.reorder]
    return data, valid


def sample_stretch_pixels(ds: Any, indexes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """A raster-wide pixel sample for the stretch, cheap whatever the raster size.

    Overviews present or a small raster: one decimated read (GDAL picks the overview). Otherwise a
    grid of full-resolution windows, each touching a handful of blocks -- a decimated read without
    overviews would decompress every block of the file. Returns (data (C, N), valid (N,)).
    """
    from rasterio.windows import Window

    has_ovr = bool(ds.overviews(indexes[0]))
    if has_ovr or ds.width * ds.height <= _SMALL_PIXELS:
        f = max(1.0, max(ds.width, ds.height) / _SAMPLE_SIDE)
        shape = (max(1, int(round(ds.height / f))), max(1, int(round(ds.width / f))))
        data, valid = read_bands(ds, indexes, out_shape=shape if f > 1 else None)
        return data.reshape(data.shape[0], -1), valid.reshape(-1)
    side_c, side_r = min(_GRID_SIDE, ds.width), min(_GRID_SIDE, ds.height)
    parts, masks = [], []
    for gy in range(_GRID):
        row = (ds.height - side_r) * gy // (_GRID - 1)
        for gx in range(_GRID):
            col = (ds.width - side_c) * gx // (_GRID - 1)
            d, v = read_bands(ds, indexes, window=Window(col, row, side_c, side_r))
            parts.append(d.reshape(d.shape[0], -1))
            masks.append(v.reshape(-1))
    return np.concatenate(parts, axis=1), np.concatenate(masks)


def gdal_error_line(exc: BaseException) -> str:
    """GDAL's own reason for a failed read, in one line.

    rasterio raises "Read failed. See previous exception for details." and chains GDAL's message
    ("band 1: IReadBlock failed at X offset 1, Y offset 1: TIFFReadEncodedTile() failed.");
    the chained one is the useful one."""
    lines: list[str] = []
    e: Optional[BaseException] = exc
    while e is not None and len(lines) < 5:
        text = " ".join(str(e).split())
        if text and "see previous exception" not in text.lower():
            lines.append(text)
        e = e.__cause__ or e.__context__
    line = lines[-1] if lines else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."
