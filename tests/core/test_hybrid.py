"""Rankers on a small fixed corpus embedded with the real packaged MiniLM, where the right answers
are known: hybrid finds a rare object word dense ranks low, negative terms demote what they name,
search by example returns the example's near-duplicates first and never the example's own ground."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from plugin.core.errors import QueryError
from plugin.core.search.hybrid import bm25_matrix, ranker_scores
from plugin.core.search.query import parse_query
from plugin.core.search.search import NEGATIVE_THRESHOLD
from plugin.core.search.searcher import Searcher, cached_embedder
from plugin.core.store.store import SearchIndex
from plugin.core.types import CaptionVariant
from tests.core.index_helpers import FakeInfo, tile

A = FakeInfo("/data/a.tif", "ra", "a")
B = FakeInfo("/data/b.tif", "rb", "b", x0=500000.0, y0=4200000.0)
#: Tiles of raster A (one caption variant each, laid out on a row of 64 px tiles).
TEXTS_A = [
    "Farmland with green crop fields and irrigation canals; two white storage tanks beside a barn in the south.",
    "An oil refinery with pipes, chimneys and industrial buildings.",
    "A port with stacked containers, cranes and moored ships.",
    "A container terminal with cranes and cargo ships at the quay.",
    "An industrial area with large warehouses and factories.",
    "A water treatment plant with round basins and settling ponds.",
    "A sandy beach next to the open sea with dunes.",
    "A sandy beach lined with hotels and apartment buildings.",
    "A beach with white sand and turquoise water, buildings along the shore.",
    "Green crop fields divided by hedges and a farm road.",
]
#: Raster B: a near-duplicate of A's tile 6 (the dune beach) among unrelated tiles.
TEXTS_B = [
    "A dense forest of conifers on a hillside.",
    "A highway interchange with ramps and bridges.",
    "Sand dunes along a beach beside the open sea.",
    "A parking lot full of cars next to a shopping mall.",
]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> str:
    emb = cached_embedder(None, "cpu")
    folder = str(tmp_path_factory.mktemp("hybrid") / "idx")
    with SearchIndex.open(folder, create=True, embedder_fingerprint=emb.fingerprint, dim=emb.dim) as idx:
        for info, texts in ((A, TEXTS_A), (B, TEXTS_B)):
            idx.upsert_raster(info, "c", {})
            vecs = emb.encode_documents(texts)
            idx.add_tiles(info.raster_id, "c", [(tile(info, i * 64, 0), [CaptionVariant(t, "", "")], vecs[i : i + 1])
                                                for i, t in enumerate(texts)])
        # A coarser tile of A (scale 2) over tiles 6-7: the example's own ground at another scale.
        big = tile(A, 6 * 64, 0, size=128, scale=2)
        idx.add_tiles("ra", "c", [(big, [CaptionVariant("A sandy beach with dunes next to the sea.", "", "")],
                                   emb.encode_documents(["A sandy beach with dunes next to the sea."]))])
    return folder


def _rank_of(hits, tile_id: str) -> int:
    ids = [h.tile_id for h in hits]
    return ids.index(tile_id) + 1 if tile_id in ids else 10**6


def test_hybrid_finds_the_rare_object_word_dense_ranks_low(index_dir: str) -> None:
    tanks = tile(A, 0, 0).tile_id
    with Searcher(index_dir, device="cpu") as s:
        dense = s.search("storage tanks", top=14, ranker="dense")
        hybrid = s.search("storage tanks", top=14, ranker="hybrid")
        lexical = s.search("storage tanks", top=14, ranker="lexical")
        default = s.search("storage tanks", top=14)
    assert _rank_of(dense, tanks) >= 2, "the corpus must be one where dense alone misses"
    assert _rank_of(hybrid, tanks) == 1
    assert [h.tile_id for h in default] == [h.tile_id for h in hybrid]  # hybrid is the default ranker
    assert [h.tile_id for h in lexical] == [tanks]  # only one caption holds either word
    top = hybrid[0]
    assert top.caption.startswith("Farmland") and top.extra["ranker"] == "hybrid"
    assert top.extra["matched_terms"] == ["storage", "tanks"]
    assert "matched_terms" not in dense[0].extra and top.extra["lexical_bonus"] == pytest.approx(0.15)
    # hybrid = cosine + bonus: the tile's score is its cosine plus the full weight (it holds the best bm25)
    d = {h.tile_id: h.score for h in dense}
    assert top.score == pytest.approx(d[tanks] + 0.15, abs=1e-5)
    assert {h.tile_id: h.score for h in hybrid if h.tile_id != tanks} == pytest.approx({k: v for k, v in d.items() if k != tanks})


def test_eval_scores_are_the_search_scores(index_dir: str) -> None:
    """The harness's matrix rule (hybrid.ranker_scores over bm25_matrix) is what search() ranks by."""
    emb = cached_embedder(None, "cpu")
    docs = TEXTS_A + TEXTS_B
    dense = emb.encode_queries(["storage tanks"]) @ emb.encode_documents(docs).T
    scores = ranker_scores(dense, bm25_matrix(docs, ["storage tanks"]), "hybrid")[0]
    with Searcher(index_dir, device="cpu") as s:
        hits = s.search("storage tanks", top=3, ranker="hybrid", rasters=["ra"])
    expect = sorted(range(len(TEXTS_A)), key=lambda i: -scores[i])[:3]
    assert [h.tile_id for h in hits] == [tile(A, i * 64, 0).tile_id for i in expect]
    assert [h.score for h in hits] == pytest.approx([scores[i] for i in expect], abs=1e-5)


@pytest.mark.parametrize("query", ["beach -buildings", "beach without buildings", 'beach -"apartment buildings"'])
def test_negative_terms_demote_what_they_name(index_dir: str, query: str) -> None:
    with Searcher(index_dir, device="cpu") as s:
        plain = s.search("beach", top=15, ranker="dense")
        hits = s.search(query, top=15, ranker="dense")
    hotels = tile(A, 7 * 64, 0).tile_id  # "A sandy beach lined with hotels and apartment buildings."
    assert _rank_of(plain, hotels) <= 5, "without the negative the built-up beach ranks high"
    demoted = [h for h in hits if "demoted_by" in h.extra]
    clean = [h for h in hits if "demoted_by" not in h.extra]
    assert hits == clean + demoted, "demoted tiles rank after all the others"
    assert hotels in {h.tile_id for h in demoted}
    with_word = {h.tile_id for h in plain if "buildings" in h.caption}
    if "apartment" not in query:  # every caption naming buildings is demoted, none of the open beaches
        assert with_word <= {h.tile_id for h in demoted}
    assert not {h.tile_id for h in demoted} & {tile(A, 6 * 64, 0).tile_id, tile(B, 2 * 64, 0).tile_id}
    assert all(h.extra["demoted_by"] == parse_query(query).negatives[0] for h in demoted)
    assert all(h.extra["negative_score"] >= NEGATIVE_THRESHOLD for h in demoted)
    assert [h.tile_id for h in clean] == [h.tile_id for h in plain if h.tile_id not in {d.tile_id for d in demoted}]


def test_query_syntax() -> None:
    assert parse_query("beach -buildings").negatives == ("buildings",)
    assert parse_query("sandy beach -\"parking lot\" without roads, near the sea") == \
        type(parse_query(""))("sandy beach, near the sea", ("parking lot", "roads"))
    assert parse_query("built-up area in the north-west").negatives == ()
    with pytest.raises(QueryError, match="only excludes"):
        parse_query("-buildings")


def test_search_by_example_returns_near_duplicates_first(index_dir: str) -> None:
    example = tile(A, 6 * 64, 0)
    with Searcher(index_dir, device="cpu") as s:
        hits = s.search("", top=5, like="/data/a.tif:400,10")  # a pixel inside A's tile 6 (finest scale)
        coarse = s.search("", top=5, like="a:400,10,2")
        with pytest.raises(QueryError, match="no indexed tile"):
            s.search("", like="a:5000,10")
        with pytest.raises(QueryError, match="RASTER:COL,ROW"):
            s.search("", like="a:400")
    ids = [h.tile_id for h in hits]
    assert ids[0] == tile(B, 2 * 64, 0).tile_id, "the dune beach of raster B is the near-duplicate"
    big = tile(A, 6 * 64, 0, size=128, scale=2).tile_id
    assert example.tile_id not in ids and big not in ids, "the example's own ground never comes back"
    assert tile(A, 7 * 64, 0).tile_id in ids  # a same-scale neighbour is a look-alike, not the same ground
    assert all(h.extra["like"] == example.tile_id for h in hits)
    assert np.all(np.diff([h.score for h in hits]) <= 1e-9)
    assert coarse[0].extra["like"] == big and tile(A, 6 * 64, 0).tile_id not in [h.tile_id for h in coarse]


def test_eval_harness_rankers(tmp_path: Path) -> None:
    """`eval --ranker`: one result per ranker; hybrid is the cosine plus the max-normalised bm25 bonus."""
    from plugin.core.eval.datasets import load_dataset
    from plugin.core.eval.metrics import fuse_variant_scores, recall_metrics
    from plugin.core.eval.runner import VectorCache, captions_only_split, run_captions_only
    from tests.core.test_eval_datasets import write_precomp

    ds = load_dataset(write_precomp(tmp_path))
    emb = cached_embedder(None, "cpu")
    res = run_captions_only(ds, VectorCache(emb), ks=(1,), rankers=("dense", "lexical", "hybrid"), lexical_weight=0.3)
    assert [(r.config["ranker"], r.config.get("lexical_weight")) for r in res] == [
        ("dense", None), ("lexical", None), ("hybrid", 0.3)]
    v_txt, v_img, q_txt, q_img = captions_only_split(ds, 1)
    dense = emb.encode_queries(q_txt) @ emb.encode_documents(v_txt).T
    bm25 = bm25_matrix(v_txt, q_txt)
    assert (bm25 > 0).any() and (bm25 == 0).any()
    for r in res:
        s = ranker_scores(dense, bm25, r.config["ranker"], 0.3)
        expect = recall_metrics(fuse_variant_scores(s, v_img, len(ds.images), "max").T, q_img)
        assert r.metrics.to_dict() == pytest.approx(expect.to_dict())


def test_cli_search_like_and_why_it_matched(index_dir: str) -> None:
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "plugin", "search", "--index", index_dir, "--device", "cpu", *args],
                              cwd=root, env=dict(os.environ, PYTHONPATH=str(root)), capture_output=True, text=True,
                              timeout=300)

    like = cli("--top", "2", "--format", "json", "--like", "a:400,10")
    assert like.returncode == 0, like.stderr
    hits = json.loads(like.stdout)
    assert hits[0]["tile_id"] == tile(B, 2 * 64, 0).tile_id and hits[0]["extra"]["like"] == tile(A, 6 * 64, 0).tile_id
    table = cli("--top", "1", "storage tanks -refinery")
    assert table.returncode == 0, table.stderr
    assert "Farmland" in table.stdout and "[matched: storage, tanks]" in table.stdout
    both = cli("--like", "a:400,10", "beach")
    assert both.returncode != 0 and "not both" in both.stderr
