"""Tiling throughput: iter_tiles vs plain rasterio windowed reads of the same windows.

Generates a large 3-band uint8 tiled, compressed GeoTIFF block by block (never held in memory),
then, each in its own fresh process so peak RSS belongs to one phase only:
  * baseline: `ds.read([1, 2, 3], window=w)` for every planned window (plain rasterio);
  * engine:   `iter_tiles(open_raster(path), TilingParams(tile_size))` (read, validity, float32 raw,
              8-bit RGB); open_raster (fingerprint + stretch sample, once per raster) is timed apart.
Phases alternate (baseline, engine, baseline, engine, ...) and the best pass of each is compared.
Prints tiles/s, MPix/s, the ratio engine/baseline (target >= 0.9) and each phase's peak RSS from
resource.getrusage (target < 1.5 GB for the engine).

    .venv/bin/python benchmarks/tiling_throughput.py                 # 40000 x 40000 (several minutes)
    .venv/bin/python benchmarks/tiling_throughput.py --size 4096     # a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads: comparable even on a busy machine."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def generate(path: str, size: int, block: int, compress: str) -> float:
    """Write a size x size x 3 uint8 GeoTIFF one block at a time; textured so it compresses like imagery."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:block, 0:block]
    textures = []
    for k in range(8):  # a small pool of textures: fields, water, town-like noise
        base = (np.sin(xx / (7 + 5 * k)) + np.cos(yy / (11 + 3 * k))) * 30 + 100
        noise = rng.integers(0, 24 if k % 2 else 6, size=(3, block, block))
        textures.append(np.clip(base[None] + noise + np.array([10, 0, -15])[:, None, None] * k, 0, 255).astype(np.uint8))
    prof = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32633",
                transform=from_origin(300000.0, 5000000.0, 0.5, 0.5), tiled=True, blockxsize=block,
                blockysize=block, compress=compress, interleave="pixel", BIGTIFF="YES")
    if compress == "deflate":
        prof["zlevel"] = 1
    t0 = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=256 * 1024 * 1024), rasterio.open(path, "w", **prof) as ds:
        for r in range(0, size, block):
            for c in range(0, size, block):
                h, w = min(block, size - r), min(block, size - c)
                tex = textures[(r // block * 7 + c // block * 3) % len(textures)]
                shift = np.uint8((r // block + c // block) % 40)
                ds.write(tex[:, :h, :w] + shift, window=Window(c, r, w, h))
    return time.perf_counter() - t0


def child(phase: str, path: str, tile: int) -> dict:
    """One measured pass in this (fresh) process."""
    import rasterio
    from rasterio.windows import Window

    from plugin.core.rasters.raster import open_raster
    from plugin.core.rasters.tiling import TilingParams, iter_tiles, plan_tiles

    params = TilingParams(tile_size=tile)
    t0 = time.perf_counter()
    pixels = 0
    n = 0
    open_s = 0.0
    c0 = 0.0
    if phase == "baseline":
        info = open_raster(path)  # planning is not timed for the baseline: only its reads
        windows = [r.window for r in plan_tiles(info, params)]
        t0, c0 = time.perf_counter(), cpu_seconds()
        with rasterio.open(path) as ds:
            for w in windows:
                arr = ds.read([1, 2, 3], window=Window(w.col_off, w.row_off, w.width, w.height))
                pixels += arr.shape[1] * arr.shape[2]
                n += 1
    else:
        info = open_raster(path)  # fingerprint + stretch sample: reported apart, once per raster
        open_s = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), cpu_seconds()
        for t in iter_tiles(info, params):
            pixels += t.valid.size
            n += 1
    dt, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return {"phase": phase, "seconds": dt, "cpu_seconds": cpu, "open_seconds": open_s, "tiles": n, "mpix": pixels / 1e6, "peak_rss_mb": peak_rss_mb()}


def run_child(phase: str, path: str, tile: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", phase, "--path", path, "--tile", str(tile)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=40000, help="raster side in pixels (default 40000)")
    ap.add_argument("--tile", type=int, default=512, help="tile side in pixels (default 512)")
    ap.add_argument("--block", type=int, default=512, help="GeoTIFF block side (default 512)")
    ap.add_argument("--compress", default="deflate", help="GeoTIFF compression (default deflate, level 1)")
    ap.add_argument("--passes", type=int, default=2, help="alternating passes per phase (default 2)")
    ap.add_argument("--path", help="raster to use (generated if missing); default: a temporary file")
    ap.add_argument("--keep", action="store_true", help="keep the generated raster")
    ap.add_argument("--child", choices=("baseline", "engine"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.path, args.tile)))
        return 0

    tmpdir = None
    path = args.path
    if not path:
        tmpdir = tempfile.mkdtemp(prefix="tiling_bench_")
        path = os.path.join(tmpdir, f"bench_{args.size}.tif")
    try:
        if not os.path.exists(path):
            gen = generate(path, args.size, args.block, args.compress)
            print(f"generated {args.size} x {args.size} x 3 uint8 ({args.compress}, {args.block}px blocks) "
                  f"in {gen:.1f} s: {os.path.getsize(path) / 1e6:.0f} MB on disk, "
                  f"{3 * args.size ** 2 / 1e9:.2f} GB of pixels; generator peak RSS {peak_rss_mb():.0f} MB")
        runs: dict[str, list[dict]] = {"baseline": [], "engine": []}
        for _ in range(args.passes):
            for phase in ("baseline", "engine"):
                r = run_child(phase, path, args.tile)
                runs[phase].append(r)
                print(f"  {phase:8s} {r['tiles']} tiles in {r['seconds']:.2f} s "
                      f"({r['tiles'] / r['seconds']:.1f} tiles/s, {r['mpix'] / r['seconds']:.0f} MPix/s, "
                      f"CPU {1e3 * r['cpu_seconds'] / max(r['tiles'], 1):.2f} ms/tile), "
                      f"peak RSS {r['peak_rss_mb']:.0f} MB"
                      + (f"; open_raster {r['open_seconds']:.2f} s" if phase == "engine" else ""), flush=True)
        best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
        ratio = best["baseline"]["seconds"] / best["engine"]["seconds"]
        rss = max(r["peak_rss_mb"] for r in runs["engine"])
        cpu = {k: min(r["cpu_seconds"] for r in v) for k, v in runs.items()}
        med = {k: sorted(r["seconds"] for r in v)[len(v) // 2] for k, v in runs.items()}
        med_cpu = {k: sorted(r["cpu_seconds"] for r in v)[len(v) // 2] for k, v in runs.items()}
        print(f"throughput ratio engine/baseline (best of {args.passes}): {ratio:.2f}x (target >= 0.9x); "
              f"CPU time ratio baseline/engine {cpu['baseline'] / cpu['engine']:.2f}x; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"medians of the {args.passes} passes: wall ratio {med['baseline'] / med['engine']:.2f}x, "
              f"CPU ratio {med_cpu['baseline'] / med_cpu['engine']:.2f}x")
        print(f"engine peak RSS: {rss:.0f} MB (target < 1536 MB); baseline peak RSS: "
              f"{max(r['peak_rss_mb'] for r in runs['baseline']):.0f} MB")
        return 0 if ratio >= 0.9 and rss < 1536 else 1
    finally:
        if tmpdir and not args.keep:
            try:
                os.remove(path)
                os.rmdir(tmpdir)
            except OSError:
                pass


if __name__ == "__main__":
    raise SystemExit(main())
