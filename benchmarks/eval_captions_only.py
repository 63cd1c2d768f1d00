"""Captions-only proxy on the RSITMD and RSICD test captions: the text side alone, and its speed.

The first k reference captions of each image stand in as its caption variants, the remaining ones
are the queries; embedded with the packaged MiniLM; scored for max / mean / top-2-mean fusion, by
the dense ranker (the paper) and, with `--ranker`, bm25 and the hybrid fusion `search()` uses
(`--weights` sweeps the hybrid's lexical weight).
The captions are read where they are shared (`../shared/data/captions` beside the repository by
default) and never copied into the project. Prints a table; `--out PREFIX` also writes
PREFIX.json / PREFIX.md with the full configuration.

Timing: each set runs with a cold vector cache (in memory only, no disk cache) so "total" includes
loading the captions, embedding every distinct text once and all the ranking; model loading is
reported separately. CPU time is printed beside wall time because the 2-core machine is shared.

    .venv/bin/python benchmarks/eval_captions_only.py [--data DIR] [--sets rsitmd,rsicd] [--k 1,2]
    .venv/bin/python benchmarks/eval_captions_only.py --k 1 --fusion max --ranker all --weights 0.05,0.1,0.15,0.2,0.3
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from plugin.core.embedding.embedder import make_embedder  # noqa: E402
from plugin.core.eval.datasets import load_precomp  # noqa: E402
from plugin.core.eval.metrics import FUSIONS  # noqa: E402
from plugin.core.eval.report import format_table, write_reports  # noqa: E402
from plugin.core.eval.runner import VectorCache, run_captions_only  # noqa: E402
from plugin.core.search.hybrid import RANKERS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "captions"))
    ap.add_argument("--sets", default="rsitmd,rsicd")
    ap.add_argument("--k", default="1,2")
    ap.add_argument("--fusion", default=",".join(FUSIONS))
    ap.add_argument("--ranker", default="dense", help="dense, lexical, hybrid (comma-separated) or all")
    ap.add_argument("--weights", default=None,
                    help="hybrid weight sweep, e.g. 0.05,0.1,0.15,0.2,0.3 (one hybrid row per weight)")
    ap.add_argument("--embedder", default=None, help="default: the packaged MiniLM")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--document-graph", default="fp32", choices=("fp32", "int8"),
                    help="graph the captions (documents) are embedded with; queries always fp32")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    data = Path(args.data)
    if not data.is_dir():
        print(f"captions folder not found: {data} (pass --data)", file=sys.stderr)
        return 1
    ks = [int(k) for k in args.k.split(",")]
    fusions = [f for f in args.fusion.split(",") if f]
    rankers = list(RANKERS) if args.ranker == "all" else [r for r in args.ranker.split(",") if r]
    weights = [float(w) for w in args.weights.split(",")] if args.weights else [None]

    t0 = time.perf_counter()
    embedder = make_embedder(args.embedder, device=args.device, document_graph=args.document_graph)
    if embedder.document_graph != args.document_graph:
        print(f"the {args.document_graph} document graph is not available (see the log)", file=sys.stderr)
        return 1
    t_model = time.perf_counter() - t0
    print(f"embedder {embedder.fingerprint} loaded in {t_model:.1f} s", file=sys.stderr)

    results = []
    for name in [s for s in args.sets.split(",") if s]:
        t1, c1 = time.perf_counter(), time.process_time()
        ds = load_precomp(data / f"{name}_test_caps.txt", split="test", name=name)
        vectors = VectorCache(embedder)  # cold: everything this set needs is embedded in the timed run
        res = run_captions_only(ds, vectors, ks, fusions, [r for r in rankers if r != "hybrid"])
        if "hybrid" in rankers:
            for w in weights:
                res += run_captions_only(ds, vectors, ks, fusions, ["hybrid"], w)
        total, cpu = time.perf_counter() - t1, time.process_time() - c1
        queries = sum(r.metrics.query_captions for r in res)
        embed = sum(r.seconds.get("embed", 0.0) for r in res if r.config.get("fusion") == fusions[0])
        score = sum(r.seconds.get("score", 0.0) for r in res)
        print(
            f"{name}: {len(ds.images)} images, {len(ds.captions)} captions, {vectors.embedded} distinct texts "
            f"embedded; {len(res)} settings ({queries} query rankings in all) in {total:.1f} s wall, {cpu:.1f} s CPU "
            f"(embedding {embed:.1f} s, fusion + ranking {score:.2f} s)",
            file=sys.stderr,
        )
        results += res
    print(format_table(results))
    if args.out:
        j, m = write_reports(results, args.out)
        print(f"wrote {j} and {m}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
