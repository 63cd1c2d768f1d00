"""Plain values shared by every part of the engine.

They cross process boundaries (QGIS task -> worker process -> JSON) so they stay small,
frozen and made of built-in types; numpy arrays appear only in `TileImage`, which never leaves
the process that read it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Sequence

if TYPE_CHECKING:  # annotations only: QGIS's process imports these types without numpy
    import numpy as np

#: progress(done, total, message) -- total may be 0 when unknown.
ProgressFn = Callable[[int, int, str], None]
#: is_canceled() -> True once the user asked to stop; long loops poll it between items.
CancelFn = Callable[[], bool]


def no_progress(done: int, total: int, message: str) -> None:
    """Default progress callback."""


def never_canceled() -> bool:
    """Default cancel callback."""
    return False


@dataclass(frozen=True)
class BandMap:
    """1-based band indices feeding the R, G, B channels (and NIR when the raster has one)."""

    red: int
    green: int
    blue: int
    nir: Optional[int] = None

    @property
    def rgb(self) -> tuple[int, int, int]:
        return (self.red, self.green, self.blue)

    @property
    def is_gray(self) -> bool:
        return self.red == self.green == self.blue

    def indexes(self) -> list[int]:
        """Bands to read, in R, G, B[, NIR] order (duplicates kept so channel order is fixed)."""
        out = [self.red, self.green, self.blue]
        if self.nir is not None:
            out.append(self.nir)
        return out

    def to_text(self) -> str:
        return ",".join(str(b) for b in self.indexes())

    @classmethod
    def parse(cls, text: str) -> BandMap:
        """Parse "R,G,B" or "R,G,B,NIR" (1-based); a single index means gray."""
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"band map {text!r}: expected 1-based integers like 3,2,1 or 4,3,2,8") from None
        if len(nums) == 1:
            nums = nums * 3
        if len(nums) not in (3, 4) or any(n < 1 for n in nums):
            raise ValueError(f"band map {text!r}: expected R,G,B or R,G,B,NIR with 1-based indices")
        return cls(*nums)  # type: ignore[arg-type]

    @classmethod
    def default_for(cls, band_count: int) -> BandMap:
        """3+ bands -> 1,2,3 (RGB order as most GeoTIFFs store it); 1-2 bands -> gray from band 1."""
        if band_count >= 3:
            return cls(1, 2, 3)
        return cls(1, 1, 1)

    def check(self, band_count: int) -> None:
        bad = [b for b in self.indexes() if b > band_count]
        if bad:
            raise ValueError(f"band map {self.to_text()} asks for band {bad[0]} but the raster has {band_count} band(s)")


@dataclass(frozen=True)
class PixelWindow:
    """A window in the raster's full-resolution pixel grid."""

    col_off: int
    row_off: int
    width: int
    height: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class TileRef:
    """Where a tile is: stable id, raster, full-resolution window, scale and footprint."""

    tile_id: str
    raster_id: str
    window: PixelWindow
    scale: int
    #: Closed ring [(x, y), ...] in the raster's CRS (pixel coordinates when the raster has none).
    footprint: tuple[tuple[float, float], ...]

    def footprint_geojson(self) -> dict[str, Any]:
        return {"type": "Polygon", "coordinates": [[list(p) for p in self.footprint]]}


class TileImage:
    """A tile read from a raster, ready for captioners.

    `raw` is made on first access from the native-dtype band planes the reader hands over
    (`bands=`): most captioners only look at the 8-bit `rgb`, and the float32 copy with NaN for
    invalid pixels was a fifth of the tiling time. Callers that have float planes already pass `raw=`.
    `pixel_size` likewise may come as a function (`pixel_size_fn=`, a geodesic computation through
    PROJ) called on first access.
    """

    def __init__(
        self, ref: TileRef, rgb: np.ndarray, raw: Optional[np.ndarray] = None, valid: Optional[np.ndarray] = None,
        has_nir: bool = False, pixel_size: Optional[float] = None, *, bands: Optional[np.ndarray] = None,
        pixel_size_fn: Optional[Callable[[], Optional[float]]] = None,
    ) -> None:
        if valid is None or (raw is None and bands is None):
            raise ValueError("a TileImage needs valid and one of raw / bands")
        self.ref = ref
        #: (H, W, 3) uint8, the raster-wide percentile stretch applied.
        self.rgb = rgb
        #: (H, W) bool, True where the pixel holds data.
        self.valid = valid
        #: True when `raw` has a NIR plane (band map with NIR).
        self.has_nir = has_nir
        self._pixel_size = pixel_size
        self._pixel_size_fn = pixel_size_fn if pixel_size is None else None
        self._raw = raw
        self._bands = bands if raw is None else None

    @property
    def raw(self) -> np.ndarray:
        """(C, H, W) float32 of the mapped bands (R, G, B[, NIR]) in raw units, NaN where invalid."""
        if self._raw is None:
            import numpy as np

            assert self._bands is not None
            raw = self._bands.astype(np.float32)
            if not self.valid.all():
                raw[:, ~self.valid] = np.nan
            self._raw, self._bands = raw, None
        return self._raw

    @raw.setter
    def raw(self, value: np.ndarray) -> None:
        self._raw, self._bands = value, None

    @property
    def pixel_size(self) -> Optional[float]:
        """Ground size of one output pixel in metres, geodesic for any CRS (None when the raster has no CRS)."""
        if self._pixel_size_fn is not None:
            self._pixel_size, self._pixel_size_fn = self._pixel_size_fn(), None
        return self._pixel_size

    @pixel_size.setter
    def pixel_size(self, value: Optional[float]) -> None:
        self._pixel_size, self._pixel_size_fn = value, None

    def __repr__(self) -> str:
        return f"TileImage({self.ref.tile_id!r}, {self.rgb.shape[1]}x{self.rgb.shape[0]} px, nir={self.has_nir})"


@dataclass(frozen=True)
class CaptionVariant:
    """One structured description of a tile, in the paper's three fields."""

    one_sentence: str
    feature: str
    caption: str
    #: Why this is a stand-in (e.g. a spectral caption because the VLM answered nothing); "" for a real answer.
    #: Fallbacks are stored as such, never as the captioner's answer, so the next update asks again.
    fallback: str = field(default="", compare=False)

    def text(self) -> str:
        """The text that is embedded: the three fields as one passage."""
        return " ".join(s.strip() for s in (self.one_sentence, self.feature, self.caption) if s and s.strip())

    def to_dict(self) -> dict[str, str]:
        d = {"one_sentence": self.one_sentence, "feature": self.feature, "caption": self.caption}
        if self.fallback:
            d["fallback"] = self.fallback
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaptionVariant:
        return cls(str(d.get("one_sentence", "")), str(d.get("feature", "")), str(d.get("caption", "")))


class Captioner(Protocol):
    """Images in, K structured caption variants per image out."""

    @property
    def fingerprint(self) -> str:
        """backend + model + revision + prompt version + generation params; the caption cache key
        (an attribute, or a property when it is asked of a server)."""
        ...

    def caption(self, tiles: Sequence[TileImage]) -> list[list[CaptionVariant]]:
        ...


class Embedder(Protocol):
    """Texts in, L2-normalised float32 vectors out."""

    fingerprint: str
    dim: int

    def encode_documents(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        ...

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        ...


@dataclass
class Hit:
    """One ranked tile returned by a search."""

    rank: int
    score: float
    tile_id: str
    raster_id: str
    raster: str
    window: PixelWindow
    scale: int
    caption: str
    variant_index: int
    footprint: dict[str, Any]
    crs: Optional[str]
    raster_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["window"] = self.window.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Hit:
        d = dict(d)
        d["window"] = PixelWindow(**d["window"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


@dataclass(frozen=True)
class RasterSource:
    """What the user asked to index: a file GDAL opens, its band map and a display name.

    Lives here (numpy-free) because QGIS's process builds these from layers before a task starts.
    """

    path: str
    band_map: Optional[BandMap] = None
    name: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "band_map": self.band_map.to_text() if self.band_map else None, "name": self.name}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RasterSource:
        bm = d.get("band_map")
        return cls(str(d["path"]), BandMap.parse(bm) if bm else None, d.get("name"))
