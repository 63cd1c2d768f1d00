"""Row-seeded sampling (captioners/vlm_batching.RowSampler): a sampled row's token depends on its seed
and step only, greedy rows are untouched, and the draws follow the warped distribution."""

from __future__ import annotations

import math

import torch

from plugin.core.captioners.vlm_batching import RowSampler, row_seed, uniform


def _tokens(sampler: RowSampler, scores: torch.Tensor, steps: int) -> list[list[int]]:
    out = []
    for _ in range(steps):
        warped = sampler(None, scores)
        out.append([int(r.argmax()) for r in warped])
    return out


def test_a_row_draws_the_same_tokens_alone_and_in_any_batch() -> None:
    g = torch.Generator().manual_seed(0)
    row = torch.randn(1, 50, generator=g)
    others = torch.randn(3, 50, generator=g)
    alone = _tokens(RowSampler([7], 1.0, 0.95, 50), row, 6)
    batch = torch.cat([others[:1], row, others[1:]])
    inside = _tokens(RowSampler([None, 7, 8, 9], 1.0, 0.95, 50), batch, 6)
    assert [t[0] for t in alone] == [t[1] for t in inside]
    assert all(t[0] == int(others[0].argmax()) for t in inside), "a greedy row keeps its argmax"
    other_seed = _tokens(RowSampler([8], 1.0, 0.95, 50), row, 6)
    assert [t[0] for t in other_seed] != [t[0] for t in alone], "another seed, another draw"


def test_greedy_rows_are_returned_untouched_and_sampled_rows_keep_one_token() -> None:
    scores = torch.randn(3, 20)
    out = RowSampler([None, 3, None], 0.7, 0.9, 0)(None, scores)
    assert torch.equal(out[0], scores[0]) and torch.equal(out[2], scores[2])
    assert int(torch.isfinite(out[1]).sum()) == 1
    assert RowSampler([None, None], 1.0, 1.0)(None, scores[:2]) is not None


def test_top_p_and_top_k_limit_the_choice_and_the_draws_follow_the_probabilities() -> None:
    scores = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    tiny_p = {int(RowSampler([s], 1.0, 0.01)(None, scores)[0].argmax()) for s in range(50)}
    assert tiny_p == {0}
    top2 = {int(RowSampler([s], 1.0, 1.0, 2)(None, scores)[0].argmax()) for s in range(300)}
    assert top2 == {0, 1}
    n = 4000
    picks = [int(RowSampler([row_seed(0, f"tile{i}", 1)], 1.0, 1.0)(None, scores)[0].argmax()) for i in range(n)]
    share = sum(p == 0 for p in picks) / n
    assert abs(share - 0.6) < 4 * math.sqrt(0.6 * 0.4 / n), share


def test_uniform_numbers_are_in_range_and_differ_by_seed_and_step() -> None:
    seeds = torch.arange(1000, dtype=torch.int64) * 7919
    u0, u1 = uniform(seeds, 0), uniform(seeds, 1)
    assert bool(((u0 > 0) & (u0 < 1)).all()) and abs(float(u0.mean()) - 0.5) < 0.05
    assert not torch.equal(u0, u1) and len(set(u0.tolist())) > 990
