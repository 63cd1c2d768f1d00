"""Recall metrics against hand-computed expectations (ties, all-miss images, fusion rules)."""

from __future__ import annotations

import numpy as np
import pytest

from plugin.core.errors import EngineError
from plugin.core.eval.metrics import (
    fuse_variant_scores,
    rank_image_to_text,
    rank_text_to_image,
    recall_metrics,
)


def test_small_matrix_with_ties_matches_hand_computation():
    # rows: images 0..2; columns: queries q0..q5, two per image (q0,q1 -> 0; q2,q3 -> 1; q4,q5 -> 2)
    s = np.array(
        [
            [0.9, 0.2, 0.5, 0.1, 0.3, 0.3],
            [0.5, 0.8, 0.7, 0.6, 0.3, 0.3],
            [0.1, 0.3, 0.7, 0.2, 0.3, 0.3],
        ]
    )
    owner = np.array([0, 0, 1, 1, 2, 2])
    # t2i by hand: q0 top; q1 last; q2 ties img1/img2 at 0.7 -> lower index (img1) first -> rank 0;
    # q3 top; q4, q5: all three images tie at 0.3 -> img2 is third (rank 2).
    assert rank_text_to_image(s, owner).tolist() == [0, 2, 0, 0, 2, 2]
    # i2t by hand: img0 -> q0 first; img1 -> q1 (0.8) then own q2 -> 1; img2 -> q2 (0.7), then the
    # 0.3 tie q1, q4, q5 in index order -> own q4 at rank 2.
    assert rank_image_to_text(s, owner).tolist() == [0, 1, 2]
    m = recall_metrics(s, owner)
    assert m.t2i_r1 == pytest.approx(50.0)
    assert (m.t2i_r5, m.t2i_r10) == (100.0, 100.0)
    assert m.i2t_r1 == pytest.approx(100 / 3)
    assert (m.i2t_r5, m.i2t_r10) == (100.0, 100.0)
    assert m.mR == pytest.approx((50 + 100 + 100 + 100 / 3 + 100 + 100) / 6)
    assert m.t2i_mean == pytest.approx(250 / 3)
    assert m.i2t_mean == pytest.approx((100 / 3 + 200) / 3)
    assert (m.gallery_images, m.query_captions) == (3, 6)


def test_text_to_image_recall_at_5_and_10():
    # 12 images, query j belongs to image j; column j gets exactly r[j] images scored above its own.
    r = [0, 0, 0, 1, 2, 4, 5, 6, 9, 10, 11, 11]
    n = len(r)
    s = np.full((n, n), 0.1)
    for j, higher in enumerate(r):
        s[j, j] = 0.5
        others = [i for i in range(n) if i != j][:higher]
        s[others, j] = 0.9
    assert rank_text_to_image(s, np.arange(n)).tolist() == r
    m = recall_metrics(s, np.arange(n))
    assert (m.t2i_r1, m.t2i_r5, m.t2i_r10) == pytest.approx((25.0, 50.0, 75.0))


def test_image_whose_captions_all_miss():
    # 3 images x 5 query captions; image 2's captions all score below every foreign caption.
    owner = np.repeat(np.arange(3), 5)
    s = np.zeros((3, 15))
    s[0, :5] = [0.2, 0.3, 0.1, 0.95, 0.4]  # own q3 is the best of the row -> rank 0
    s[0, 5:] = 0.05
    s[1, :] = 0.1
    s[1, [0, 1, 2, 3, 4, 10]] = 0.9  # six foreign captions first
    s[1, 5:10] = [0.8, 0.7, 0.6, 0.5, 0.4]  # own best -> rank 6
    s[2, :10] = 0.5
    s[2, 10:] = 0.0  # own captions rank 10..14: a miss at every K
    assert rank_image_to_text(s, owner).tolist() == [0, 6, 10]
    m = recall_metrics(s, owner)
    assert (m.i2t_r1, m.i2t_r5, m.i2t_r10) == pytest.approx((100 / 3, 100 / 3, 200 / 3))


def test_ties_from_float_noise_are_exact_ties():
    # the same text scored twice can differ in the last bits; rounding makes it a tie -> lower index wins
    s = np.array([[0.7000000001, 0.1], [0.7, 0.2]])
    assert rank_text_to_image(s, np.array([1, 1])).tolist() == [1, 0]


def test_image_without_query_counts_as_miss():
    s = np.array([[0.9, 0.8], [0.1, 0.2], [0.5, 0.5]])
    m = recall_metrics(s, np.array([0, 1]))
    assert m.gallery_images == 3
    # image 2 has no query: i2t ranks are [0, 0, miss] -> 2/3 at every K, even K > number of queries
    assert rank_image_to_text(s, np.array([0, 1]))[2] > 10
    assert (m.i2t_r1, m.i2t_r5, m.i2t_r10) == pytest.approx((200 / 3, 200 / 3, 200 / 3))


def test_fusion_rules_by_hand():
    # 2 queries x 6 variants; owners unordered: image 0 has 3 variants, image 1 one, image 2 two, image 3 none
    scores = np.array([[0.9, 0.1, 0.5, 0.3, 0.7, 0.2], [0.0, 0.4, 0.4, 0.8, 0.6, 1.0]], dtype=np.float32)
    owner = np.array([0, 2, 0, 1, 0, 2])
    mx = fuse_variant_scores(scores, owner, 4, "max")
    mean = fuse_variant_scores(scores, owner, 4, "mean")
    top2 = fuse_variant_scores(scores, owner, 4, "top2")
    np.testing.assert_allclose(mx[:, :3], [[0.9, 0.3, 0.2], [0.6, 0.8, 1.0]], rtol=1e-6)
    np.testing.assert_allclose(mean[:, :3], [[0.7, 0.3, 0.15], [1.0 / 3, 0.8, 0.7]], rtol=1e-6)
    np.testing.assert_allclose(top2[:, :3], [[0.8, 0.3, 0.15], [0.5, 0.8, 0.7]], rtol=1e-6)
    assert np.isneginf(mx[:, 3]).all() and np.isneginf(mean[:, 3]).all() and np.isneginf(top2[:, 3]).all()


def test_bad_input_is_a_clear_error():
    with pytest.raises(EngineError, match="fusion 'median'"):
        fuse_variant_scores(np.zeros((1, 1)), np.zeros(1, dtype=int), 1, "median")
    with pytest.raises(EngineError, match="empty"):
        recall_metrics(np.zeros((0, 0)), np.zeros(0, dtype=int))


def test_large_matrix_matches_argsort_reference():
    # the vectorised ranks equal a literal stable argsort (score desc, index asc) on random data with ties
    rng = np.random.default_rng(0)
    s = np.round(rng.random((40, 200)), 2)
    owner = rng.integers(0, 40, 200)
    ref_t2i = [int(np.where(np.lexsort((np.arange(40), -s[:, q])) == owner[q])[0][0]) for q in range(200)]
    assert rank_text_to_image(s, owner).tolist() == ref_t2i
    ref_i2t = []
    for i in range(40):
        order = np.lexsort((np.arange(200), -s[i]))
        pos = [int(np.where(order == q)[0][0]) for q in np.flatnonzero(owner == i)]
        ref_i2t.append(min(pos) if pos else np.iinfo(np.int64).max)
    assert rank_image_to_text(s, owner).tolist() == ref_i2t
