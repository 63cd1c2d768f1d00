"""How real caption embeddings are shaped, next to the synthetic vectors the search benchmarks use.

Embeds the real RSITMD + RSICD test captions (5 per image: the real analogue of a tile's 5 caption
variants) with the packaged MiniLM (ONNX path) and, for the same number of vectors, the isotropic
`caption_like` generator and the `realistic` one (vector_data.py), then prints one table row each:

- PCA: dimensions holding 50 % / 90 % of the variance (of the centred vectors);
- local intrinsic dimension: the Levina-Bickel MLE with k=20 on Euclidean distances (median over
  points, and the MacKay-Ghahramani pooled value); exact duplicates are left out of a point's k;
- nearest-neighbour cosine (p10 / p50 / p90), to any other vector and to the nearest vector of
  another image (tile);
- within-image spread (mean cosine between captions of one image) vs between-image (mean cosine
  between captions of different images), and the nearest other image-mean cosine (p10/p50/p90).

    .venv/bin/python benchmarks/caption_vector_stats.py                 # real, per set, caption_like, realistic
    .venv/bin/python benchmarks/caption_vector_stats.py --alphas 0.4,0.5,0.6,0.8 --seeds 2

The captions are read from ../shared/data/captions (never copied into the repository).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from vector_data import ALPHA, Realistic, caption_like, load_real  # noqa: E402

K_LID = 20


def q3(v: np.ndarray) -> str:
    return " / ".join(f"{x:.3f}" for x in np.percentile(v, [10, 50, 90]))


def stats(x: np.ndarray, group: np.ndarray) -> dict[str, str]:
    """The table's columns for unit rows `x` grouped into images/tiles by `group`."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    ev = np.linalg.svd(x - x.mean(axis=0), compute_uv=False) ** 2
    cum = np.cumsum(ev) / ev.sum()
    nn, nn_other, within, lid = [], [], [], []
    for i in range(0, len(x), 1000):  # blocks of the full similarity matrix
        s = x[i : i + 1000] @ x.T
        rows = np.arange(len(s))
        s[rows, i + rows] = -np.inf  # self
        same = group[i : i + 1000, None] == group[None, :]
        nn.append(s.max(axis=1))
        nn_other.append(np.where(same, -np.inf, s).max(axis=1))
        w = np.where(same & np.isfinite(s), s, 0.0)
        within.append(w.sum(axis=1) / np.maximum((same & np.isfinite(s)).sum(axis=1), 1))
        d = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * np.where(np.isfinite(s), s, -1.0)))
        d[rows, i + rows] = np.inf
        d[d < 1e-4] = np.inf  # exact duplicates (repeated captions) carry no dimension
        t = np.sort(np.partition(d, K_LID, axis=1)[:, :K_LID], axis=1)
        lid.append(1.0 / np.mean(np.log(t[:, -1:] / t[:, :-1]), axis=1))
    lid_all = np.concatenate(lid)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, len(x), 50_000), rng.integers(0, len(x), 50_000)
    keep = group[a] != group[b]
    between = np.sum(x[a[keep]] * x[b[keep]], axis=1)
    labels = np.unique(group)
    means = np.stack([x[group == g].mean(axis=0) for g in labels])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    sm = means @ means.T
    np.fill_diagonal(sm, -np.inf)
    return {
        "n": f"{len(x):,}",
        "PCA dims 50 / 90 %": f"{np.searchsorted(cum, 0.5) + 1} / {np.searchsorted(cum, 0.9) + 1}",
        "LID k=20 median (pooled)": f"{np.median(lid_all):.1f} ({1.0 / np.mean(1.0 / lid_all):.1f})",
        "NN cosine p10/50/90": q3(np.concatenate(nn)),
        "NN cosine, other image": q3(np.concatenate(nn_other)),
        "within / between": f"{np.mean(np.concatenate(within)):.3f} / {between.mean():.3f}",
        "nearest image-mean cosine": q3(sm.max(axis=1)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions-dir", help="folder of <set>_test_caps.txt (default ../shared/data/captions)")
    ap.add_argument("--alphas", type=lambda t: [float(v) for v in t.split(",")], default=[ALPHA],
                    help="realistic generator spreads to show")
    ap.add_argument("--seeds", type=int, default=1, help="realistic samples per alpha")
    args = ap.parse_args()
    from plugin.core.embedding.embedder import make_embedder

    emb = make_embedder(None, device="cpu")
    real = load_real(emb, args.captions_dir)
    n = len(real.vectors)
    rows: list[tuple[str, dict[str, str]]] = [("real RSITMD + RSICD test captions", stats(real.vectors, real.image))]
    for name in real.sets:
        sel = real.of_set(name)
        rows.append((f"  {name} alone", stats(real.vectors[sel], real.image[sel])))
    rows.append(("caption_like (isotropic, 400 bases)", stats(caption_like(emb, np.random.default_rng(0), n), np.arange(n) // 5)))
    for alpha in args.alphas:
        gen = Realistic(real, alpha)
        for seed in range(args.seeds):
            x = gen.tiles(np.random.default_rng(seed + 1), real.images)
            rows.append((f"realistic alpha={alpha:g}" + (f" seed {seed + 1}" if args.seeds > 1 else ""), stats(x, np.arange(len(x)) // 5)))
    cols = list(rows[0][1])
    print("| vectors | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for name, r in rows:
        print(f"| {name} | " + " | ".join(r[c] for c in cols) + " |")


if __name__ == "__main__":
    main()
