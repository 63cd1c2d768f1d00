"""The local executor: read, caption and embed tiles in this process (today's path, the default)."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from ..errors import Canceled, EngineError
from ..types import CancelFn, CaptionVariant, TileImage, TileRef
from .executor import CaptionedBatch


def _prefetch(it: Iterator[TileImage], batch_size: int, depth: int = 2) -> Iterator[list[TileImage]]:
    """Read tiles in a background thread so raster I/O overlaps with captioning.

    rasterio releases the GIL while decoding, so this keeps the captioner busy; the queue depth
    bounds memory to a few batches whatever the raster size.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    sentinel = object()

    def reader() -> None:
        batch: list[TileImage] = []
        try:
            for tile in it:
                if stop.is_set():
                    return
                batch.append(tile)
                if len(batch) >= batch_size:
                    q.put(batch)
                    batch = []
            if batch:
                q.put(batch)
            q.put(sentinel)
        except BaseException as exc:  # handed to the consumer, re-raised there
            q.put(exc)

    t = threading.Thread(target=reader, name="tile-reader", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is sentinel:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a reader waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.05)


def _embed_variants(embedder: Any, per_tile: Sequence[list[CaptionVariant]]) -> list[np.ndarray]:
    texts = [v.text() or "(empty)" for variants in per_tile for v in variants]
    vecs = embedder.encode_documents(texts) if texts else np.zeros((0, embedder.dim), np.float32)
    out, i = [], 0
    for variants in per_tile:
        out.append(np.asarray(vecs[i : i + len(variants)], dtype=np.float32))
        i += len(variants)
    return out


class LocalExecutor:
    """Tiles are read in a background thread, captioned and embedded here, one captioner batch at a time."""

    def __init__(self, captioner: Any, embedder: Any) -> None:
        self.captioner = captioner
        self.embedder = embedder

    def run(self, info: Any, params: Any, refs: Sequence[TileRef], is_canceled: CancelFn,
            on_empty: Optional[Callable[[TileRef], None]] = None) -> Iterator[CaptionedBatch]:
        from ..tiling import iter_tiles

        cap = self.captioner
        tiles = iter_tiles(info, params, refs=list(refs), is_canceled=is_canceled, on_skip=on_empty)
        for batch in _prefetch(tiles, cap.batch_size):
            if is_canceled():
                raise Canceled()
            per_tile = cap.caption(batch)
            if len(per_tile) != len(batch):
                raise EngineError(f"captioner returned {len(per_tile)} results for {len(batch)} tiles")
            vecs = _embed_variants(self.embedder, per_tile)
            yield [t.ref for t in batch], per_tile, vecs

    def close(self) -> None:
        close = getattr(self.captioner, "close", None)
        if close:
            close()
