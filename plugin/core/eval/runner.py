"""Text-side evaluation: caption variants per image + query captions -> embeddings -> recalls.

Every mode ends here except the CLIP baseline: `full` (captions made now), `captions-file`
(captions made elsewhere) and the `captions-only` proxy (reference captions standing in for
generated ones) all reduce to "each gallery image owns some variant texts; each query caption
belongs to one image". Texts are embedded once (deduplicated, optionally cached on disk per
embedder fingerprint) and scored with one matrix product, so every fusion rule and variant count
reuses the same vectors.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from ..types import CaptionVariant, Embedder
from .datasets import DatasetError, EvalDataset
from .metrics import FUSIONS, RecallMetrics, fuse_variant_scores, recall_metrics


@dataclass
class EvalResult:
    """One evaluated configuration: what was measured on what, and how long it took."""

    mode: str
    dataset: dict[str, Any]
    metrics: RecallMetrics
    config: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "dataset": self.dataset, "config": self.config,
                "metrics": self.metrics.to_dict(), "seconds": self.seconds}


class VectorCache:
    """Text -> vector for one embedder, in memory and optionally in `folder` (one .npz per kind).

    Keyed by the embedder fingerprint so a different model or prompt never reuses stale vectors.
    """

    def __init__(self, embedder: Embedder, folder: Optional[Union[str, Path]] = None, batch_size: int = 128) -> None:
        self.embedder = embedder
        self.batch_size = batch_size
        self.folder = Path(folder) if folder else None
        self._mem: dict[str, dict[str, np.ndarray]] = {"documents": {}, "queries": {}}
        # Same prompts on both sides (MiniLM has none) -> a text has one vector whatever its role.
        self.shared = getattr(embedder, "query_prompt", 0) == getattr(embedder, "document_prompt", 1)
        if self.shared:
            self._mem["queries"] = self._mem["documents"]
        self._loaded: set[str] = set()
        self.embedded = 0  # texts actually sent to the model (the rest came from the cache)

    def _file(self, kind: str) -> Optional[Path]:
        if self.folder is None:
            return None
        kind = "documents" if self.shared else kind
        key = hashlib.sha1(self.embedder.fingerprint.encode("utf-8")).hexdigest()[:16]
        return self.folder / f"vectors-{key}-{kind}.npz"

    def _load(self, kind: str) -> None:
        f = self._file(kind)
        self._loaded.add(kind)
        if f is None or not f.is_file():
            return
        try:
            with np.load(f, allow_pickle=False) as z:
                texts, vecs = z["texts"], z["vectors"]
                if vecs.ndim == 2 and vecs.shape[1] == self.embedder.dim and len(texts) == len(vecs):
                    self._mem[kind].update({str(t): v for t, v in zip(texts, vecs)})
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is only lost time: the vectors are recomputed

    def _save(self, kind: str) -> None:
        f = self._file(kind)
        if f is None:
            return
        f.parent.mkdir(parents=True, exist_ok=True)
        items = self._mem[kind]
        tmp = f.with_suffix(".tmp.npz")
        np.savez(tmp, texts=np.array(list(items), dtype=str), vectors=np.stack(list(items.values())).astype(np.float32))
        tmp.replace(f)

    def get(self, texts: Sequence[str], kind: str = "documents") -> np.ndarray:
        """(len(texts), dim) float32; each distinct text is embedded at most once."""
        if kind not in self._mem:
            raise ValueError(f"kind {kind!r}: expected 'documents' or 'queries'")
        if kind not in self._loaded:
            self._load("documents" if self.shared else kind)
            self._loaded.add(kind)
        mem = self._mem[kind]
        todo = list(dict.fromkeys(t for t in texts if t not in mem))
        if todo:
            enc = self.embedder.encode_documents if kind == "documents" else self.embedder.encode_queries
            vecs = np.asarray(enc(todo, batch_size=self.batch_size), dtype=np.float32)
            mem.update(zip(todo, vecs))
            self.embedded += len(todo)
            self._save(kind)
        if not texts:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        return np.stack([mem[t] for t in texts])


def evaluate_variants(
    dataset: EvalDataset,
    variant_texts: Sequence[str],
    variant_image: Sequence[int] | np.ndarray,
    query_texts: Sequence[str],
    query_image: Sequence[int] | np.ndarray,
    vectors: VectorCache,
    fusions: Sequence[str] = ("max",),
    mode: str = "captions",
    config: Optional[dict[str, Any]] = None,
    rankers: Sequence[str] = ("dense",),
    lexical_weight: Optional[float] = None,
) -> list[EvalResult]:
    """Embed, score every query against every variant, fuse per image, measure; one result per
    (ranker, fusion). Rankers other than dense score bm25 by the index's own FTS5 tokenizer and
    fuse it with the cosines by the rule `search()` uses (hybrid.ranker_scores)."""
    from ..search.hybrid import HYBRID_WEIGHT, bm25_matrix, check_ranker, ranker_scores

    bad = [f for f in fusions if f not in FUSIONS]
    if bad:
        raise DatasetError(f"fusion {bad[0]!r}: expected one of {', '.join(FUSIONS)}")
    if not query_texts:
        raise DatasetError(f"{dataset.name}: no query captions to evaluate")
    t0 = time.perf_counter()
    docs = vectors.get(list(variant_texts), "documents")
    queries = vectors.get(list(query_texts), "queries")
    t_embed = time.perf_counter() - t0
    dense = queries @ docs.T  # (Q, V) cosine, vectors are normalised
    for r in rankers:
        check_ranker(r)
    t2 = time.perf_counter()
    bm25 = bm25_matrix(list(variant_texts), list(query_texts)) if set(rankers) - {"dense"} else None
    t_lex = time.perf_counter() - t2
    weight = HYBRID_WEIGHT if lexical_weight is None else float(lexical_weight)
    out = []
    for ranker in rankers:
        variant_scores = dense if bm25 is None or ranker == "dense" else ranker_scores(dense, bm25, ranker, weight)
        for rule in fusions:
            t1 = time.perf_counter()
            per_image = fuse_variant_scores(variant_scores, np.asarray(variant_image), len(dataset.images), rule)
            metrics = recall_metrics(per_image.T, query_image)
            cfg = dict(config or {})
            cfg.update(fusion=rule, embedder=vectors.embedder.fingerprint, variants_total=len(variant_texts))
            if ranker != "dense" or len(rankers) > 1:
                cfg["ranker"] = ranker
            if ranker == "hybrid":
                cfg["lexical_weight"] = weight
            secs = {"embed": round(t_embed, 3), "score": round(time.perf_counter() - t1, 3)}
            if ranker != "dense":
                secs["bm25"] = round(t_lex, 3)
            out.append(EvalResult(mode, dataset.describe(), metrics, cfg, secs))
    return out


def captions_only_split(dataset: EvalDataset, k: int) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
    """The proxy split: the first k reference captions of each image are its variants, the rest queries."""
    if k < 1:
        raise DatasetError(f"k={k}: at least one reference caption must stand in as the image's caption")
    v_txt: list[str] = []
    v_img: list[int] = []
    q_txt: list[str] = []
    q_img: list[int] = []
    for i in range(len(dataset.images)):
        caps = dataset.captions_of(i)
        if len(caps) <= k:
            raise DatasetError(
                f"{dataset.name}: image {dataset.images[i]} has {len(caps)} captions; k={k} leaves no query "
                f"(use k < {len(caps)})"
            )
        v_txt += caps[:k]
        v_img += [i] * k
        q_txt += caps[k:]
        q_img += [i] * (len(caps) - k)
    return v_txt, np.asarray(v_img), q_txt, np.asarray(q_img)


def run_captions_only(
    dataset: EvalDataset, vectors: VectorCache, ks: Sequence[int] = (1,), fusions: Sequence[str] = ("max",),
    rankers: Sequence[str] = ("dense",), lexical_weight: Optional[float] = None,
) -> list[EvalResult]:
    """The text-side proxy for every k, ranker and fusion (vectors shared across all of them)."""
    out = []
    for k in ks:
        v_txt, v_img, q_txt, q_img = captions_only_split(dataset, k)
        out += evaluate_variants(dataset, v_txt, v_img, q_txt, q_img, vectors, fusions,
                                 mode="captions-only", config={"k": k, "variants_per_image": k},
                                 rankers=rankers, lexical_weight=lexical_weight)
    return out


def run_with_variants(
    dataset: EvalDataset,
    variants: Mapping[str, Sequence[CaptionVariant]],
    vectors: VectorCache,
    fusions: Sequence[str] = ("max",),
    max_variants: Optional[int] = None,
    mode: str = "captions-file",
    config: Optional[dict[str, Any]] = None,
    rankers: Sequence[str] = ("dense",),
    lexical_weight: Optional[float] = None,
) -> list[EvalResult]:
    """Generated caption variants (by image file name) against all reference captions as queries.

    `max_variants` keeps the first K variants of each image, to compare variant counts on one run.
    """
    missing = [f for f in dataset.images if not variants.get(f)]
    if missing:
        raise DatasetError(
            f"{dataset.name}: {len(missing)} of {len(dataset.images)} images have no caption variants, "
            f"first: {missing[0]}"
        )
    v_txt: list[str] = []
    v_img: list[int] = []
    for i, fname in enumerate(dataset.images):
        vs = list(variants[fname])[: max_variants or None]
        v_txt += [v.text() for v in vs]
        v_img += [i] * len(vs)
    cfg = dict(config or {})
    cfg["variants_per_image"] = max_variants or "all"
    return evaluate_variants(dataset, v_txt, np.asarray(v_img), dataset.captions, dataset.caption_image, vectors,
                             fusions, mode=mode, config=cfg, rankers=rankers, lexical_weight=lexical_weight)
