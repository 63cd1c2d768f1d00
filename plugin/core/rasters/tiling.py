"""The tile grid over a raster and the reads that turn tiles into images for captioners.

Grid: square tiles of `tile_size` pixels (or `tile_size_units` ground units) at scale 1, and for each
extra scale s tiles covering s x s times the area, read decimated to the same output size -- so a car
park and an airport both fit a tile. Windows are always in the full-resolution pixel grid.

Edge tiles: the last column/row of tiles is shifted back inside the raster instead of being padded,
so every tile is full size and full of real pixels (captioners never see an artificial border; the
shifted tile overlaps its neighbour a little more). A raster smaller than a tile gets one tile
clipped to the raster. A scale whose tile would already cover the whole raster at a smaller scale is
skipped (it would only repeat that tile).

Reads: one `rasterio` windowed read per tile (with `out_shape` decimation and average resampling for
scale > 1, which GDAL serves from overviews when the file has them), so memory stays at a few tiles
whatever the raster size. No thread here: the indexing pipeline already reads ahead in its own
thread, and a second one only added GIL hand-offs. Radiometry uses the raster-wide stretch of `RasterInfo`.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from ..errors import Canceled, RasterError, TilingError
from ..types import CancelFn, PixelWindow, ProgressFn, TileImage, TileRef, never_canceled, no_progress
from .geodesy import pixel_m, windows_ground_size_m
from .raster import RasterInfo
from .raster_io import BandPlan, gdal_error_line, read_bands_lazy

__all__ = ["TilingParams", "tile_id", "footprint", "plan_tiles", "count_tiles", "iter_tiles", "read_tile", "tile_side_px", "MAX_OUT_SIZE"]

#: Default cap of the image side handed to captioners (VLMs resize larger images anyway).
MAX_OUT_SIZE = 1024
#: GDAL block cache while tiling: blocks are read about once, a big cache only costs memory.
_CACHE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class TilingParams:
    """How a raster is cut into tiles; stored with the index so a re-run plans the same tiles."""

    tile_size: int = 512
    tile_size_units: Optional[float] = None
    overlap: float = 0.0
    scales: tuple[int, ...] = (1,)
    out_size: Optional[int] = None
    min_valid_fraction: float = 0.5

    def __post_init__(self) -> None:
        # Accept numpy / other integral types from callers, store plain ints (JSON, hashing).
        if isinstance(self.tile_size, numbers.Integral) and not isinstance(self.tile_size, bool):
            object.__setattr__(self, "tile_size", int(self.tile_size))
        if isinstance(self.out_size, numbers.Integral) and not isinstance(self.out_size, bool):
            object.__setattr__(self, "out_size", int(self.out_size))
        if not isinstance(self.tile_size, int) or self.tile_size < 8:
            raise TilingError(f"tile size {self.tile_size!r}: expected an integer of at least 8 pixels")
        if self.tile_size_units is not None and not (self.tile_size_units > 0 and math.isfinite(self.tile_size_units)):
            raise TilingError(f"tile size in ground units {self.tile_size_units!r}: expected a positive number")
        if not (0.0 <= self.overlap < 1.0):
            raise TilingError(f"overlap {self.overlap!r}: expected a fraction of the tile size, 0 <= overlap < 1")
        scales = tuple(int(s) if isinstance(s, numbers.Integral) and not isinstance(s, bool) else s for s in self.scales)
        if not scales or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in scales):
            raise TilingError(f"scales {self.scales!r}: expected positive integers like 1,2,4")
        object.__setattr__(self, "scales", tuple(sorted(set(scales))))
        if self.out_size is not None and (not isinstance(self.out_size, int) or self.out_size < 8):
            raise TilingError(f"output size {self.out_size!r}: expected an integer of at least 8 pixels")
        if not (0.0 <= self.min_valid_fraction <= 1.0):
            raise TilingError(f"minimum valid fraction {self.min_valid_fraction!r}: expected 0..1")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scales"] = list(self.scales)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TilingParams:
        units = d.get("tile_size_units")
        out = d.get("out_size")
        return cls(
            tile_size=int(d.get("tile_size", 512)),
            tile_size_units=None if units is None else float(units),
            overlap=float(d.get("overlap", 0.0)),
            scales=tuple(int(s) for s in d.get("scales", (1,))),
            out_size=None if out is None else int(out),
            min_valid_fraction=float(d.get("min_valid_fraction", 0.5)),
        )


def tile_id(raster_id: str, window: PixelWindow, scale: int) -> str:
    """Stable id: the raster's content fingerprint + full-resolution window + scale (16 hex chars)."""
    key = f"{raster_id}|{window.col_off},{window.row_off},{window.width},{window.height}|{scale}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def footprint(info: RasterInfo, window: PixelWindow) -> tuple[tuple[float, float], ...]:
    """Closed ring of the window's corners through the affine transform (right for rotated
    transforms); plain pixel coordinates (col, row) when the raster has no CRS."""
    c0, r0 = window.col_off, window.row_off
    c1, r1 = c0 + window.width, r0 + window.height
    corners = ((c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0))
    if not info.has_crs:
        return tuple((float(c), float(r)) for c, r in corners)
    a, b, c, d, e, f = info.transform
    return tuple((a * col + b * row + c, d * col + e * row + f) for col, row in corners)


def tile_side_px(info: RasterInfo, params: TilingParams) -> int:
    """Scale-1 tile side in full-resolution pixels (ground units converted with the pixel size)."""
    if params.tile_size_units is None:
        return params.tile_size
    if info.pixel_size is None or not info.pixel_size > 0:
        raise TilingError(f"{info.name}: tile size in ground units needs a raster with a CRS; give it in pixels")
    side = int(round(params.tile_size_units / info.pixel_size))
    if side < 8:
        raise TilingError(
            f"{info.name}: {params.tile_size_units:g} ground units is {side} pixel(s) at {info.pixel_size:g} per pixel; "
            "use a larger tile size"
        )
    return side


def _starts(length: int, side: int, stride: int) -> list[int]:
    """Offsets covering [0, length): regular steps, the last one shifted back inside the raster."""
    if side >= length:
        return [0]
    out = list(range(0, length - side + 1, stride))
    if out[-1] + side < length:
        out.append(length - side)
    return out


def _n_starts(length: int, side: int, stride: int) -> int:
    """len(_starts(length, side, stride)) without building the list."""
    if side >= length:
        return 1
    n = (length - side) // stride + 1
    return n + (1 if (n - 1) * stride + side < length else 0)


def count_tiles(info: RasterInfo, params: TilingParams) -> int:
    """How many tiles `plan_tiles` will plan, computed without planning (absurd plans are refused
    from this number before they take memory or touch the index)."""
    base = tile_side_px(info, params)
    total, prev_side = 0, None
    for scale in params.scales:
        side = base * scale
        if prev_side is not None and prev_side >= info.width and prev_side >= info.height:
            break
        prev_side = side
        stride = max(1, int(round(side * (1.0 - params.overlap))))
        total += _n_starts(info.height, side, stride) * _n_starts(info.width, side, stride)
    return total


def plan_tiles(info: RasterInfo, params: TilingParams) -> list[TileRef]:
    """Every tile of the raster at every scale, in scale then row-major order. Reads no pixels."""
    base = tile_side_px(info, params)
    refs: list[TileRef] = []
    prev_side: Optional[int] = None
    for scale in params.scales:
        side = base * scale
        if prev_side is not None and prev_side >= info.width and prev_side >= info.height:
            break  # a smaller scale already covers the raster with one tile
        prev_side = side
        stride = max(1, int(round(side * (1.0 - params.overlap))))
        w, h = min(side, info.width), min(side, info.height)
        for row in _starts(info.height, side, stride):
            for col in _starts(info.width, side, stride):
                win = PixelWindow(col, row, w, h)
                refs.append(TileRef(tile_id(info.raster_id, win, scale), info.raster_id, win, scale, footprint(info, win)))
    return refs


def _out_shape(window: PixelWindow, side_out: int) -> tuple[int, int]:
    """Output (H, W): the window's longer side maps to side_out; never upsampled."""
    f = max(1.0, max(window.width, window.height) / side_out)
    return max(1, int(round(window.height / f))), max(1, int(round(window.width / f)))


class _Renderer:
    """Raw -> 8-bit with the raster-wide stretch; integer inputs go through a lookup table."""

    def __init__(self, info: RasterInfo) -> None:
        self.stretch = info.stretch[:3]
        self.identity = all(lo == 0.0 and hi == 255.0 for lo, hi in self.stretch)
        self._luts: dict[str, np.ndarray] = {}

    def _lut(self, dtype: np.dtype) -> Optional[np.ndarray]:
        if dtype.kind not in "ui" or dtype.itemsize > 2:
            return None
        key = dtype.str
        if key not in self._luts:
            info = np.iinfo(dtype)
            v = np.arange(info.min, info.max + 1, dtype=np.float64)
            self._luts[key] = np.stack([self._scale(v, lo, hi) for lo, hi in self.stretch])
        return self._luts[key]

    @staticmethod
    def _scale(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
        return np.clip((v - lo) * (255.0 / max(hi - lo, 1e-12)) + 0.5, 0, 255).astype(np.uint8)

    def rgb(self, data: np.ndarray, valid: np.ndarray, all_valid: bool) -> np.ndarray:
        """(H, W, 3) uint8 as a channel-last *view* of (3, H, W) planes: each plane is written
        contiguously (a lookup-table gather or a copy), never interleaved pixel by pixel -- the
        interleave was most of the per-tile cost over a plain read. Consumers that need packed
        pixels (PIL, for VLMs) make them; the spectral captioner reads the planes as they are."""
        if self.identity and data.dtype == np.uint8:
            planes = data[:3] if all_valid else data[:3].copy()  # all valid: no copy at all
        else:
            planes = np.empty((3,) + data.shape[1:], dtype=np.uint8)
            lut = self._lut(data.dtype)
            off = -int(np.iinfo(data.dtype).min) if lut is not None else 0
            for c in range(3):
                if lut is not None:
                    np.take(lut[c], data[c].astype(np.int32) + off if off else data[c], out=planes[c])
                else:
                    lo, hi = self.stretch[c]
                    with np.errstate(invalid="ignore"):
                        planes[c] = self._scale(np.nan_to_num(data[c].astype(np.float64), nan=lo), lo, hi)
        if not all_valid:
            planes[:, ~valid] = 0
        return planes.transpose(1, 2, 0)


class _RowSizes:
    """Ground pixel sizes of the planned tiles, made for a whole row of tiles at the first request
    in that row: one PROJ call per row instead of one per tile (same numbers as `window_pixel_m`)."""

    def __init__(self, info: RasterInfo, refs: Sequence[TileRef]) -> None:
        self.info = info
        self.rows: dict[tuple[int, int], list[PixelWindow]] = {}
        for ref in refs:
            w = ref.window
            self.rows.setdefault((w.row_off, w.height), []).append(w)
        self.sizes: dict[PixelWindow, Optional[tuple[float, float]]] = {}

    def pixel_m(self, win: PixelWindow, shape: tuple[int, int]) -> Optional[float]:
        if win not in self.sizes:
            row = [w for w in self.rows.get((win.row_off, win.height), []) if w not in self.sizes] or [win]
            if win not in row:
                row.append(win)
            got = windows_ground_size_m(self.info.crs_wkt, self.info.transform,
                                        [(w.col_off, w.row_off, w.width, w.height) for w in row])
            self.sizes.update(zip(row, got))
        return pixel_m(self.sizes[win], shape)


def _fetch(ds: Any, info: RasterInfo, ref: TileRef, side_out: int,
           plan: Optional[BandPlan] = None) -> tuple[np.ndarray, Optional[np.ndarray], tuple[int, int]]:
    """The GDAL part of a tile read: native pixels and validity (None: all valid)."""
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    win = ref.window
    shape = _out_shape(win, side_out)
    decimated = shape != (win.height, win.width)
    data, valid = read_bands_lazy(
        ds, info.band_map.indexes(), window=Window(win.col_off, win.row_off, win.width, win.height),
        out_shape=shape if decimated else None, resampling=Resampling.average, plan=plan,
    )
    return data, valid, shape


def _finish(info: RasterInfo, ref: TileRef, fetched: tuple[np.ndarray, Optional[np.ndarray], tuple[int, int]],
            renderer: _Renderer, sizes: _RowSizes) -> tuple[TileImage, int]:
    """The numpy part: 8-bit RGB and validity; the float32 planes (`TileImage.raw`) and the ground
    pixel size are made only if a captioner asks for them. Returns the tile and its number of valid pixels."""
    data, valid, shape = fetched
    if valid is None:
        valid = np.ones(shape, dtype=bool)
        n_valid = valid.size
    else:
        n_valid = int(np.count_nonzero(valid))
    all_valid = n_valid == valid.size
    win = ref.window
    tile = TileImage(
        ref=ref, rgb=renderer.rgb(data, valid, all_valid), bands=data, valid=valid,
        has_nir=info.band_map.nir is not None,
        pixel_size_fn=lambda: sizes.pixel_m(win, shape),
    )
    return tile, n_valid


def _open_for(info: RasterInfo) -> Any:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(info.path)
    except RasterioIOError as exc:
        raise RasterError(f"cannot read raster {info.path}: {str(exc).splitlines()[0]}") from None
    if (ds.width, ds.height) != (info.width, info.height) or ds.count < max(info.band_map.indexes()):
        ds.close()
        raise RasterError(f"{info.path} changed since it was opened ({ds.width}x{ds.height}); open it again")
    return ds


def _default_out(info: RasterInfo, params: TilingParams) -> int:
    return params.out_size or min(tile_side_px(info, params), MAX_OUT_SIZE)


def iter_tiles(
    info: RasterInfo,
    params: TilingParams,
    refs: Optional[Sequence[TileRef]] = None,
    progress: ProgressFn = no_progress,
    is_canceled: CancelFn = never_canceled,
    on_error: Optional[Callable[[TileRef, str], None]] = None,
    on_skip: Optional[Callable[[TileRef], None]] = None,
) -> Iterator[TileImage]:
    """Read the planned tiles (or `refs`) one window at a time; yield those with at least
    `params.min_valid_fraction` valid pixels (the others go to `on_skip(ref)`). Progress counts every
    tile read, skipped or not; raises Canceled between tiles once is_canceled() is true.

    A tile whose pixels cannot be read (a corrupt compressed block) goes to `on_error(ref, reason)`
    and the next tile is read; without `on_error` it is a RasterError naming the tile."""
    import rasterio

    todo = list(refs) if refs is not None else plan_tiles(info, params)
    total = len(todo)
    if not total:
        return
    side_out = _default_out(info, params)
    renderer = _Renderer(info)
    sizes = _RowSizes(info, todo)
    with rasterio.Env(GDAL_CACHEMAX=_CACHE_BYTES), _open_for(info) as ds:
        plan = BandPlan(ds, info.band_map.indexes())
        for i, ref in enumerate(todo):
            if is_canceled():
                raise Canceled(f"tiling canceled after {i} of {total} tiles")
            try:
                fetched = _fetch(ds, info, ref, side_out, plan)
            except (MemoryError, Canceled):
                raise
            except Exception as exc:  # noqa: BLE001 - GDAL/rasterio read errors of this window only
                w = ref.window
                reason = f"pixels {w.col_off},{w.row_off} {w.width}x{w.height} cannot be read: {gdal_error_line(exc)}"
                if on_error is None:
                    raise RasterError(f"{info.name}: {reason}") from None
                on_error(ref, reason)
                progress(i + 1, total, f"{info.name}: tile {i + 1}/{total}")
                continue
            tile, n_valid = _finish(info, ref, fetched, renderer, sizes)
            progress(i + 1, total, f"{info.name}: tile {i + 1}/{total}")
            if n_valid > 0 and n_valid >= params.min_valid_fraction * tile.valid.size:
                yield tile
            elif on_skip is not None:
                on_skip(ref)


def read_tile(info: RasterInfo, ref: TileRef, out_size: Optional[int] = None) -> TileImage:
    """One tile, whatever its validity (GUI thumbnails, re-reading a hit). Default output side:
    the scale-1 tile side, capped at MAX_OUT_SIZE."""
    side = out_size or min(max(ref.window.width, ref.window.height) // max(ref.scale, 1), MAX_OUT_SIZE)
    with _open_for(info) as ds:
        try:
            fetched = _fetch(ds, info, ref, max(1, side))
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a corrupt block: one line, not a GDAL traceback
            raise RasterError(f"{info.name}: tile {ref.tile_id} cannot be read: {gdal_error_line(exc)}") from None
        return _finish(info, ref, fetched, _Renderer(info), _RowSizes(info, [ref]))[0]
