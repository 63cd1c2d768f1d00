"""Search: fusion against a brute-force numpy reference, filters, widening, overlap suppression."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from plugin.core.errors import QueryError
from plugin.core.search.search import fuse, window_overlap
from plugin.core.store.store import SearchIndex
from plugin.core.types import PixelWindow
from tests.core.index_helpers import DIM, FakeInfo, tile, unit, variants

A = FakeInfo("/data/a.tif", "ra", "a")
B = FakeInfo("/data/b.tif", "rb", "b", x0=500000.0, y0=4200000.0)
NOCRS = FakeInfo("/data/plain.png", "rn", "plain", crs_wkt=None)


def _brute(vecs: dict[str, np.ndarray], q: np.ndarray, rule: str, top: int) -> list[tuple[str, float]]:
    """The reference: every variant of every tile, exact cosine, fused, sorted (score desc, tile id)."""
    qn = q / np.linalg.norm(q)
    scores = []
    for tid, v in vecs.items():
        s = np.sort(v.astype(np.float64) @ qn.astype(np.float64))[::-1]
        scores.append((tid, {"max": s[0], "mean": s.mean(), "top2": s[:2].mean()}[rule]))
    scores.sort(key=lambda x: (-x[1], x[0]))
    return scores[:top]


@pytest.fixture()
def corpus(tmp_path: Path):
    """300 tiles over three rasters with 1..5 variants each; two tiles share identical vectors (a tie)."""
    rng = np.random.default_rng(11)
    vecs: dict[str, np.ndarray] = {}
    idx = SearchIndex.open(str(tmp_path / "idx"), create=True, embedder_fingerprint="e", dim=DIM)
    for info, n in ((A, 200), (B, 80), (NOCRS, 20)):
        idx.upsert_raster(info, "c", {})
        items = []
        for i in range(n):
            ref = tile(info, (i % 20) * 64, (i // 20) * 64)
            k = 1 + i % 5
            v = unit(rng, k)
            items.append((ref, variants(ref.tile_id, k), v))
            vecs[ref.tile_id] = v
        idx.add_tiles(info.raster_id, "c", items)
    tie_a, tie_b = tile(A, 0, 0).tile_id, tile(A, 64, 0).tile_id
    idx.add_tiles("ra", "c", [(tile(A, 64, 0), variants(tie_b, 1), vecs[tie_a][:1])])
    vecs[tie_b] = vecs[tie_a][:1].copy()
    idx.flush()
    yield idx, vecs, rng
    idx.close()


@pytest.mark.parametrize("rule", ["max", "mean", "top2"])
def test_fusion_matches_brute_force(corpus, rule: str) -> None:
    idx, vecs, rng = corpus
    queries = list(unit(rng, 8)) + [vecs[tile(A, 0, 0).tile_id][0]]  # last one hits the tied pair exactly
    for q in queries:
        got = idx.search(q, top=15, fusion=rule)
        want = _brute(vecs, q, rule, 15)
        assert [h.tile_id for h in got] == [t for t, _ in want]
        assert [h.score for h in got] == pytest.approx([s for _, s in want], abs=1e-5)
        assert [h.rank for h in got] == list(range(1, 16))
        for h in got:  # the caption shown is the tile's best variant
            best = int(np.argmax(vecs[h.tile_id] @ (q / np.linalg.norm(q))))
            assert h.variant_index == best and h.caption.startswith(f"{h.tile_id} v{best}")
    tied = idx.search(queries[-1], top=2, fusion=rule)
    assert [h.tile_id for h in tied] == sorted([tile(A, 0, 0).tile_id, tile(A, 64, 0).tile_id])
    assert tied[0].score == tied[1].score


def test_fuse_rules_and_errors() -> None:
    assert fuse([0.2, 0.9, 0.5]) == pytest.approx(0.9)
    assert fuse([0.2, 0.9, 0.5], "mean") == pytest.approx(1.6 / 3)
    assert fuse([0.2, 0.9, 0.5], "top2") == pytest.approx(0.7)
    assert fuse([0.4], "top2") == pytest.approx(0.4)
    with pytest.raises(QueryError, match="unknown fusion"):
        fuse([0.1], "median")
    with pytest.raises(ValueError):
        fuse([], "max")


def test_hit_fields(corpus) -> None:
    idx, vecs, _ = corpus
    ref = tile(B, 128, 64)
    h = idx.search(vecs[ref.tile_id][0], top=1)[0]
    assert (h.rank, h.tile_id, h.raster_id, h.raster, h.raster_name) == (1, ref.tile_id, "rb", "/data/b.tif", "b")
    assert h.window == PixelWindow(128, 64, 64, 64) and h.scale == 1 and h.score == pytest.approx(1.0, abs=1e-5)
    assert h.footprint == ref.footprint_geojson() and "UTM zone 18N" in h.crs
    d = h.to_dict()
    assert d["window"] == {"col_off": 128, "row_off": 64, "width": 64, "height": 64}
    n = idx.search(vecs[tile(NOCRS, 0, 0).tile_id][0], top=1)[0]
    assert n.crs is None and n.raster_id == "rn"


def test_filters_rasters_min_score_and_widening(corpus) -> None:
    idx, vecs, rng = corpus
    q = unit(rng, 1)[0]
    only_n = idx.search(q, top=10, raster_ids=["rn"])  # 20 tiles of 300: exact path
    assert [h.tile_id for h in only_n] == [t for t, _ in _brute({k: v for k, v in vecs.items() if k.startswith("rn:")}, q, "max", 10)]
    only_b = idx.search(q, top=50, raster_ids=["rb"], oversample=1)
    assert len(only_b) == 50 and {h.raster_id for h in only_b} == {"rb"}
    assert idx.search(q, top=5, raster_ids=["unknown"]) == []
    # Widening: a tiny oversample still returns `top` tiles.
    assert len(idx.search(q, top=120, oversample=1)) == 120
    floor = idx.search(q, top=40)[-1].score
    hits = idx.search(q, top=300, min_score=floor)
    assert len(hits) == 40 and all(h.score >= floor for h in hits)
    with pytest.raises(QueryError):
        idx.search(q, fusion="median")
    with pytest.raises(QueryError):
        idx.search(q, top=0)
    with pytest.raises(QueryError):
        idx.search(np.zeros(DIM))


def test_bbox_filter_reprojects_and_excludes_rasters_without_crs(corpus) -> None:
    from rasterio.warp import transform_bounds

    idx, vecs, rng = corpus
    q = unit(rng, 1)[0]
    # Tiles of A between columns 0..127 and rows 0..127 (10 m pixels), as a lon/lat box.
    x0, y1 = A.x0, A.y0
    utm_box = (x0 + 10, y1 - 1270, x0 + 1270, y1 - 10)
    ll_box = transform_bounds("EPSG:32618", "EPSG:4326", *utm_box)
    hits = idx.search(q, top=50, bbox=ll_box, bbox_crs="EPSG:4326")
    assert hits and {h.raster_id for h in hits} == {"ra"}
    assert {(h.window.col_off, h.window.row_off) for h in hits} == {(0, 0), (64, 0), (0, 64), (64, 64)}
    same = idx.search(q, top=50, bbox=utm_box, bbox_crs="EPSG:32618")
    assert [h.tile_id for h in same] == [h.tile_id for h in hits]
    # No CRS given: the box is in each raster's own coordinates (pixels for the raster without CRS).
    px = idx.search(q, top=50, bbox=(0, 0, 10, 10))
    assert {h.raster_id for h in px} == {"rn"} and len(px) == 1
    with pytest.raises(QueryError, match="CRS"):
        idx.search(q, bbox=ll_box, bbox_crs="EPSG:99999999")
    with pytest.raises(QueryError, match="xmin"):
        idx.search(q, bbox=(5, 5, 1, 1), bbox_crs="EPSG:4326")


def test_overlap_suppression_across_scales(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    base = unit(rng, 1)[0]
    with SearchIndex.open(str(tmp_path / "idx"), create=True, embedder_fingerprint="e", dim=DIM) as idx:
        idx.upsert_raster(A, "c", {})
        small = tile(A, 0, 0, 64)
        big = tile(A, 0, 0, 128, scale=2)  # contains `small`
        side = tile(A, 32, 0, 64)  # IoU 1/3 with small, but half inside: containment 0.5 -> kept
        far = tile(A, 512, 512, 64)

        def near(s: float) -> np.ndarray:
            v = base + s * unit(rng, 1)[0]
            return (v / np.linalg.norm(v))[None, :]

        items = [(small, variants(small.tile_id, 1), near(0.05)), (big, variants(big.tile_id, 1), near(0.2)),
                 (side, variants(side.tile_id, 1), near(0.3)), (far, variants(far.tile_id, 1), near(0.6))]
        idx.add_tiles("ra", "c", items)
        plain = [h.tile_id for h in idx.search(base, top=4)]
        assert plain[0] == small.tile_id and len(plain) == 4
        kept = [h.tile_id for h in idx.search(base, top=4, suppress_overlaps=True)]
        assert kept == [t for t in plain if t != big.tile_id]
    assert window_overlap(PixelWindow(0, 0, 64, 64), PixelWindow(0, 0, 128, 128)) == 1.0
    assert window_overlap(PixelWindow(0, 0, 64, 64), PixelWindow(64, 0, 64, 64)) == 0.0
