"""Negative terms and captions that negate them: "beach -buildings" must not demote "a beach with no
buildings" (MiniLM scores it ~0.5 against "buildings", far above the threshold), and must still
demote a beach that has buildings. Unit cases for the lexical check, then the real search with the
packaged MiniLM on a small index."""

from __future__ import annotations

import pytest

from plugin.core.search.negation import NEGATIVE_THRESHOLD, fold, negates
from plugin.core.search.searcher import Searcher, cached_embedder
from plugin.core.store.store import SearchIndex
from plugin.core.types import CaptionVariant
from tests.core.index_helpers import FakeInfo, tile


@pytest.mark.parametrize("caption,term", [
    ("A beach with no buildings.", "buildings"),
    ("A sandy beach without any buildings.", "buildings"),
    ("There are no tall residential buildings on this beach.", "buildings"),
    ("Sand and sea. There are no buildings.", "building"),
    ("A beach; no roads or buildings are visible.", "buildings"),
    ("The shore lacks buildings.", "buildings"),
    ("A field where there isn't a parking lot.", "parking lot"),
    ("No houses, no buildings, only dunes.", "buildings"),
    # near-synonyms (NEAR_SYNONYMS): denying one denies the term naming another
    ("A beach with no houses.", "buildings"),
    ("A sandy coast without any residential areas.", "building"),
    ("There are no buildings on the island.", "houses"),
    ("A field without any trees.", "forest"),
    ("An empty road with no vehicles.", "cars"),
    ("A harbour with no ships.", "boats"),
])
def test_captions_that_deny_the_term(caption: str, term: str) -> None:
    assert negates(caption, term)


@pytest.mark.parametrize("caption,term", [
    ("A beach with buildings along the shore.", "buildings"),
    ("A beach with no trees and many buildings.", "buildings"),  # the negation ends at "and"
    ("No buildings on the beach, but buildings inland.", "buildings"),  # one mention shows them
    ("No trees here. Buildings line the road.", "buildings"),  # another sentence
    ("A beach with no trees, a hotel and apartment buildings.", "buildings"),
    ("A beach next to the open sea.", "buildings"),  # no mention: nothing to negate (meaning decides)
    ("A parking lot with no cars.", "parking lot"),  # the cue negates the cars, after the term
    ("Not far from the river there is a large industrial building.", "building"),  # too far back
    ("No houses, only apartment buildings.", "buildings"),  # a near-synonym denied, the term shown
    ("A beach with no buildings but a few houses.", "buildings"),  # the other way round
    ("A meadow with no forest and scattered trees.", "trees"),
    ("A beach with no houses.", "tall buildings"),  # a phrase: only its own words
    ("A beach with no houses.", "sand"),  # not in the table: the houses are not the sand
    ("A river with no boats.", "water"),  # no loose kin in the table
])
def test_captions_that_show_the_term(caption: str, term: str) -> None:
    assert not negates(caption, term)


def test_near_synonym_table_is_folded_and_disjoint() -> None:
    from plugin.core.search.negation import NEAR_SYNONYMS

    words = [w for g in NEAR_SYNONYMS for w in g]
    assert len(words) == len(set(words)) and all(fold(w) == w for w in words)


def test_plural_folding() -> None:
    assert fold("Buildings") == "building" and fold("ponds") == "pond" and fold("bushes") == "bush"
    assert fold("factories") == "factory" and fold("grass") == "grass" and fold("bus") == "bus"


A = FakeInfo("/data/a.tif", "ra", "a")
TEXTS = [
    "A sandy beach; there are no buildings.",                    # 0: denies buildings (MiniLM 0.43 to them)
    "A beach without any buildings.",                            # 1: denies them too (0.42)
    "A sandy beach lined with hotels and apartment buildings.",  # 2: shows them
    "A sandy beach with no trees and several buildings.",        # 3: shows them (the "no" is the trees')
    "A forest of pine trees on a hillside.",                     # 4: unrelated
    "A beach with no houses.",                                   # 5: denies a near-synonym (0.38 to buildings)
]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> str:
    emb = cached_embedder(None, "cpu")
    folder = str(tmp_path_factory.mktemp("negation") / "idx")
    vecs = emb.encode_documents(TEXTS)
    with SearchIndex.open(folder, create=True, embedder_fingerprint=emb.fingerprint, dim=emb.dim) as idx:
        idx.upsert_raster(A, "c", {})
        idx.add_tiles("ra", "c", [(tile(A, i * 64, 0), [CaptionVariant(t, "", "")], vecs[i : i + 1])
                                  for i, t in enumerate(TEXTS)])
    return folder


@pytest.mark.parametrize("query", ["beach -buildings", "beach without buildings"])
def test_a_caption_saying_no_buildings_is_not_demoted(index_dir: str, query: str) -> None:
    emb = cached_embedder(None, "cpu")
    neg = emb.encode_queries(["buildings"])[0]
    cos = emb.encode_documents(TEXTS) @ neg
    assert min(cos[0], cos[1], cos[5]) >= NEGATIVE_THRESHOLD, "the case the check exists for"
    with Searcher(index_dir, device="cpu") as s:
        hits = s.search(query, top=len(TEXTS), ranker="dense")
    demoted = {h.tile_id for h in hits if "demoted_by" in h.extra}
    ids = [tile(A, i * 64, 0).tile_id for i in range(len(TEXTS))]
    assert demoted == {ids[2], ids[3]}, [(h.caption, h.extra.get("demoted_by")) for h in hits]
    assert [h.tile_id for h in hits][-2:] and {h.tile_id for h in hits[-2:]} == demoted
    assert {h.tile_id for h in hits[:3]} == {ids[0], ids[1], ids[5]}  # the open beaches lead
    by_id = {h.tile_id: h for h in hits}
    assert by_id[ids[2]].extra["demoted_by"] == "buildings"
    assert by_id[ids[2]].extra["negative_score"] == pytest.approx(float(cos[2]), abs=1e-4)
