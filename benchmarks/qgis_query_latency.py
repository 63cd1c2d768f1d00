"""Query -> highlighted canvas with a warm worker at 100k caption variants (budget: p95 <= 300 ms).

1. Build (once, cached in $SIS_BENCH_DIR or /tmp/sis_bench_100k) a 100k-variant index through the
   store API: a generated 3200x3200 GeoTIFF cut into 10,000 tiles of 32 px, 10 caption variants per
   tile drawn from a pool of synthetic structured captions embedded with the real MiniLM (vectors get
   a little noise so no two variants are identical). Runs in a plain engine Python (rasterio), not QGIS.
2. In an offscreen QGIS with the real plugin loaded: warm the worker, then for each query type it in
   the dock and time until the results list is filled, the results layer is in the project and the
   canvas has finished redrawing with it.
3. Baseline in the same run: the same queries sent straight to a warm worker through WorkerClient
   (no Qt, no tasks, no layer). Prints p50/p95 of both and their ratio, and the ratio to the budget.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BUDGET_MS = 300.0
N_TILES_SIDE, TILE_PX, VARIANTS = 100, 32, 10

SURFACES = ["dense forest", "open water", "a river", "farmland with crop fields", "bare soil", "a residential area",
            "an industrial zone with large roofs", "a harbour with docks", "sandy beach", "grassland", "wetland",
            "a highway interchange", "a parking lot", "snow and ice", "clouds", "a golf course", "an airport runway",
            "an orchard", "a quarry", "a solar farm"]
FEATURES = ["bright", "dark", "green", "brown", "grey", "blue", "textured", "smooth", "patchy", "striped"]
PLACES = ["in the north", "in the south", "along the east edge", "in the west", "in the centre", "across the tile"]
QUERIES = ["oil storage tanks near the harbour", "dense green forest", "river crossing farmland", "sandy beach next to the sea",
           "large industrial roofs", "airport runway", "snow covered mountains", "solar panels in a field",
           "wetland with small ponds", "residential streets with houses", "bare soil after harvest", "a quarry pit",
           "golf course with bunkers", "highway interchange", "parking lot with cars", "clouds over water"]


def build(index_dir: str) -> dict:
    """Engine side (no QGIS): raster, tile plan, synthetic captions, embeddings, store, ANN file."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    from plugin.core.embedding.embedder import make_embedder
    from plugin.core.indexing import index_info
    from plugin.core.rasters.raster import open_raster
    from plugin.core.rasters.tiling import TilingParams, plan_tiles
    from plugin.core.store.store import SearchIndex
    from plugin.core.types import CaptionVariant

    want = N_TILES_SIDE * N_TILES_SIDE * VARIANTS
    if os.path.exists(os.path.join(index_dir, "manifest.json")):
        info = index_info(index_dir)
        if int(info.get("variants", 0)) == want:
            return {"index_dir": index_dir, "raster": info["rasters"][0]["path"], "variants": want, "build_s": 0.0}
    t0 = time.perf_counter()
    os.makedirs(index_dir, exist_ok=True)
    side = N_TILES_SIDE * TILE_PX
    raster = os.path.join(os.path.dirname(index_dir.rstrip("/")), "bench_100k.tif")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    data = np.stack([((xx * (b + 1) + yy * (3 - b)) // 7 % 200 + 30).astype(np.uint8) for b in range(3)])
    data = (data + rng.integers(0, 20, data.shape, dtype=np.uint8)).astype(np.uint8)
    with rasterio.open(raster, "w", driver="GTiff", width=side, height=side, count=3, dtype="uint8", crs="EPSG:32618",
                       transform=from_origin(580000.0, 4510000.0, 10.0, 10.0), tiled=True, compress="deflate") as ds:
        ds.write(data)
    info = open_raster(raster)
    refs = plan_tiles(info, TilingParams(tile_size=TILE_PX))
    assert len(refs) == N_TILES_SIDE * N_TILES_SIDE, len(refs)

    pool = []
    for i, s in enumerate(SURFACES):
        for j, f in enumerate(FEATURES):
            p = PLACES[(i + j) % len(PLACES)]
            pool.append(CaptionVariant(f"An image of {s}.", f"{f} {s}; {FEATURES[(j + 3) % 10]} patches {p}",
                                       f"A {f} area of {s} {p}, next to {SURFACES[(i + 7) % len(SURFACES)]}."))
    emb = make_embedder(None, device="cpu")
    pool_vecs = emb.encode_documents([v.text() for v in pool])
    t_embed = time.perf_counter() - t0
    with SearchIndex.open(index_dir, create=True, embedder_fingerprint=emb.fingerprint, dim=emb.dim) as idx:
        idx.upsert_raster(info, "synthetic-bench-v1", {"tile_size": TILE_PX})
        batch = []
        for k, ref in enumerate(refs):
            pick = rng.choice(len(pool), VARIANTS, replace=False)
            vecs = pool_vecs[pick] + rng.normal(0, 0.03, (VARIANTS, emb.dim)).astype(np.float32)
            batch.append((ref, [pool[i] for i in pick], vecs))
            if len(batch) == 1000 or k == len(refs) - 1:
                idx.add_tiles(info.raster_id, "synthetic-bench-v1", batch)
                batch = []
        idx.set_raster_state(info.raster_id, "indexed")
        idx.flush()
    return {"index_dir": index_dir, "raster": raster, "variants": want, "build_s": time.perf_counter() - t0,
            "embed_pool_s": t_embed}


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100.0 * (len(v) - 1))))]


def baseline(index_dir: str, queries: list[str], top: int) -> list[float]:
    """The same queries straight to a warm worker: the engine's share of the latency."""
    from plugin.core.worker.worker_client import WorkerClient
    from plugin.qgis_io.engine import engine_python

    # the same worker environment the dock uses (plugin/gui/session.py): single-threaded torch
    c = WorkerClient(engine_python(), env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    c.start()
    try:
        for q in queries[:3]:
            c.request("search", {"index_dir": index_dir, "query": q, "top": top})
        out = []
        for q in queries:
            t0 = time.perf_counter()
            c.request("search", {"index_dir": index_dir, "query": q, "top": top})
            out.append((time.perf_counter() - t0) * 1000)
        return out
    finally:
        c.stop()


def run_qgis(built: dict, rounds: int, top: int) -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from unittest.mock import MagicMock

    from qgis.core import QgsApplication, QgsCoordinateReferenceSystem, QgsProject, QgsRasterLayer
    from qgis.gui import QgsMapCanvas, QgsMessageBar
    from qgis.PyQt.QtWidgets import QMainWindow

    app = QgsApplication([], True)
    app.initQgis()
    win = QMainWindow()
    canvas = QgsMapCanvas(win)
    win.setCentralWidget(canvas)
    win.resize(1000, 800)
    win.show()
    iface = MagicMock()
    iface.mainWindow.return_value = win
    iface.mapCanvas.return_value = canvas
    iface.messageBar.return_value = QgsMessageBar(win)
    project = QgsProject.instance()
    project.setCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    layer = QgsRasterLayer(built["raster"], "bench raster")
    project.addMapLayer(layer)
    canvas.setDestinationCrs(project.crs())
    canvas.setLayers([layer])
    canvas.zoomToFullExtent()

    from scripts.plugin_loader import import_plugin_package

    pkg = import_plugin_package()
    plugin = pkg.classFactory(iface)
    plugin.initGui()
    plugin.session.set_index_dir(built["index_dir"])

    state = {"done": False, "refreshed": False, "hits": 0, "err": ""}

    def on_finished(hits, err):
        state.update(done=True, hits=len(hits), err=err, refreshed=False)
        canvas.setLayers([plugin.search_ctl.highlighter.layer, layer] if hits else [layer])

    plugin.search_ctl.search_finished.connect(on_finished)
    canvas.mapCanvasRefreshed.connect(lambda: state.update(refreshed=True))
    w = plugin.dock.search_widget
    w.top_spin.setValue(top)

    def one(q: str) -> tuple[float, float]:
        state.update(done=False, refreshed=False)
        t0 = time.perf_counter()
        w.query_edit.setText(q)
        w.request_search()
        while not state["done"]:
            app.processEvents()
            time.sleep(0.001)
        t1 = time.perf_counter()
        if state["err"]:
            raise SystemExit(f"search failed: {state['err']}")
        while not state["refreshed"]:
            app.processEvents()
            time.sleep(0.001)
        return (t1 - t0) * 1000, (time.perf_counter() - t0) * 1000

    t0 = time.perf_counter()
    one("warm up the worker")
    cold = (time.perf_counter() - t0) * 1000
    for q in QUERIES[:3]:
        one(q)
    queries = [QUERIES[i % len(QUERIES)] + ("" if i < len(QUERIES) else f" {i}") for i in range(rounds)]
    listed, drawn = [], []
    for q in queries:
        a, b = one(q)
        listed.append(a)
        drawn.append(b)
    plugin.unload()
    base = baseline(built["index_dir"], queries, top)

    print(f"index: {built['variants']:,} caption variants, 10,000 tiles (build {built['build_s']:.1f} s, cached if 0)")
    print(f"first search (worker start + embedder load): {cold:.0f} ms")
    print(f"{rounds} queries, top {top}, warm worker:")
    for name, vals in (("worker only (baseline)", base), ("query -> results listed", listed),
                       ("query -> highlighted canvas", drawn)):
        print(f"  {name:30s} p50 {pct(vals, 50):7.1f} ms   p95 {pct(vals, 95):7.1f} ms   max {max(vals):7.1f} ms")
    p95 = pct(drawn, 95)
    print(f"  ratio p95 highlighted / p95 worker-only: {p95 / pct(base, 95):.2f}x")
    print(f"  ratio p95 highlighted / {BUDGET_MS:.0f} ms budget: {p95 / BUDGET_MS:.2f}x -> {'OK' if p95 <= BUDGET_MS else 'OVER'}")
    print(json.dumps({"p50_ms": round(statistics.median(drawn), 1), "p95_ms": round(p95, 1),
                      "baseline_p95_ms": round(pct(base, 95), 1), "cold_ms": round(cold)}))
    project.clear()
    canvas.setLayers([])
    win.close()
    app.processEvents()
    app.exitQgis()
    sys.stdout.flush()
    # leave without running Qt/QGIS static destructors in a random order (they crash at interpreter exit)
    os._exit(0 if p95 <= BUDGET_MS else 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index-dir", default=os.environ.get("SIS_BENCH_DIR", "/tmp/sis_bench_100k/index"))
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.build_only:
        print(json.dumps(build(args.index_dir)))
        return 0
    # the build uses rasterio: keep it out of the QGIS process (one GDAL per process)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run([sys.executable, __file__, "--build-only", "--index-dir", args.index_dir], env=env,
                         capture_output=True, text=True, cwd=str(ROOT))
    if res.returncode != 0:
        print(res.stderr[-3000:])
        return 1
    built = json.loads(res.stdout.strip().splitlines()[-1])
    return run_qgis(built, args.rounds, args.top)


if __name__ == "__main__":
    sys.exit(main())
