"""The local executor's caption stage: captioning in a thread of its own (what a GPU captioner
gets, so generation overlaps embedding and the commit) gives exactly the inline results, passes
errors on, and leaves no thread behind when the consumer stops early."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from rasters import uint16

from plugin.core.captioners import make_captioner
from plugin.core.indexing.local import LocalExecutor, _background, overlaps_captioning
from plugin.core.rasters.raster import open_raster
from plugin.core.rasters.tiling import TilingParams, plan_tiles
from plugin.core.search.searcher import cached_embedder

PARAMS = TilingParams(tile_size=64)


@pytest.fixture(scope="module")
def job(tmp_path_factory, minilm_path):
    info = open_raster(uint16(str(tmp_path_factory.mktemp("ex"))))
    cap = make_captioner("spectral", variants=2)
    cap.batch_size = 3  # several batches, so the stages really run ahead of each other
    return info, plan_tiles(info, PARAMS), cap, cached_embedder(minilm_path, "cpu")


def _run(ex: LocalExecutor, info, refs, is_canceled=lambda: False):
    out = list(ex.run(info, PARAMS, refs, is_canceled))
    refs_out = [r.tile_id for b in out for r in b[0]]
    texts = [[v.text() for v in vs] for b in out for vs in b[1]]
    vecs = np.concatenate([np.stack(b[2]) for b in out])
    return refs_out, texts, vecs


_BEFORE: set[threading.Thread] = set()


@pytest.fixture(autouse=True)
def _own_threads():
    """Only threads this test starts count (an earlier test's reader may still be winding down)."""
    _BEFORE.clear()
    _BEFORE.update(threading.enumerate())


def _threads(name: str, wait_s: float = 2.0) -> list[threading.Thread]:
    deadline = time.monotonic() + wait_s
    while True:
        alive = [t for t in threading.enumerate() if t.name == name and t not in _BEFORE]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)


def test_threaded_caption_stage_equals_inline(job):
    info, refs, cap, emb = job
    assert not overlaps_captioning(cap) and LocalExecutor(cap, emb).overlap is False  # CPU: inline
    inline = _run(LocalExecutor(cap, emb, overlap=False), info, refs)
    threaded = _run(LocalExecutor(cap, emb, overlap=True), info, refs)
    assert len(inline[0]) == len(refs) > 6
    assert inline[0] == threaded[0] == [r.tile_id for r in refs]
    assert inline[1] == threaded[1]
    np.testing.assert_allclose(inline[2], threaded[2], atol=1e-6)
    assert not _threads("captioner") and not _threads("tile-reader")


def test_caption_errors_reach_the_consumer(job):
    info, refs, cap, emb = job

    class Broken:
        batch_size, device = 2, "cuda"

        def caption(self, tiles):
            raise RuntimeError("boom in the caption thread")

    ex = LocalExecutor(Broken(), emb)
    assert ex.overlap is True  # an accelerator captioner gets the thread
    with pytest.raises(RuntimeError, match="boom in the caption thread"):
        list(ex.run(info, PARAMS, refs, lambda: False))
    assert not _threads("captioner")


def test_consumer_leaving_early_stops_the_stages(job):
    info, refs, cap, emb = job
    calls = []

    class Counting:
        batch_size, device = 2, "cuda"

        def caption(self, tiles):
            calls.append(len(tiles))
            return cap.caption(tiles)

    gen = LocalExecutor(Counting(), emb).run(info, PARAMS, refs, lambda: False)
    next(gen)
    gen.close()
    assert not _threads("captioner") and not _threads("tile-reader")
    # At most the batch being consumed, one queued and one in flight were captioned, not the whole plan.
    assert len(calls) <= 3 < len(refs) // 2


def test_background_closes_its_source():
    closed = []

    def source():
        try:
            yield from range(100)
        finally:
            closed.append(True)

    it = _background(source(), 1, "t-bg")
    assert next(it) == 0
    it.close()
    assert closed == [True] and not _threads("t-bg")
