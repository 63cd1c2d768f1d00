"""Embedding throughput: our embedder vs raw `SentenceTransformer.encode` on the same caption texts.

Both sides use the same model, batch size and device, alternating runs so machine load affects
them alike. On CPU `encode_documents` runs the model's ONNX export through onnxruntime (issue 12:
target >= 1.5x the sentence-transformers throughput); `--backend torch` measures the plain wrapper
(target >= 0.9x). Vectors are checked to agree (cosine >= 0.9999 with ONNX, equal with torch).

    .venv/bin/python benchmarks/embedding_throughput.py [--n 2000] [--batch 64] [--rounds 3] [--backend auto|torch]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

WORDS = ["water", "sand", "forest", "fields", "roofs", "roads", "marsh", "channels", "beach", "clouds", "snow",
         "shadow", "bare soil", "grass", "harbour", "bridge", "river", "lake", "town", "runway"]
PLACES = ["north", "south", "east", "west", "centre"]


def caption_texts(n: int, seed: int = 0) -> list[str]:
    """Caption-like passages (one sentence + features + caption), 30-70 words like the captioners write."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w = rng.choice(WORDS, 6, replace=False)
        p = rng.choice(PLACES, 3)
        out.append(
            f"A tile with {w[0]} and {w[1]}. {w[0]}, {w[1]}, {w[2]}, {w[3]}. "
            f"The {p[0]} is covered by {w[0]} while {w[2]} runs through the {p[1]}; "
            f"patches of {w[3]} and {w[4]} appear in the {p[2]}, with some {w[5]} near the edges."
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backend", default="auto", choices=("auto", "torch"))
    args = ap.parse_args()
    from plugin.core.embedder import make_embedder

    emb = make_embedder(None, device=args.device, batch_size=args.batch, backend=args.backend)
    raw = emb.model  # the same SentenceTransformer: only our wrapper (and its ONNX path) differs
    texts = caption_texts(args.n)
    emb.encode_documents(texts[:64])
    raw.encode(texts[:64], batch_size=args.batch)
    ours_t, raw_t = [], []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        raw_v = raw.encode(texts, batch_size=args.batch, show_progress_bar=False)
        raw_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ours_v = emb.encode_documents(texts)
        ours_t.append(time.perf_counter() - t0)
    raw_n = raw_v / np.linalg.norm(raw_v, axis=1, keepdims=True)
    worst = float(np.min(np.sum(ours_v * raw_n, axis=1)))
    if emb.onnx is None:
        assert np.allclose(ours_v, raw_n, atol=1e-5), "same vectors as raw encode (normalised)"
    else:
        assert worst >= 0.9999, f"ONNX vectors agree with torch (worst cosine {worst})"
    best_ours, best_raw = min(ours_t), min(raw_t)
    via = "ONNX (onnxruntime)" if emb.onnx is not None else "torch"
    print(f"embedder {emb.fingerprint} on {emb.device}, documents via {via}, batch {args.batch}, {args.n} caption "
          f"texts, best of {args.rounds}; worst cosine vs raw {worst:.7f}; cores {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"raw SentenceTransformer.encode: {args.n / best_raw:,.1f} texts/s  (runs: {', '.join(f'{t:.2f}s' for t in raw_t)})")
    print(f"ours encode_documents:          {args.n / best_ours:,.1f} texts/s  (runs: {', '.join(f'{t:.2f}s' for t in ours_t)})")
    target = "1.5x" if emb.onnx is not None else "0.9x"
    print(f"ratio ours/raw: {best_raw / best_ours:.3f}x (target >= {target}); "
          f"median {np.median(raw_t) / np.median(ours_t):.3f}x")


if __name__ == "__main__":
    main()
