"""int8 vs fp32 caption vectors against real queries: how far the int8 document graph moves a score,
next to the gaps that decide a ranking (issue 12: is mixing the two graphs in one index a problem?).

Data: the RSITMD / RSICD test captions in `../shared/data/captions` (read here, never copied into the
project). Documents: every distinct caption of a set, embedded twice -- by the fp32 graph (the torch
vectors to cosine 0.9999999) and by the int8 graph (`onnx_export.ensure_int8`, one text per run as
the engine does). Queries (fp32 graph, query prompt, as search does): a sample of the captions
(sentence queries; a query's own text is left out of its documents) and the class names as an
analyst types them (short queries, as in calibrate_score_scale.py).

Per (query, document) pair, shift = q.d_int8 - q.d_fp32. Printed: its mean (a bias would favour one
graph's documents), std, p99 and max of |shift|, over all pairs and over each query's fp32 top 10;
the gaps between consecutive fp32 top-10 scores (what a shift must exceed to swap two hits); how
often the int8 index keeps the fp32 top 1 and top 10; and a mixed index (each document embedded by
one graph at random, as an index filled by CPU and GPU runs would be): the share of int8 documents
in its top 10 (0.5 = even) and its top-10 overlap with the all-fp32 ranking.

    .venv/bin/python benchmarks/document_graph_shift.py [--captions ../shared/data/captions] [--queries 500]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from calibrate_score_scale import WORDS, load  # noqa: E402


def stats(a: np.ndarray) -> str:
    return (f"mean {a.mean():+.5f}, std {a.std():.5f}, p99 |shift| {np.percentile(np.abs(a), 99):.5f}, "
            f"max |shift| {np.abs(a).max():.5f}")


def top(s: np.ndarray, k: int) -> np.ndarray:
    idx = np.argpartition(-s, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, idx, axis=1), axis=1)
    return np.take_along_axis(idx, order, axis=1)


def one_set(emb: object, int8: object, folder: str, name: str, n_queries: int, rng: np.random.Generator) -> None:
    caps, _files, classes = load(folder, name)
    docs = list(dict.fromkeys(caps))
    t0 = time.perf_counter()
    d32 = emb.encode_documents(docs)  # type: ignore[attr-defined]
    t1 = time.perf_counter()
    d8 = int8.encode_documents(docs)  # type: ignore[attr-defined]
    t2 = time.perf_counter()
    sent = [docs[i] for i in rng.choice(len(docs), size=min(n_queries, len(docs)), replace=False)]
    short = [WORDS.get(c, c) for c in sorted({c for c in classes if c})]
    q = emb.encode_queries(sent + short)  # type: ignore[attr-defined]
    s32, s8 = q @ d32.T, q @ d8.T
    pos = {t: i for i, t in enumerate(docs)}
    for row, text in enumerate(sent):  # a sentence query never ranks its own text
        s32[row, pos[text]] = s8[row, pos[text]] = -np.inf
    cos = np.sum(d32 * d8, axis=1)
    print(f"\n{name}: {len(docs)} distinct captions (fp32 {len(docs) / (t1 - t0):.0f} texts/s, int8 "
          f"{len(docs) / (t2 - t1):.0f} texts/s), {len(sent)} sentence + {len(short)} short queries; "
          f"cosine int8 vs fp32 document: worst {cos.min():.4f}, median {np.median(cos):.4f}")
    for label, rows in (("sentence", slice(0, len(sent))), ("short", slice(len(sent), None))):
        a32, a8 = s32[rows], s8[rows]
        ok = np.isfinite(a32)
        shift = a8[ok] - a32[ok]
        t10 = top(a32, 10)
        t10_shift = np.take_along_axis(a8, t10, 1) - np.take_along_axis(a32, t10, 1)
        scores = np.take_along_axis(a32, top(a32, 11), 1)
        gaps = -np.diff(scores, axis=1)  # consecutive gaps among the fp32 top 11
        t10_8 = top(a8, 10)
        keep1 = float(np.mean(t10[:, 0] == t10_8[:, 0]))
        keep10 = float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(t10, t10_8)]))
        mixed_is8 = rng.random(a32.shape[1]) < 0.5
        mix = np.where(mixed_is8[None, :], a8, a32)
        tm = top(mix, 10)
        share8 = float(mixed_is8[tm].mean())
        keep_mix = float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(t10, tm)]))
        print(f"  {label} queries ({a32.shape[0]}):")
        print(f"    shift, all {shift.size:,} pairs: {stats(shift)}")
        print(f"    shift, fp32 top-10 pairs: {stats(t10_shift.ravel())}")
        print(f"    gap between consecutive fp32 top-10 scores: median {np.median(gaps[:, :9]):.5f}, p25 "
              f"{np.percentile(gaps[:, :9], 25):.5f}; 10th-11th median {np.median(gaps[:, 9]):.5f}")
        print(f"    int8 index vs fp32 index: same top 1 for {100 * keep1:.1f}% of queries, top-10 overlap {100 * keep10:.1f}%")
        print(f"    mixed index (half the documents int8): int8 share of the top 10 {share8:.3f} (0.5 = even), "
              f"top-10 overlap with fp32 {100 * keep_mix:.1f}%")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions", default=os.path.join(ROOT, "..", "shared", "data", "captions"))
    ap.add_argument("--sets", default="rsitmd,rsicd")
    ap.add_argument("--queries", type=int, default=500, help="sentence queries per set")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not os.path.isdir(args.captions):
        print(f"captions folder not found: {args.captions} (pass --captions)", file=sys.stderr)
        return 1
    from plugin.core.embedding.embedder import make_embedder

    emb = make_embedder(None, device="cpu")  # fp32 export: documents and queries
    int8 = make_embedder(None, device="cpu", document_graph="int8")
    assert emb.onnx is not None and int8.document_graph == "int8", "needs the ONNX export (onnxruntime, onnx)"
    print(f"embedder {emb.fingerprint}; int8 graph {int8.onnx.model_file}; cores {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    rng = np.random.default_rng(args.seed)
    for name in args.sets.split(","):
        one_set(emb, int8, args.captions, name, args.queries, rng)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
