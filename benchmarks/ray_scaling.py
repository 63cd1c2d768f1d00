"""Ray executor scaling (issue 9): tiles/s with 1, 2, 4, 8 caption actors, and the Ray overhead.

1. A captioner with a fixed per-tile latency and no CPU use (`tests.core.ray_captioners:wrapped`
   with `latency`: it sleeps, as a process waiting on its GPU would) runs with k = 1, 2, 4 and 8
   caption actors on k x `--tiles-per-actor` tiles (the same work per actor, so the ideal wall time
   is the same for every k). Stand-in latency: 0.25 s/tile in batches of 8 (2 s per call), inside
   the 0.05-0.5 s/tile a 7B VLM takes batched on one GPU (vLLM or the transformers captioner at
   batch 16-128; ~4 s/tile at batch 1). Rate = tiles / caption time, where caption time runs from
   the first commit minus one batch's latency (when the actors started their first batch) to the
   last commit: start-up (cluster, actor pools, model loads) is excluded, as for a job of hours.
   Efficiency = rate / (k x the 1-actor rate); target >= 0.8 up to 8 actors.
2. Streaming: every commit's size and time; a commit is one caption batch when results stream at
   batch granularity (a burst = commits arriving within 50 ms of each other).
3. The spectral captioner (CPU-bound, no model) through the local executor and through Ray on the
   same rasters: the ratio is what Ray's scheduling and serialisation cost when captioning is cheap.

One local Ray (loopback only) is started for all runs, so actor start-up is the only per-run cost;
caption actors ask for 0.1 CPU each (a GPU model's actor would ask for a GPU instead).

    .venv/bin/python benchmarks/ray_scaling.py [--latency 0.25] [--batch 8] [--tiles-per-actor 32] [--cpus 2]
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
    """A scene of at least `tiles` tiles of 48 px (a strip `tiles` wide when that is exact)."""
    import rasterio
    from rasterio.transform import from_origin

    from tests.core.test_pipeline import write_scene

    side = 1
    while side * side < tiles:
        side += 1
    write_scene(path, seed=seed, size=TILE * side)  # type: ignore[arg-type]
    if side * side == tiles:
        return path
    with rasterio.open(path) as ds:  # crop to exactly `tiles` tiles: rows of `side`, then a partial row
        rows = -(-tiles // side)
        data = ds.read(window=((0, TILE * rows), (0, TILE * side)))
        prof = dict(ds.profile, height=TILE * rows, width=TILE * side, transform=from_origin(ds.transform.c, ds.transform.f, 10, 10))
    with rasterio.open(path, "w", **prof) as out:
        out.write(data)
    return path


def run(index_dir: str, sources: list, executor: str, captioner: str, options: dict, ex_opts: dict) -> tuple[float, list, int]:
    """(wall s, [(time, tiles committed so far)], tiles)."""
    from plugin.core.pipeline import RasterSource, index_rasters
    from plugin.core.tiling import TilingParams

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
    ap.add_argument("--tiles-per-actor", type=int, default=32)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--actors", default="1,2,4,8")
    ap.add_argument("--spectral-tiles", type=int, default=100)
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
        per_batch = args.latency * args.batch
        print(f"stand-in latency {args.latency:g} s/tile in batches of {args.batch} ({per_batch:g} s per call), "
              f"{args.tiles_per_actor} tiles of {TILE} px per actor, {args.cpus} CPUs")
        for k in counts:
            n_tiles = k * args.tiles_per_actor
            src = scene(os.path.join(work, f"scene{k}.tif"), n_tiles, k)
            wall, marks, n = run(os.path.join(work, f"lat{k}"), [src], "ray", spec,
                                 {"variants": 1, "latency": args.latency, "batch_size": args.batch},
                                 {"caption_workers": k, "min_caption_workers": k, "actor_cpus": 0.1, "read_cpus": 0.1,
                                  "embed_workers": 1})
            cs = commits(marks)
            start = cs[0][0] - per_batch
            rate = n / (cs[-1][0] - start)
            rates[k] = rate
            eff = rate / (rates[counts[0]] * k / counts[0])
            sizes = sorted({c for _, c in cs})
            b = bursts(cs)
            print(f"  {k} actor(s): {n} tiles, {wall:6.1f} s wall, caption time {cs[-1][0] - start:5.1f} s (ideal "
                  f"{args.tiles_per_actor * args.latency:4.1f}), {rate:6.2f} tiles/s (ideal {k / args.latency:5.1f}), "
                  f"efficiency vs {counts[0]} actor: {eff:4.2f}; {len(cs)} commits of {sizes} tiles, "
                  f"bursts median {statistics.median(b):g} max {max(b)} tiles")
        # Overhead on a cheap captioner: local executor vs Ray, same tiles.
        src = scene(os.path.join(work, "spectral.tif"), args.spectral_tiles, 0)
        wl, ml, nl = run(os.path.join(work, "spec_local"), [src], "local", "spectral", {"variants": 1}, {})
        wr, mr, nr = run(os.path.join(work, "spec_ray"), [src], "ray", "spectral", {"variants": 1}, {"caption_workers": 1})
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
