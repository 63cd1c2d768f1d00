"""Recall@K for image-text retrieval, defined exactly as the RSITMD / RSICD literature (AMFMN code) does.

text->image: every query caption ranks all gallery images; a hit at K when its own image is in the
top K. image->text: every image ranks all query captions; a hit at K when *any* of its own captions
is in the top K. mR is the mean of the six recalls (the field's headline number); the per-direction
means are what the paper's own evaluation script prints, so both are reported, clearly labelled.

Ties: scores are rounded to `SCORE_DECIMALS` decimals first (identical texts -- RSICD repeats many
captions -- then tie exactly whatever BLAS blocking did to the last bits), and a tie is broken as a
stable sort by score descending then index ascending would break it: the lower gallery index wins.
The rank of a target is therefore `#(scores > s) + #(scores == s with a lower index)`, computed with
vectorised comparisons instead of argsort, which also makes it fast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import EngineError

#: Scores are rounded to this many decimals before ranking (see module docstring).
SCORE_DECIMALS = 6
#: The fusion rules: how the scores of one image's caption variants become the image's score.
FUSIONS = ("max", "mean", "top2")
RECALL_KS = (1, 5, 10)
#: Rank given to an image that has no query caption at all: a miss at any K.
NO_CAPTION_RANK = np.iinfo(np.int64).max


@dataclass(frozen=True)
class RecallMetrics:
    """The six recalls (percent), their means, and the sizes they were measured on."""

    t2i_r1: float
    t2i_r5: float
    t2i_r10: float
    i2t_r1: float
    i2t_r5: float
    i2t_r10: float
    #: Mean of the six recalls: the standard "mR" of RSITMD/RSICD papers.
    mR: float
    #: Mean of the three text->image recalls (the paper's code reports the directions separately).
    t2i_mean: float
    #: Mean of the three image->text recalls.
    i2t_mean: float
    #: Images every query ranks (text->image gallery).
    gallery_images: int
    #: Query captions (the image->text gallery).
    query_captions: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fuse_variant_scores(
    variant_scores: np.ndarray, variant_image: np.ndarray, n_images: int, rule: str = "max"
) -> np.ndarray:
    """(Q, V) query-to-variant scores -> (Q, N) query-to-image scores.

    An image is as good as its caption variants say: `max` takes the best variant, `mean` their
    average, `top2` the mean of the two best (the best alone when an image has one variant).
    Images without variants score -inf so they rank last.
    """
    if rule not in FUSIONS:
        raise EngineError(f"fusion {rule!r}: expected one of {', '.join(FUSIONS)}")
    scores = np.asarray(variant_scores, dtype=np.float32)
    owner = np.asarray(variant_image, dtype=np.int64)
    if scores.ndim != 2 or scores.shape[1] != owner.shape[0]:
        raise ValueError(f"variant scores {scores.shape} do not match {owner.shape[0]} variant owners")
    counts = np.bincount(owner, minlength=n_images)
    k_max = int(counts.max()) if counts.size else 0
    out = np.full((scores.shape[0], n_images), -np.inf, dtype=np.float32)
    if k_max == 0:
        return out
    # (N, k_max) table of variant columns, -1 where an image has fewer variants.
    order = np.argsort(owner, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(owner.size) - starts[owner[order]]
    table = np.full((n_images, k_max), -1, dtype=np.int64)
    table[owner[order], slot] = order
    pad = table < 0
    has = counts > 0
    chunk = max(1, 8_000_000 // max(1, n_images * k_max))
    for q0 in range(0, scores.shape[0], chunk):
        g = scores[q0 : q0 + chunk][:, np.where(pad, 0, table)]  # (q, N, k_max)
        if rule == "max":
            g = np.where(pad[None], -np.inf, g)
            fused = g.max(axis=2)
        elif rule == "mean":
            g = np.where(pad[None], 0.0, g)
            with np.errstate(invalid="ignore", divide="ignore"):
                fused = g.sum(axis=2) / counts[None, :]
        else:
            g = np.where(pad[None], -np.inf, g)
            if k_max == 1:
                fused = g[:, :, 0]
            else:
                top = -np.partition(-g, 1, axis=2)[:, :, :2]
                second = np.where(counts[None, :] >= 2, top[:, :, 1], top[:, :, 0])
                fused = (top[:, :, 0] + second) / 2.0
        out[q0 : q0 + chunk] = np.where(has[None, :], fused, -np.inf)
    return out


def _ranks_of_targets(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of `targets[r]` in row r of `scores` (desc, ties -> lower index first)."""
    rows = np.arange(scores.shape[0])
    s = scores[rows, targets][:, None]
    cols = np.arange(scores.shape[1])[None, :]
    higher = (scores > s).sum(axis=1)
    tied_before = ((scores == s) & (cols < targets[:, None])).sum(axis=1)
    return higher + tied_before


def rank_text_to_image(scores: np.ndarray, query_image: np.ndarray) -> np.ndarray:
    """Rank (0-based) of each query's own image among all images; scores are (N images, Q queries)."""
    s = _rounded(scores).T
    q_img = np.asarray(query_image, dtype=np.int64)
    ranks = np.empty(s.shape[0], dtype=np.int64)
    step = max(1, 4_000_000 // max(1, s.shape[1]))
    for q0 in range(0, s.shape[0], step):
        ranks[q0 : q0 + step] = _ranks_of_targets(s[q0 : q0 + step], q_img[q0 : q0 + step])
    return ranks


def rank_image_to_text(scores: np.ndarray, query_image: np.ndarray) -> np.ndarray:
    """Best (0-based) rank any of an image's own captions reaches when the image ranks all queries.

    Images without a query caption get `NO_CAPTION_RANK` (a miss at every K).
    """
    s = _rounded(scores)
    q_img = np.asarray(query_image, dtype=np.int64)
    n_img, n_q = s.shape
    # Rank of every query caption in the row of its own image, then the best per image.
    per_caption = np.empty(n_q, dtype=np.int64)
    step = max(1, 4_000_000 // max(1, n_q))
    for q0 in range(0, n_q, step):
        idx = np.arange(q0, min(n_q, q0 + step))
        per_caption[idx] = _ranks_of_targets(s[q_img[idx]], idx)
    best = np.full(n_img, NO_CAPTION_RANK, dtype=np.int64)
    np.minimum.at(best, q_img, per_caption)
    return best


def recall_metrics(scores: np.ndarray, query_image: Sequence[int] | np.ndarray, ks: Sequence[int] = RECALL_KS) -> RecallMetrics:
    """The field's six recalls from an (N images, Q query captions) score matrix.

    `query_image[q]` is the gallery index of query q's image. Every image counts in image->text,
    including one that has no query caption (always a miss), as in the reference code.
    """
    s = np.asarray(scores)
    q_img = np.asarray(query_image, dtype=np.int64)
    if s.ndim != 2 or s.shape[1] != q_img.shape[0]:
        raise ValueError(f"scores {s.shape} do not match {q_img.shape[0]} query captions")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise EngineError("nothing to evaluate: the gallery or the query set is empty")
    if q_img.min() < 0 or q_img.max() >= s.shape[0]:
        raise ValueError("query_image holds an index outside the gallery")
    t2i = rank_text_to_image(s, q_img)
    i2t = rank_image_to_text(s, q_img)
    t = [100.0 * float(np.mean(t2i < k)) for k in ks]
    i = [100.0 * float(np.mean(i2t < k)) for k in ks]
    return RecallMetrics(
        t2i_r1=t[0], t2i_r5=t[1], t2i_r10=t[2],
        i2t_r1=i[0], i2t_r5=i[1], i2t_r10=i[2],
        mR=float(np.mean(t + i)), t2i_mean=float(np.mean(t)), i2t_mean=float(np.mean(i)),
        gallery_images=int(s.shape[0]), query_captions=int(s.shape[1]),
    )


def _rounded(scores: np.ndarray, decimals: Optional[int] = SCORE_DECIMALS) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    return s if decimals is None else np.round(s, decimals)
