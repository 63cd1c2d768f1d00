"""Query vector -> ranked tiles: kNN over caption variants, grouped by tile, fused, filtered.

The kNN only *finds candidate tiles*; each candidate is then scored exactly from all its stored
variant embeddings, so the fused score (max as in the paper, mean, or top-2 mean) never depends on
which variants the approximate search happened to return. If filters or grouping leave fewer than
`top` tiles, k widens (x4) until enough are found or the whole index has been seen.
"""

from __future__ import annotations

import json
import math
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import IndexStoreError, QueryError
from ..types import Hit, PixelWindow
from .candidates import Candidates, Searchable
from .negation import NEGATIVE_THRESHOLD, demote

__all__ = ["FUSIONS", "NEGATIVE_THRESHOLD", "fuse", "search", "window_overlap"]

FUSIONS = ("max", "mean", "top2")
#: Overlap (IoU or containment) above which the weaker of two hits on one raster is suppressed.
OVERLAP_THRESHOLD = 0.5
#: When the raster filter leaves at most this many variants, score them exactly instead of kNN.
EXACT_LIMIT = 50_000


def fuse(scores: Sequence[float] | np.ndarray, rule: str = "max") -> float:
    """One tile score from its variants' cosine scores: max (the paper), mean, or mean of the two best."""
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    if s.size == 0:
        raise ValueError("a tile needs at least one variant score")
    if rule == "max":
        return float(s[0])
    if rule == "mean":
        return float(s.mean())
    if rule == "top2":
        return float(s[:2].mean())
    raise QueryError(f"unknown fusion {rule!r}: use one of {', '.join(FUSIONS)}")


def window_overlap(a: PixelWindow, b: PixelWindow) -> float:
    """max(IoU, intersection / smaller area): catches a small tile inside a coarser-scale one."""
    iw = min(a.col_off + a.width, b.col_off + b.width) - max(a.col_off, b.col_off)
    ih = min(a.row_off + a.height, b.row_off + b.height) - max(a.row_off, b.row_off)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = float(iw * ih)
    area_a, area_b = float(a.width * a.height), float(b.width * b.height)
    return max(inter / (area_a + area_b - inter), inter / max(1.0, min(area_a, area_b)))


def _query_vector(index: Searchable, query_vector: np.ndarray) -> np.ndarray:
    """Unit query vector, or (m, dim) unit rows for several query vectors (search by example)."""
    q = np.asarray(query_vector, dtype=np.float32)
    q = q.reshape(-1) if q.ndim < 2 or q.shape[0] == 1 else q
    if q.shape[-1] != index.dim or q.ndim > 2:
        raise IndexStoreError(f"the query vector has {q.shape[-1]} dimensions, the index holds {index.dim}-d vectors "
                              f"(embedder {index.embedder_fingerprint})")
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if not np.isfinite(n).all() or (n == 0.0).any():
        raise QueryError("the query vector is zero or not finite")
    return q / n


def _bbox_per_raster(rasters: dict[str, dict], bbox: tuple[float, float, float, float],
                     bbox_crs: Optional[str]) -> dict[str, Optional[tuple[float, float, float, float]]]:
    """The bbox in each raster's CRS (None = raster excluded: it has no CRS to compare against)."""
    if len(bbox) != 4 or not all(math.isfinite(float(v)) for v in bbox):
        raise QueryError(f"bbox must be (xmin, ymin, xmax, ymax), got {bbox!r}")
    x0, y0, x1, y1 = (float(v) for v in bbox)
    if x0 > x1 or y0 > y1:
        raise QueryError(f"bbox must be (xmin, ymin, xmax, ymax) with xmin <= xmax and ymin <= ymax, got {bbox!r}")
    out: dict[str, Optional[tuple[float, float, float, float]]] = {}
    if bbox_crs is None:  # the bbox is in each raster's own coordinates (pixels for rasters without CRS)
        return {rid: (x0, y0, x1, y1) for rid in rasters}
    from rasterio.crs import CRS
    from rasterio.errors import CRSError
    from rasterio.warp import transform_bounds

    try:
        src = CRS.from_user_input(bbox_crs)
    except CRSError as exc:
        raise QueryError(f"bbox CRS {bbox_crs!r} is not understood: {exc}") from None
    for rid, r in rasters.items():
        if not r.get("crs_wkt"):
            out[rid] = None
            continue
        try:
            out[rid] = tuple(transform_bounds(src, CRS.from_wkt(r["crs_wkt"]), x0, y0, x1, y1, densify_pts=21))  # type: ignore[assignment]
        except Exception:  # noqa: BLE001 -- a bbox that cannot be projected there cannot match there
            out[rid] = None
    return out


def search(index: Searchable, query_vector: np.ndarray, *, top: int = 10, fusion: str = "max",
           raster_ids: Optional[Sequence[str]] = None, bbox: Optional[tuple[float, float, float, float]] = None,
           bbox_crs: Optional[str] = None, min_score: Optional[float] = None, suppress_overlaps: bool = False,
           oversample: int = 10, ranker: Optional[str] = None, query_text: Optional[str] = None,
           lexical_weight: Optional[float] = None, negatives: Optional[Sequence[tuple[str, np.ndarray]]] = None,
           exclude_tiles: Optional[set[str]] = None) -> list[Hit]:
    """Top `top` tiles for a unit query vector (see the module docstring for how).

    `ranker`: "dense" (cosine), "lexical" (bm25 of `query_text`'s words) or "hybrid" (both, see
    hybrid.py; the default, and the same as dense without `query_text`). `negatives`: (phrase, unit vector) pairs; tiles whose best variant scores above
    `NEGATIVE_THRESHOLD` for one of them rank after all others. A (m, dim) `query_vector` ranks by
    the best of its rows (search by example); `exclude_tiles` never appear.
    """
    from ..store.lexical import matched_terms_in, query_terms
    from . import hybrid as H

    ranker = H.check_ranker(ranker or H.DEFAULT_RANKER)
    if fusion not in FUSIONS:
        raise QueryError(f"unknown fusion {fusion!r}: use one of {', '.join(FUSIONS)}")
    if int(top) < 1:
        raise QueryError(f"top must be at least 1 (got {top})")
    q = _query_vector(index, query_vector)
    terms = query_terms(query_text or "") if ranker != "dense" else []
    if ranker == "lexical" and not terms:
        raise QueryError("the lexical ranker needs query words (all of them were stop words)")
    weight = H.HYBRID_WEIGHT if lexical_weight is None else float(lexical_weight)
    index.sync()  # see what writers committed since we opened
    rasters = {r["raster_id"]: r for r in _raster_meta(index)}
    allowed = set(rasters) if raster_ids is None else {r for r in raster_ids if r in rasters}
    if not allowed or index.active_count() == 0:
        return []
    boxes = _bbox_per_raster(rasters, bbox, bbox_crs) if bbox is not None else None
    n_active = index.active_count()
    exact = (raster_ids is not None and ranker != "lexical"
             and sum(rasters[r]["embedded"] for r in allowed) <= min(EXACT_LIMIT, n_active))
    neg = np.stack([v for _t, v in negatives]) if negatives else None
    cands = Candidates(index, vectors=exact or fusion != "max" or q.ndim == 2 or neg is not None)
    k = min(n_active, max(int(top) * max(1, round(index.variants_per_tile())) * max(1, int(oversample)), 16))
    demoted: dict[str, tuple[str, float]] = {}
    while True:
        k_lex = k if ranker == "lexical" else max(int(top) * 4, k // 5)  # the bonus only matters near the top
        lex_ids, lex_s = (H.lexical_candidates(index.conn, terms, k_lex, sorted(allowed) if raster_ids is not None else None,
                                               None if ranker == "lexical" else H.LEXICAL_TERM_CAP)
                          if terms else (np.zeros(0, np.int64), np.zeros(0)))
        if ranker == "lexical":  # the score is bm25 alone: cosines weigh 0, bm25 comes in as the bonus
            cands.dense_weight = 0.0
            cands.add_labels(lex_ids.tolist(), [0.0] * len(lex_ids))
            cands.bonus.update(zip(lex_ids.tolist(), lex_s.tolist()))
            floor = -math.inf
        else:
            if exact:
                cands.add_tiles_of_rasters(sorted(allowed))
                floor = -math.inf
            else:
                labels, sims = _knn(index, q, k)
                floor = float(sims.min()) if len(sims) else -math.inf
                if len(lex_ids) and not cands.vectors:  # lexical-only candidates need their cosine too
                    seen = set(labels.tolist())
                    extra = [c for c in lex_ids.tolist() if c not in seen]
                    cos = H.dense_of(index.conn, extra, q)
                    labels = np.r_[labels, np.asarray(list(cos), np.int64)]
                    sims = np.r_[sims, np.asarray(list(cos.values()), np.float32)]
                elif len(lex_ids):
                    labels = np.r_[labels, lex_ids]
                    sims = np.r_[sims, np.zeros(len(lex_ids), np.float32)]
                cands.add_labels(labels.tolist(), sims.tolist())
            if len(lex_ids):
                cands.bonus.update(zip(lex_ids.tolist(), H.lexical_bonus(lex_s, weight).tolist()))
        ranked = _rank(cands, q, fusion, allowed, boxes, min_score, exclude_tiles)
        if neg is not None:
            ranked, demoted = demote(ranked, cands, neg, [t for t, _v in negatives or []])
        hits = _suppress(ranked, cands) if suppress_overlaps else ranked
        good = sum(1 for h in hits if h[0] not in demoted)
        exhausted = k >= n_active and (ranker != "lexical" or len(lex_ids) < k)
        done = exact or good >= top or exhausted or (min_score is not None and floor < min_score)
        if ranker == "lexical":
            done = good >= top or len(lex_ids) < k
        if done:
            break
        k = k * 4 if ranker == "lexical" else min(n_active, k * 4)
    out = [_hit(rank, tid, score, cid, cands, rasters) for rank, (tid, score, cid) in enumerate(hits[: int(top)], 1)]
    words = matched_terms_in({i: h.caption for i, h in enumerate(out)}, terms) if ranker != "dense" else {}
    for i, h in enumerate(out):
        if ranker != "dense":
            h.extra["ranker"] = ranker
            cid = h.extra.pop("_cid")
            h.extra["matched_terms"] = words.get(i, [])
            if ranker == "hybrid":  # score = cosine + this bonus (max fusion): the cosine stays recoverable
                h.extra["lexical_bonus"] = round(cands.bonus.get(cid, 0.0), 6)
        h.extra.pop("_cid", None)
        if h.tile_id in demoted:
            h.extra["demoted_by"], h.extra["negative_score"] = demoted[h.tile_id]
    return out


def _knn(index: Searchable, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """kNN labels and cosines; several query rows (search by example) pool their neighbours."""
    if q.ndim == 1:
        return index.ann.query(q, k)
    best: dict[int, float] = {}
    for row in q:
        labels, sims = index.ann.query(row, k)
        for lab, sim in zip(labels.tolist(), sims.tolist()):
            best[lab] = max(sim, best.get(lab, -math.inf))
    return np.asarray(list(best), np.int64), np.asarray(list(best.values()), np.float32)


def _raster_meta(index: Searchable) -> list[dict[str, Any]]:
    rows = index.conn.execute(
        "SELECT r.raster_id, r.path, r.name, r.crs_wkt, (SELECT COUNT(*) FROM tiles t WHERE t.raster_id = r.raster_id)"
        " FROM rasters r").fetchall()
    vpt = index.variants_per_tile()
    return [{"raster_id": a, "path": b, "name": c, "crs_wkt": d, "embedded": int(n * vpt) + 1} for a, b, c, d, n in rows]


def _rank(cands: Candidates, q: np.ndarray, rule: str, allowed: set[str],
          boxes: Optional[dict[str, Optional[tuple[float, float, float, float]]]],
          min_score: Optional[float], exclude: Optional[set[str]] = None) -> list[tuple[str, float, int]]:
    """Candidate tiles passing the filters, best first (score desc, then tile id)."""
    pos, score, cid = cands.fused(q, rule)
    if not len(pos):
        return []
    rasters = np.asarray(cands.t_raster, dtype=object)[pos]
    keep = np.fromiter((r in allowed for r in rasters), bool, len(pos))
    if boxes is not None:
        env = np.asarray(cands.t_env, np.float64)[pos]
        box = np.array([boxes.get(r) or (np.inf, np.inf, -np.inf, -np.inf) for r in rasters], np.float64)
        keep &= ~((env[:, 2] < box[:, 0]) | (env[:, 0] > box[:, 2]) | (env[:, 3] < box[:, 1]) | (env[:, 1] > box[:, 3]))
    if min_score is not None:
        keep &= score >= float(min_score)
    if exclude:
        keep &= np.fromiter((cands.t_ids[p] not in exclude for p in pos), bool, len(pos))
    pos, score, cid = pos[keep], score[keep], cid[keep]
    ids = np.asarray(cands.t_ids)[pos] if len(pos) else np.zeros(0, str)
    order = np.lexsort((ids, -score))
    return [(str(ids[i]), float(score[i]), int(cid[i])) for i in order]


def _suppress(ranked: list[tuple[str, float, int]], cands: Candidates) -> list[tuple[str, float, int]]:
    kept: list[tuple[str, float, int]] = []
    for item in ranked:
        t = cands.tiles[item[0]]
        if any(cands.tiles[k[0]]["raster_id"] == t["raster_id"]
               and window_overlap(cands.tiles[k[0]]["window"], t["window"]) > OVERLAP_THRESHOLD for k in kept):
            continue
        kept.append(item)
    return kept


def _hit(rank: int, tid: str, score: float, cid: int, cands: Candidates, rasters: dict[str, dict]) -> Hit:
    t = cands.tiles[tid]
    row = cands.index.conn.execute(
        "SELECT variant_index, one_sentence, feature, caption FROM captions WHERE caption_id = ?", (cid,)).fetchone()
    from ..types import CaptionVariant

    vi, text = (int(row[0]), CaptionVariant(row[1], row[2], row[3]).text()) if row else (0, "")
    r = rasters.get(t["raster_id"], {})
    return Hit(rank=rank, score=float(score), tile_id=tid, raster_id=t["raster_id"], raster=r.get("path", ""),
               window=t["window"], scale=int(t["scale"]), caption=text, variant_index=vi,
               footprint=json.loads(t["footprint"]), crs=r.get("crs_wkt"), raster_name=r.get("name", ""),
               extra={"_cid": int(cid)})
