"""Ray executor scaling (issue 9): tiles/s with 1, 2, 4, 8 caption actors, and the Ray overhead.

1. A captioner with a fixed per-tile latency and no CPU use (`tests.core.ray_captioners:wrapped`
   with `latency`: it sleeps, as a process waiting on its GPU would) runs with k = 1, 2, 4 and 8
   caption actors on k x `--tiles-per-actor` tiles (the same work per actor, so the ideal wall time
   is the same for every k). Stand-in latency: 0.25 s/tile in batches of 8 (2 s per call), inside
   the 0.05-0.5 s/tile a 7B VLM takes batched on one GPU (vLLM or the transformers captioner at
   batch 16-128; ~4 s/tile at batch 1). Steady rate = tiles committed between the end of the first
   round (the first k batches, one per actor) and the start of the last round / that time: start-up
   (cluster, actor pools, model loads) and the end of the stream (the last two batches reach the
   writer together) are excluded, as for a job of hours. Efficiency = rate / (k x the 1-actor rate),
   and rate / the ideal k / latency; target >= 0.8 up to 8 actors.
2. Streaming: every commit's size and time; a commit is one caption batch when results stream at
   batch granularity (a burst = commits arriving within 50 ms of each other).
3. The spectral captioner (CPU-bound, no model) through the local executor and through Ray on the
   same rasters: the ratio is what Ray's scheduling and serialisation cost when captioning is cheap.

One local Ray (loopback only) is started for all runs, so actor start-up is the only per-run cost;
caption actors ask for 0.1 CPU each (a GPU model's actor would ask for a GPU instead).

    .venv/bin/python benchmarks/ray_scaling.py [--latency 0.25] [--batch 8] [--tiles-per-actor 64] [--cpus 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only, before Ray is imported
os.environ["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")  # actors import the test captioner
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

TILE = 48


def scene(path: str, tiles: int, seed: int) -> str:
    """A scene of exactly `tiles` tiles of 48 px (8 tiles wide; `tiles` a multiple of 8)."""
    import rasterio

    from tests.core.test_pipeline import write_scene

    rows = -(-tiles // 8)
    write_scene(path, seed=seed, size=TILE * max(8, rows))  # type: ignore[arg-type]
    with rasterio.open(path) as ds:
        data = ds.read(window=((0, TILE * rows), (0, TILE * 8)))
        prof = dict(ds.profile, height=TILE * rows, width=TILE * 8)
    with rasterio.open(path, "w", **prof) as out:
        out.write(data)
    return path


def run(index_dir: str, sources: list, executor: str, captioner: str, options: dict, ex_opts: dict) -> tuple[float, list, int]:
    """(wall s, [(time, tiles committed so far)], tiles)."""
    from plugin.core.indexing import index_rasters
    from plugin.core.rasters.tiling import TilingParams
    from plugin.core.types import RasterSource

    marks: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    rep = index_rasters(index_dir, [RasterSource(p) for p in sources], captioner=captioner, tiling=TilingParams(tile_size=TILE),
                        captioner_options=options, executor=executor, executor_options=ex_opts,
                        progress=lambda d, t, m: marks.append((time.perf_counter(), d)) if d and "captioned" in m else None)
    wall = time.perf_counter() - t0
    return wall, marks, sum(r["tiles_new"] for r in rep.rasters)


def commits(marks: list) -> list[tuple[float, int]]:
    out, prev = [], 0
    for t, d in marks:
        if d > prev:
            out.append((t, d - prev))
            prev = d
    return out


def bursts(cs: list[tuple[float, int]], gap: float = 0.05) -> list[int]:
    """Tiles per burst: consecutive commits less than `gap` s apart."""
    out: list[int] = []
    last = None
    for t, n in cs:
        if last is not None and t - last < gap:
            out[-1] += n
        else:
            out.append(n)
        last = t
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", type=float, default=0.25, help="seconds per tile of the stand-in captioner")
    ap.add_argument("--batch", type=int, default=8, help="tiles per caption call")
    ap.add_argument("--tiles-per-actor", type=int, default=64)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--actors", default="1,2,4,8")
    ap.add_argument("--spectral-tiles", type=int, default=200)
    args = ap.parse_args()
    import ray

    print(f"load average before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}, {os.cpu_count()} cores")
    tmp = tempfile.mkdtemp(prefix="r9b", dir="/tmp")
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, _temp_dir=tmp,
             runtime_env={"py_modules": [os.path.join(ROOT, "plugin")]})
    try:
        counts = [int(a) for a in args.actors.split(",")]
        work = tempfile.mkdtemp(prefix="ray_scaling_")
        spec, rates = "python:tests.core.ray_captioners:wrapped", {}
        print(f"stand-in latency {args.latency:g} s/tile in batches of {args.batch} ({args.latency * args.batch:g} s per call), "
              f"{args.tiles_per_actor} tiles of {TILE} px per actor, {args.cpus} CPUs")
        for k in counts:
            n_tiles = k * args.tiles_per_actor
            src = scene(os.path.join(work, f"scene{k}.tif"), n_tiles, k)
            wall, marks, n = run(os.path.join(work, f"lat{k}"), [src], "ray", spec,
                                 {"variants": 1, "latency": args.latency, "batch_size": args.batch},
                                 {"caption_workers": k, "min_caption_workers": k, "actor_cpus": 0.1, "read_cpus": 0.1,
                                  "embed_workers": 1})
            cs = commits(marks)
            # Between the first round (one batch per actor) and the last one.
            mid = cs[k : len(cs) - k]
            rate = sum(c for _, c in mid) / (mid[-1][0] - cs[k - 1][0])
            rates[k] = rate
            eff = rate / (rates[counts[0]] * k / counts[0])
            ideal = k / args.latency
            sizes = sorted({c for _, c in cs})
            b = bursts(cs)
            gaps = [round(t2 - t1, 2) for (t1, _), (t2, _) in zip(cs, cs[1:])]
            print(f"  {k} actor(s): {n} tiles, {wall:6.1f} s wall, {rate:6.2f} tiles/s steady "
                  f"(ideal {ideal:5.1f}: {rate / ideal:4.2f}), efficiency vs {counts[0]} actor: {eff:4.2f}; "
                  f"{len(cs)} commits of {sizes} tiles, bursts (< 50 ms apart) median {statistics.median(b):g} "
                  f"max {max(b)} tiles, gaps between commits median {statistics.median(gaps):.2f} s"
                  + (f" {gaps}" if k == 1 else ""))
        # Overhead on a cheap captioner: local executor vs Ray, same tiles.
        src = scene(os.path.join(work, "spectral.tif"), args.spectral_tiles, 0)
        opts = {"variants": 1, "batch_size": args.batch}
        wl, ml, nl = run(os.path.join(work, "spec_local"), [src], "local", "spectral", opts, {})
        wr, mr, nr = run(os.path.join(work, "spec_ray"), [src], "ray", "spectral", opts, {"caption_workers": 1})
        cl, cr = commits(ml), commits(mr)
        rl = (nl - cl[0][1]) / (cl[-1][0] - cl[0][0])
        rr = (nr - cr[0][1]) / (cr[-1][0] - cr[0][0])
        print(f"  spectral, local executor: {nl} tiles {wl:6.1f} s wall, steady {rl:6.2f} tiles/s")
        print(f"  spectral, ray executor:   {nr} tiles {wr:6.1f} s wall, steady {rr:6.2f} tiles/s")
        print(f"  ray / local: wall x{wr / wl:.2f}, steady rate x{rr / rl:.2f}")
    finally:
        ray.shutdown()
    print(f"load average after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
