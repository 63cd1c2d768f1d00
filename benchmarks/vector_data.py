"""Synthetic caption-variant vectors for the search benchmarks, and the real ones they are checked against.

Three generators, from the hardest for a graph index to the closest to real captions:

- `unit_rows`: uniform random unit vectors (every point about equally far from every other).
- `caption_like`: vectors scattered around 400 MiniLM embeddings of template caption texts with
  *isotropic* 384-d Gaussian noise (cosine ~0.86 to their base); the 5 "variants" of a tile are
  unrelated. Inside a cluster the neighbours are decided by high-dimensional uniform noise: the
  documented worst case, kept for comparison.
- `realistic`: grounded in the real RSITMD + RSICD test captions (5 per image, the real analogue of
  a tile's 5 caption variants; `benchmarks/caption_vector_stats.py` measures both). A tile centre is
  a real image's mean embedding plus `alpha` times noise drawn from the real *between-image*
  covariance (its PCA spectrum, not isotropic), rescaled to the parent's norm; the tile's 5 variants
  are that centre plus the parent image's own within-image residuals (caption - image mean), so the
  variant structure is the real one. `alpha` is the one knob, set from the measured statistics
  (local intrinsic dimension and nearest-other-image cosine), not from ANN results. Every 10th
  image is held out of the generator; its captions serve as queries (`held_out_queries`).

The real captions are read from `../shared/data/captions` (never copied into the repository) and
embedded once; the vectors are cached in the temp folder, keyed by the embedder and the files.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SETS = ("rsitmd", "rsicd")
#: Spread of tile centres around their parent image, in units of the real between-image covariance.
#: 0.7 matches the real set's local intrinsic dimension (8.1-8.6 vs 8.1) and nearest-other-image cosine
#: (median 0.81 vs 0.83); it spreads tiles wider than the real image means (nearest mean 0.75 vs 0.86),
#: the harder side for a graph index (caption_vector_stats.py, RESULTS.md).
ALPHA = 0.7


def default_captions_dir() -> Path:
    """`../shared/data/captions` beside the repository (or beside its worktrees' parent)."""
    for base in (ROOT.parent, ROOT.parent.parent):
        p = base / "shared" / "data" / "captions"
        if p.is_dir():
            return p
    return ROOT.parent / "shared" / "data" / "captions"


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    out = np.empty((n, dim), np.float32)
    for i in range(0, n, 100_000):
        v = rng.standard_normal((min(100_000, n - i), dim), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out[i : i + len(v)] = v
    return out


def caption_like(emb, rng: np.random.Generator, n: int, bases: int = 400, noise: float = 0.6) -> np.ndarray:
    """n unit vectors scattered around real MiniLM embeddings of caption-like texts (cosine ~0.86 to their base).

    The noise is isotropic in 384-d, so inside a cluster this is uniform random data: the worst
    case of graph indexes. Consecutive groups of 5 are unrelated (each vector picks its own base).
    """
    from embedding_throughput import caption_texts

    base = emb.encode_documents(caption_texts(bases, seed=7))
    out = np.empty((n, base.shape[1]), np.float32)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        v = base[rng.integers(0, bases, m)] + noise * rng.standard_normal((m, base.shape[1]), dtype=np.float32) / np.sqrt(base.shape[1])
        out[i : i + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


@dataclass
class RealCaptions:
    """Real reference-caption embeddings: `vectors` (unit rows) and `image` (image index per row, 5 rows each)."""

    vectors: np.ndarray
    image: np.ndarray
    sets: tuple[str, ...]
    #: Images of each set (rows of set i come after those of the sets before it).
    set_images: tuple[int, ...]
    #: The caption texts, row for row.
    texts: list[str]

    def of_set(self, name: str) -> np.ndarray:
        """Row indices of one set's captions."""
        i = self.sets.index(name)
        lo = sum(self.set_images[:i])
        return np.flatnonzero((self.image >= lo) & (self.image < lo + self.set_images[i]))

    @property
    def images(self) -> int:
        return int(self.image.max()) + 1

    def grouped(self) -> np.ndarray:
        """(images, 5, dim): each image's caption vectors."""
        order = np.argsort(self.image, kind="stable")
        return self.vectors[order].reshape(self.images, -1, self.vectors.shape[1])


def load_real(emb, captions_dir: Optional[Path] = None, sets: tuple[str, ...] = SETS) -> RealCaptions:
    """Embed (or read from the cache) the real test captions of `sets` with `emb`'s document path."""
    from plugin.core.eval.datasets import load_precomp

    folder = Path(captions_dir or default_captions_dir())
    files = [folder / f"{s}_test_caps.txt" for s in sets]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"real captions not found: {', '.join(missing)} (pass --captions-dir)")
    key = hashlib.sha1(emb.fingerprint.encode())
    for f in files:
        key.update(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
    cache = Path(tempfile.gettempdir()) / f"sis-bench-real-captions-v2-{key.hexdigest()[:16]}.npz"
    if cache.is_file():
        z = np.load(cache)
        texts = [c for f in files for c in load_precomp(f).captions]
        return RealCaptions(z["vectors"], z["image"], tuple(sets), tuple(int(c) for c in z["set_images"]), texts)
    vecs, imgs, offset, counts_per_set, texts = [], [], 0, [], []
    for f in files:
        ds = load_precomp(f)
        counts = np.bincount(ds.caption_image)
        if not np.all(counts == 5):
            raise SystemExit(f"{f.name}: expected 5 captions per image")
        vecs.append(np.asarray(emb.encode_documents(ds.captions), np.float32))
        imgs.append(ds.caption_image + offset)
        offset += len(ds.images)
        texts += ds.captions
        counts_per_set.append(len(ds.images))
    real = RealCaptions(np.concatenate(vecs), np.concatenate(imgs).astype(np.int64), tuple(sets), tuple(counts_per_set), texts)
    tmp = cache.with_suffix(f".{os.getpid()}.npz")
    np.savez(tmp, vectors=real.vectors, image=real.image, set_images=np.asarray(real.set_images))
    os.replace(tmp, cache)
    return real


class Realistic:
    """Tiles around real images: centre = image mean + alpha x between-image noise; variants = centre + real residuals."""

    def __init__(self, real: RealCaptions, alpha: float = ALPHA, holdout: bool = False) -> None:
        g = real.grouped().astype(np.float64)
        if holdout:  # the held-out images' captions are the queries: no tile is built around them
            g = g[~held_out(real.images)]
        self.means = g.mean(axis=1)
        self.residuals = (g - self.means[:, None, :]).astype(np.float32)
        centred = self.means - self.means.mean(axis=0)
        lam, vecs = np.linalg.eigh(centred.T @ centred / (len(centred) - 1))
        #: Noise factor: z @ factor ~ N(0, between-image covariance).
        self.factor = (np.sqrt(np.clip(lam, 0.0, None))[:, None] * vecs.T).astype(np.float32)
        self.means = self.means.astype(np.float32)
        self.alpha = float(alpha)

    def tiles(self, rng: np.random.Generator, n_tiles: int, variants: int = 5) -> np.ndarray:
        """(n_tiles * variants, dim) unit rows; rows t*variants .. t*variants+variants-1 are tile t's variants."""
        if not 1 <= variants <= self.residuals.shape[1]:
            raise SystemExit(f"realistic data has at most {self.residuals.shape[1]} variants per tile")
        dim = self.means.shape[1]
        out = np.empty((n_tiles * variants, dim), np.float32)
        for i in range(0, n_tiles, 20_000):
            m = min(20_000, n_tiles - i)
            parent = rng.integers(0, len(self.means), m)
            base = self.means[parent]
            c = base + self.alpha * (rng.standard_normal((m, dim), dtype=np.float32) @ self.factor)
            c *= (np.linalg.norm(base, axis=1) / np.linalg.norm(c, axis=1))[:, None]
            v = (c[:, None, :] + self.residuals[parent, :variants]).reshape(-1, dim)
            v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            out[i * variants : (i + m) * variants] = v
        return out


def held_out(images: int) -> np.ndarray:
    """Mask of the images kept out of the realistic generator (every 10th): their captions are the queries."""
    return np.arange(images) % 10 == 9


def held_out_queries(real: RealCaptions, n: int) -> list[str]:
    """n query texts: real captions of held-out images (image i, then caption 0..4 on later rounds)."""
    imgs = np.flatnonzero(held_out(real.images))
    order = np.argsort(real.image, kind="stable")
    return [real.texts[order[imgs[i % len(imgs)] * 5 + (i // len(imgs)) % 5]] for i in range(n)]


def realistic(emb, rng: np.random.Generator, n: int, variants: int = 5, alpha: float = ALPHA,
              captions_dir: Optional[Path] = None) -> np.ndarray:
    """n rows (n // variants tiles, the rest of n padded with one more tile's first variants), none around a held-out image."""
    gen = Realistic(load_real(emb, captions_dir), alpha, holdout=True)
    tiles = -(-n // variants)
    return gen.tiles(rng, tiles, variants)[:n]
