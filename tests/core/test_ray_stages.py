"""The Ray executor's stages without a cluster: what each stage does to a chunk (one caption batch),
called as Ray Data calls them (numpy batches of object columns). Runs where ray is not installed.

A raster with an empty row of tiles and a corrupt block: every chunk comes back, with its captioned
tiles (the local executor's texts and vectors), its empty tiles and its unreadable tile with the
local executor's reason, so the writer records them the same way whichever executor ran."""

from __future__ import annotations

import numpy as np
import pytest
from rasters import holed

from plugin.core.captioners import make_captioner
from plugin.core.indexing.cluster.ray_stages import CaptionStage, EmbedStage, chunk_rows, decode_results, read_tiles
from plugin.core.indexing.local import LocalExecutor
from plugin.core.rasters.raster import open_raster
from plugin.core.rasters.tiling import TilingParams, plan_tiles
from plugin.core.search.searcher import cached_embedder
from tests.core.ray_cluster import as_numpy_batch as _as_numpy  # noqa: E402

PARAMS = TilingParams(tile_size=128)  # 16 tiles: 4 empty (nodata), 1 unreadable, 11 captioned


def test_chunks_carry_captions_empties_and_failures_like_the_local_executor(tmp_path, minilm_path) -> None:
    info = open_raster(holed(tmp_path))
    refs = plan_tiles(info, PARAMS)
    assert len(refs) == 16
    emb = cached_embedder(minilm_path, "cpu")
    # Local executor: the reference.
    cap = make_captioner("spectral", variants=2)
    failed: list = []
    empty: list = []
    local = list(LocalExecutor(cap, emb).run(info, PARAMS, refs, lambda: False,
                                             on_error=lambda r, why: failed.append((r.tile_id, why)),
                                             on_empty=lambda r: empty.append(r.tile_id)))
    want = {r.tile_id: ([v.text() for v in vs], e) for b in local for r, vs, e in zip(*b)}
    assert (len(want), len(empty), len(failed)) == (11, 4, 1)
    # The stages, a chunk of 3 tiles at a time (6 chunks: the last one short).
    rows = chunk_rows(info.raster_id, refs, 3)
    assert len(rows) == 6
    captioner = CaptionStage("spectral", {"variants": 2}, expected_fingerprint=cap.fingerprint)
    embedder = EmbedStage(minilm_path, "cpu", expected_fingerprint=emb.fingerprint)
    chunks = []
    for row in rows:
        batch = _as_numpy({k: [v] for k, v in row.items()})
        read = read_tiles(batch, infos={info.raster_id: info}, params=PARAMS)
        chunks += decode_results(embedder(_as_numpy(captioner(_as_numpy(read)))), emb.dim)
    assert [c.raster_id for c in chunks] == [info.raster_id] * 6
    got = {r.tile_id: ([v.text() for v in vs], e) for c in chunks for r, vs, e in zip(c.refs, c.variants, c.vecs)}
    assert sorted(got) == sorted(want)
    for tid, (texts, vecs) in want.items():
        assert got[tid][0] == texts
        np.testing.assert_allclose(got[tid][1], vecs, atol=1e-5)
    assert sorted(r.tile_id for c in chunks for r in c.empty) == sorted(empty)
    assert [(r.tile_id, why) for c in chunks for r, why in c.failed] == failed
    assert "cannot be read" in failed[0][1]
    # Chunk i is the plan's tiles 3i..3i+2, whatever became of them (the writer commits in plan order).
    order = [r.tile_id for r in refs]
    for i, c in enumerate(chunks):
        assert {r.tile_id for r in [*c.refs, *c.empty, *(f[0] for f in c.failed)]} == set(order[3 * i : 3 * i + 3])
    # A chunk whose tiles are all empty still comes back (nothing to caption or embed).
    assert any(not c.refs and c.empty for c in chunks)


def test_a_node_with_another_captioner_refuses_to_caption() -> None:
    with pytest.raises(Exception, match="the job planned with 'other'"):
        CaptionStage("spectral", {"variants": 2}, expected_fingerprint="other")
