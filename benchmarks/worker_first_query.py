"""A fresh search worker's first answer: ONNX query path vs the torch path, same index, same run.

Each round starts `python -m plugin worker` the way the dock does (WorkerClient, OMP_NUM_THREADS=1),
sends one search, and takes the time from process start to the answer (interpreter start, imports,
model load, index open and the query all included), the CPU seconds the worker spent to get there
(load-independent on a shared machine) and its RSS after it (VmRSS) and at
its peak (VmHWM). Rounds alternate the two backends so machine load hits both alike; the torch
path is forced with SIS_EMBEDDER_BACKEND=torch. Targets: first answer <= 1.0 s, RSS <= 250 MB.

    .venv/bin/python benchmarks/worker_first_query.py [--rounds 5] [--variants 2000] [--out /tmp/wfq]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

QUERIES = ["sandy beach next to the open sea", "dense green forest", "oil storage tanks near a harbour",
           "a river crossing farmland", "houses and streets of a small town"]


def build_index(folder: Path, n_variants: int) -> str:
    """n_variants real MiniLM caption vectors (5 per tile) written through the store API; the export made once."""
    from embedding_throughput import caption_texts

    from plugin.core.embedding.embedder import make_embedder
    from plugin.core.store.store import SearchIndex
    from plugin.core.types import CaptionVariant
    from tests.core.index_helpers import FakeInfo, tile

    emb = make_embedder(None, device="cpu")  # also makes the ONNX export the worker will find
    idx_dir = folder / "idx"
    if (idx_dir / "manifest.json").exists():
        return str(idx_dir)
    texts = caption_texts(n_variants, seed=1)
    vecs = emb.encode_documents(texts)
    info = FakeInfo("/data/scene.tif", "rs", "scene")
    items = []
    for t in range(n_variants // 5):
        vs = [CaptionVariant(texts[t * 5 + k], "", "") for k in range(5)]
        items.append((tile(info, (t % 100) * 64, (t // 100) * 64), vs, vecs[t * 5:t * 5 + 5]))
    with SearchIndex.open(str(idx_dir), create=True, embedder_fingerprint=emb.fingerprint, dim=emb.dim) as idx:
        idx.upsert_raster(info, "cap", {})
        idx.add_tiles("rs", "cap", items)
        idx.flush()
    return str(idx_dir)


def _mem_mb(pid: int) -> tuple[float, float]:
    vals = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                vals[line.split(":")[0]] = int(line.split()[1]) / 1024
    return vals["VmRSS"], vals["VmHWM"]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of the process so far: what the first answer costs, whatever the load."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_round(idx_dir: str, backend: str, query: str) -> tuple[float, float, float, str, float]:
    from plugin.core.worker.worker_client import WorkerClient

    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", SIS_EMBEDDER_BACKEND=backend)
    client = WorkerClient(sys.executable, env=env)
    t0 = time.perf_counter()
    client.start()
    hits = client.request("search", {"index_dir": idx_dir, "query": query, "top": 10})
    first = time.perf_counter() - t0
    assert client.pid is not None
    rss, hwm = _mem_mb(client.pid)
    cpu = _cpu_s(client.pid)
    client.stop()
    return first, rss, hwm, hits[0]["caption"][:50], cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", type=int, default=2000)
    ap.add_argument("--out", default="/tmp/sis-worker-first-query")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    idx_dir = build_index(out, args.variants)
    res: dict[str, list[tuple[float, float, float, str, float]]] = {"onnx": [], "torch": []}
    for r in range(args.rounds):
        q = QUERIES[r % len(QUERIES)]
        for backend in (("onnx", "torch") if r % 2 == 0 else ("torch", "onnx")):
            res[backend].append(one_round(idx_dir, "auto" if backend == "onnx" else "torch", q))
    print(f"index {idx_dir} ({args.variants} variants), {args.rounds} fresh workers per backend; "
          f"cores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    for backend, rows in res.items():
        t = [x[0] for x in rows]
        print(f"{backend:5s}: first answer median {statistics.median(t):.2f} s, worst {max(t):.2f} s; "
              f"CPU {statistics.median(x[4] for x in rows):.2f} s; "
              f"RSS after {statistics.median(x[1] for x in rows):.0f} MB, peak {max(x[2] for x in rows):.0f} MB "
              f"(runs {', '.join(f'{v:.2f}' for v in t)})")
    med = {b: statistics.median(x[0] for x in rows) for b, rows in res.items()}
    same = all(a[3] == b[3] for a, b in zip(res["onnx"], res["torch"]))
    print(f"ratio torch/onnx first answer: {med['torch'] / med['onnx']:.1f}x; same top hit on every query: {same}")
    print(f"targets: first answer <= 1.0 s: {'met' if med['onnx'] <= 1.0 else 'MISSED'} (median); "
          f"RSS <= 250 MB: {'met' if max(x[1] for x in res['onnx']) <= 250 else 'MISSED'}")


if __name__ == "__main__":
    main()
