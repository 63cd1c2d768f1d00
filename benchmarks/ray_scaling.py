"""Ray executor scaling (issue 9): tiles/s with 1, 2, 4, 8 caption actors, and the Ray overhead.

1. A captioner with a fixed per-tile latency and no CPU use (`tests.core.ray_captioners:wrapped`
   with `latency`: it sleeps, as a process waiting on its GPU would) runs with 1, 2, 4 and 8 caption
   actors; the steady-state rate (first committed batch -> last) divided by the 1-actor rate, over
   the actor count, is the scaling efficiency (target >= 0.8 up to 8 actors).
2. The spectral captioner (CPU-bound, no model) through the local executor and through Ray on the
   same rasters: the ratio is what Ray's scheduling and serialisation cost when captioning is cheap.

One local Ray (loopback only) is started for all runs, so actor start-up is the only per-run cost;
caption actors ask for 0.1 CPU each (a GPU model's actor would ask for a GPU instead).

    .venv/bin/python benchmarks/ray_scaling.py [--latency 0.25] [--tiles-per-actor 12] [--cpus 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only, before Ray is imported
os.environ["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")  # actors import the test captioner
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def scene(path: str, tiles_side: int, seed: int) -> str:
    from tests.core.test_pipeline import write_scene

    return write_scene(path, seed=seed, size=48 * tiles_side)  # type: ignore[arg-type]


def run(index_dir: str, sources: list, executor: str, captioner: str, options: dict, ex_opts: dict) -> tuple[float, float, int]:
    """(wall s, steady tiles/s from the first commit, tiles)."""
    from plugin.core.pipeline import RasterSource, index_rasters
    from plugin.core.tiling import TilingParams

    marks: list[tuple[float, int]] = []
    t0 = time.perf_counter()
    rep = index_rasters(index_dir, [RasterSource(p) for p in sources], captioner=captioner, tiling=TilingParams(tile_size=48),
                        captioner_options=options, executor=executor, executor_options=ex_opts,
                        progress=lambda d, t, m: marks.append((time.perf_counter(), d)) if d else None)
    wall = time.perf_counter() - t0
    n = sum(r["tiles_new"] for r in rep.rasters)
    (t1, d1), (t2, d2) = marks[0], marks[-1]
    rate = (d2 - d1) / (t2 - t1) if t2 > t1 and d2 > d1 else float("nan")
    return wall, rate, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency", type=float, default=0.25, help="seconds per tile of the stand-in captioner")
    ap.add_argument("--tiles-per-actor", type=int, default=12)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--actors", default="1,2,4,8")
    args = ap.parse_args()
    import ray

    tmp = tempfile.mkdtemp(prefix="r9b", dir="/tmp")
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, _temp_dir=tmp,
             runtime_env={"py_modules": [os.path.join(ROOT, "plugin")]})
    try:
        counts = [int(a) for a in args.actors.split(",")]
        side = 1
        while side * side < max(counts) * args.tiles_per_actor:
            side += 1
        work = tempfile.mkdtemp(prefix="ray_scaling_")
        sources = [scene(os.path.join(work, "scene.tif"), side, 0)]
        print(f"{side * side} tiles of 48 px, stand-in latency {args.latency:g} s/tile, batch 2, {args.cpus} CPUs")
        spec, rates = "python:tests.core.ray_captioners:wrapped", {}
        for k in counts:
            wall, rate, n = run(os.path.join(work, f"lat{k}"), sources, "ray", spec,
                                {"variants": 1, "latency": args.latency, "batch_size": 2},
                                {"caption_workers": k, "min_caption_workers": k, "actor_cpus": 0.1, "read_cpus": 0.1,
                                 "embed_workers": 1})
            rates[k] = rate
            eff = rate / (rates[counts[0]] * k / counts[0])
            ideal = k / args.latency
            print(f"  {k} actor(s): {n} tiles, {wall:6.1f} s wall, steady {rate:6.2f} tiles/s "
                  f"(ideal {ideal:5.1f}), efficiency vs {counts[0]} actor: {eff:4.2f}")
        # Overhead on a cheap captioner: local executor vs Ray, same tiles.
        wl, rl, nl = run(os.path.join(work, "spec_local"), sources, "local", "spectral", {"variants": 1}, {})
        wr, rr, nr = run(os.path.join(work, "spec_ray"), sources, "ray", "spectral", {"variants": 1}, {"caption_workers": 1})
        print(f"  spectral, local executor: {nl} tiles {wl:6.1f} s wall, steady {rl:6.2f} tiles/s")
        print(f"  spectral, ray executor:   {nr} tiles {wr:6.1f} s wall, steady {rr:6.2f} tiles/s")
        print(f"  ray / local: wall x{wr / wl:.2f}, steady rate x{rr / rl:.2f}")
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
