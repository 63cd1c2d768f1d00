"""The `spectral` captioner: honest, deterministic captions from band physics, no weights.

It exists so the whole product works where no VLM is installed. It only states what
`spectral_measure.measure` found (water, vegetation, sand, bare soil, built-up texture, cloud,
shadow, colours, texture, straight lines) with their positions, in the paper's three fields, and
uses the words people type in queries ("open ocean", "sandy beach", "farmland with fields",
"marsh with channels", "town with buildings", "forest"). The K variants differ in wording and
emphasis, never in content.
"""

from __future__ import annotations

from typing import Optional, Sequence

from ..types import CaptionVariant, TileImage
from .spectral_measure import Finding, Measures, measure

#: Bump when the wording or the thresholds change: it is part of the caption cache key.
SPECTRAL_VERSION = "6"  # 6: ground sizes in geodesic metres (EPSG:4326 said "0 m")
DEFAULT_VARIANTS = 5

_NAMES = {
    "water": ("water", "open water", "a water body", "water", "water"),
    "dense": ("dense vegetation", "forest or dense woodland", "trees and dense vegetation", "dense green vegetation", "forest"),
    "sparse": ("sparse vegetation", "grass or low vegetation", "patchy vegetation", "thin vegetation cover", "grassland"),
    "built": ("built-up area with buildings", "buildings and streets", "urban texture of buildings", "built-up land", "buildings"),
    "wetland": ("wet marsh", "marsh or tidal flat", "wetland of mud and marsh", "salt marsh", "marshland"),
    "sand": ("sand", "sandy ground", "bright sand", "beach or dune sand", "sand"),
    "bare": ("bare soil", "bare ground", "exposed soil", "bare fields or soil", "bare soil"),
    "cloud": ("cloud or snow", "bright white cloud or snow", "white cloud or snow cover", "cloud or snow", "clouds"),
    "shadow": ("dark shadow", "deep shadow", "shadowed ground", "dark shadowed areas", "shadow"),
}


def _size(frac: float) -> str:
    if frac > 0.85:
        return "nearly all of the tile"
    if frac > 0.6:
        return "most of the tile"
    if frac > 0.35:
        return "a large part of the tile"
    if frac > 0.15:
        return "part of the tile"
    if frac > 0.05:
        return "small patches"
    return "a few spots"


def _at(where: str) -> str:
    return {"throughout": "across the whole tile", "centre": "in the centre", "scattered": "scattered across the tile",
            "": ""}.get(where, f"in the {where}")


def _name(f: Finding, k: int) -> str:
    kind = f.kind
    if kind == "vegetation":
        kind = "dense" if f.detail.get("dense_share", 0) > 0.5 else "sparse"
    return _NAMES[kind][k % 5]


def scene(m: Measures) -> tuple[str, list[str]]:
    """(scene phrase, query words) -- the overall kind of place, from the measured covers only."""
    water, veg, built, sand, bare, cloud = (m.frac(k) for k in ("water", "vegetation", "built", "sand", "bare", "cloud"))
    vf = m.get("vegetation")
    dense = bool(vf and vf.detail.get("dense_share", 0) > 0.5)
    rough = vf.detail.get("roughness", 0) if vf else 0
    lines = m.linear > 0.3
    if m.valid_fraction < 0.02:
        return "an empty tile with no image data", ["no data"]
    if cloud > 0.6:
        return "a scene covered by cloud or snow", ["clouds", "snow"]
    wet = m.frac("wetland")
    if water > 0.85:
        return "open water such as open ocean or a large lake", ["open ocean", "sea", "lake"]
    if sand > 0.05 and water + wet > 0.1:
        return "a coast with a sandy beach between water and land", ["sandy beach", "coastline", "shore"]
    if wet > 0.15 and water + wet > 0.45:
        return ("a marsh with channels, a wetland of marsh and tidal flats cut by water channels",
                ["marsh with channels", "salt marsh", "wetland", "tidal flats"])
    if 0.05 < water < 0.7 and m.water_fragmentation > 0.35 and veg > 0.2:
        return "a marsh with channels, a wetland of vegetation cut by narrow water", ["marsh with channels", "wetland"]
    if water > 0.1 and sand > 0.03:
        return "a coast with a sandy beach between water and land", ["sandy beach", "coastline", "shore"]
    if water > 0.1 and m.water_fragmentation > 0.4 and water < 0.35:
        return "land crossed by a river or channel", ["river", "channel"]
    if water > 0.1:
        return "a shoreline where water meets land", ["coastline", "shore", "waterfront"]
    if built > 0.35:
        return "a town with buildings, a dense built-up area", ["town with buildings", "urban area", "city"]
    if built > 0.12:
        return "a settlement with buildings among other land", ["buildings", "village", "town"]
    if sand > 0.5:
        return "a sandy area of bright bare sand", ["sand", "dunes", "beach"]
    if 0.2 < veg < 0.7 and dense and rough > 0.3 and (bare + sand) > 0.1 and not lines:
        ground = "sandy" if sand > bare else "bare"
        return f"open woodland with trees scattered on {ground} ground", ["trees", "open woodland", "forest"]
    if veg > 0.5 and lines and m.ndvi_spread > 0.3 and built < 0.12:
        # Parcels of different crops (and harvested ones) differ in NDVI, bounded by straight lines.
        return "farmland with fields separated by straight boundaries", ["farmland with fields", "agricultural fields", "cropland"]
    if veg > 0.15 and (bare + sand) > 0.15 and lines:
        return "farmland with fields separated by straight boundaries", ["farmland with fields", "agricultural fields", "cropland"]
    dark = bool(vf and vf.detail.get("brightness", 1) < 0.25)
    if veg > 0.6 and dense and (rough > 0.15 or dark):
        return "a forest of dense vegetation", ["forest", "woodland", "trees"]
    if veg > 0.6 and dense:
        return "dense green vegetation such as forest, crops or meadows", ["forest", "dense vegetation", "green fields"]
    if veg > 0.6:
        return "land with sparse, low vegetation such as grassland", ["grassland", "meadow"]
    if veg > 0.15 and bare > 0.15:
        return "a patchwork of vegetation and bare soil, possibly farmland", ["farmland", "fields", "bare soil"]
    if bare > 0.5:
        return "bare soil with little vegetation", ["bare soil", "bare land"]
    return "mixed land cover", ["mixed land"]


def _lines_phrase(m: Measures, k: int) -> str:
    if m.linear <= 0.3:
        return ""
    what = "roads or streets" if m.frac("built") > 0.12 else (
        "a coastline or shore edge" if m.frac("water") > 0.1 else "field boundaries or roads")
    orient = f" running {m.linear_orientation}" if m.linear_orientation in ("north-south", "east-west") else (
        " running diagonally" if m.linear_orientation == "diagonal" else "")
    words = ("straight linear structures", "straight lines", "long straight edges", "linear features", "straight lines")
    return f"{words[k % 5]}{orient}, likely {what}"


def _texture_word(m: Measures) -> str:
    if m.edge_density > 0.45:
        return "busy, highly textured"
    if m.edge_density > 0.2:
        return "moderately textured"
    return "smooth, uniform"


def _colours(m: Measures) -> str:
    names = [c for c, _ in m.colours]
    if not names:
        return ""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _features(m: Measures, k: int, by_position: bool = False) -> str:
    found = sorted(m.findings, key=lambda f: f.where) if by_position else m.findings
    parts = [f"{_name(f, k)} {_at(f.where)}".strip() for f in found]
    lines = _lines_phrase(m, k)
    if lines:
        parts.append(lines)
    if m.nodata_where:
        parts.append(f"no data {_at(m.nodata_where)}")
    if not parts:
        return "No distinct land cover is detected."
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def _paragraph(m: Measures, k: int, scene_text: str) -> str:
    s: list[str] = []
    if m.extent_m:
        km = m.extent_m / 1000
        size = f"about {km:.1f} km" if km >= 1 else f"about {m.extent_m:.0f} m"
        s.append(f"The tile spans {size} across and shows {scene_text}.")
    else:
        s.append(f"The tile shows {scene_text}.")
    for f in m.findings:
        at = "" if f.where == "throughout" else (", in scattered patches" if f.where == "scattered" else f", {_at(f.where)}")
        s.append(f"{_name(f, k).capitalize()} covers {_size(f.fraction)}{at}.")
    lines = _lines_phrase(m, k)
    if lines:
        s.append(f"There are {lines}.")
    colours = _colours(m)
    if colours:
        s.append(f"The dominant colours are {colours}; the surface looks {_texture_word(m)}.")
    if m.has_nir and m.ndvi_mean is not None and m.ndvi_mean > 0.2:
        # Only stated when positive: "low vegetation" on a sea tile would pull vegetation queries.
        level = "high" if m.ndvi_mean > 0.5 else "moderate"
        s.append(f"The near-infrared band shows {level} vegetation vigour overall.")
    if m.nodata_where:
        s.append(f"Part of the tile {_at(m.nodata_where)} has no image data.")
    return " ".join(s)


def describe(m: Measures, k: int) -> CaptionVariant:
    """Variant `k` of the caption of measured tile `m` (same facts, different wording/emphasis)."""
    scene_text, words = scene(m)
    main = m.findings[0] if m.findings else None
    detail = f", with {_name(main, k)} {_at(main.where)}" if main and main.fraction < 0.85 else ""
    kind = k % 5
    if kind == 0:
        one = f"This is {scene_text}{detail}."
        return CaptionVariant(one, _features(m, k), _paragraph(m, k, scene_text))
    if kind == 1:
        one = f"A satellite view of {scene_text}{detail}."
        return CaptionVariant(one, _features(m, k, by_position=True), _paragraph(m, k, scene_text))
    if kind == 2:
        covers = ", ".join(f"{_name(f, k)} ({_size(f.fraction)})" for f in m.findings) or "no distinct cover"
        one = f"Remote sensing image of {scene_text}."
        return CaptionVariant(one, f"Land cover: {covers}.", _paragraph(m, k, scene_text))
    if kind == 3:
        lines = _lines_phrase(m, k)
        colours = _colours(m)
        one = f"A {_texture_word(m)} image of {scene_text}{detail}."
        feat = _features(m, k)
        extra = " ".join(x for x in (f"Colours: {colours}." if colours else "", f"Also {lines}." if lines else "") if x)
        return CaptionVariant(one, f"{feat} {extra}".strip(), _paragraph(m, k, scene_text))
    one = f"{words[0].capitalize()}: {scene_text}."
    feat = "; ".join(words + [f"{_name(f, k)} {_at(f.where)}" for f in m.findings[:3]]) + "."
    return CaptionVariant(one, feat, _paragraph(m, k, scene_text))


def spectral_facts(tile: TileImage) -> str:
    """What the near-infrared band shows, for appending to VLM captions ('' without NIR).

    A VLM sees only the RGB rendering; NDVI and NDWI add facts it cannot see (healthy vegetation
    versus green paint, water versus dark asphalt).
    """
    if not tile.has_nir:
        return ""
    m = measure(tile)
    parts = []
    for kind, label in (("vegetation", "NDVI"), ("water", "NDWI")):
        f = m.get(kind)
        if f:
            parts.append(f"{_name(f, 0)} covering {_size(f.fraction)} {_at(f.where)} ({label})")
    if not parts:
        return "Near-infrared measurements show neither vegetation nor open water."
    return "Near-infrared measurements show " + " and ".join(parts) + "."


class SpectralCaptioner:
    """Captions from band physics only (see the module docstring)."""

    def __init__(self, variants: Optional[int] = None, batch_size: Optional[int] = None) -> None:
        self.variants = int(variants or DEFAULT_VARIANTS)
        if self.variants < 1:
            from ..errors import EngineError

            raise EngineError(f"variants must be at least 1, got {variants}")
        self.batch_size = int(batch_size or 64)
        self.fingerprint = f"spectral|v{SPECTRAL_VERSION}|variants={self.variants}"

    def caption(self, tiles: Sequence[TileImage]) -> list[list[CaptionVariant]]:
        out = []
        for tile in tiles:
            m = measure(tile)
            out.append([describe(m, k) for k in range(self.variants)])
        return out

    def describe_tile(self, tile: TileImage, k: int = 0) -> CaptionVariant:
        """Variant `k` of one tile (VLM captioners use it when a model answers nothing)."""
        return describe(measure(tile), k)

    def close(self) -> None:
        """Nothing to release; present for the Captioner contract."""
