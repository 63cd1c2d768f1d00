"""The local executor: read, caption and embed tiles in this process (today's path, the default)."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator, Optional, Sequence, TypeVar

import numpy as np

from ..errors import Canceled, EngineError
from ..types import CancelFn, CaptionVariant, TileImage, TileRef
from .executor import CaptionedBatch, ExecutorBase

T = TypeVar("T")


def _background(it: Iterator[T], depth: int, name: str) -> Iterator[T]:
    """Run the iterator `it` in a thread, `depth` items ahead of the consumer.

    Errors are handed to the consumer and re-raised there; closing the consumer stops the thread
    (a producer blocked on the full queue is drained) and closes `it` in that thread.
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    sentinel = object()

    def produce() -> None:
        try:
            for item in it:
                if stop.is_set():
                    return
                q.put(item)
                if stop.is_set():  # do not start another (expensive) item for a consumer that left
                    return
            q.put(sentinel)
        except BaseException as exc:  # handed to the consumer, re-raised there
            q.put(exc)
        finally:
            close = getattr(it, "close", None)
            if close:
                close()

    t = threading.Thread(target=produce, name=name, daemon=True)
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
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.05)


def _batches(it: Iterator[TileImage], batch_size: int) -> Iterator[list[TileImage]]:
    batch: list[TileImage] = []
    for tile in it:
        batch.append(tile)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _prefetch(it: Iterator[TileImage], batch_size: int, depth: int = 2) -> Iterator[list[TileImage]]:
    """Read tiles in a background thread so raster I/O overlaps with captioning.

    rasterio releases the GIL while decoding, so this keeps the captioner busy; the queue depth
    bounds memory to a few batches whatever the raster size.
    """
    return _background(_batches(it, batch_size), depth, "tile-reader")


def overlaps_captioning(captioner: Any) -> bool:
    """Caption in a thread of its own when the model runs on an accelerator: the GPU then
    generates batch n+1 while this thread embeds and commits batch n. A CPU captioner would only
    compete with the embedder for the same cores, so it stays inline."""
    return str(getattr(captioner, "device", "cpu")).split(":")[0] in ("cuda", "mps")


def embed_variants(embedder: Any, per_tile: Sequence[list[CaptionVariant]]) -> list[np.ndarray]:
    texts = [v.text() or "(empty)" for variants in per_tile for v in variants]
    vecs = embedder.encode_documents(texts) if texts else np.zeros((0, embedder.dim), np.float32)
    out, i = [], 0
    for variants in per_tile:
        out.append(np.asarray(vecs[i : i + len(variants)], dtype=np.float32))
        i += len(variants)
    return out


class LocalExecutor(ExecutorBase):
    """Tiles are read in a background thread, captioned and embedded here, one captioner batch at a time."""

    def __init__(self, captioner: Any, embedder: Any, overlap: Any = None) -> None:
        super().__init__()
        self.captioner = captioner
        self.embedder = embedder
        #: caption in a thread of its own (None: when the captioner runs on an accelerator)
        self.overlap = overlaps_captioning(captioner) if overlap is None else bool(overlap)

    def run(self, info: Any, params: Any, refs: Sequence[TileRef], is_canceled: CancelFn,
            on_error: Optional[Callable[[TileRef, str], None]] = None,
            on_empty: Optional[Callable[[TileRef], None]] = None) -> Iterator[CaptionedBatch]:
        from ..rasters.tiling import iter_tiles

        cap = self.captioner
        # No local name for the tile generator: the reader thread must hold its only reference, so
        # it is finalised there (rasterio's Env is thread-local; see _background).
        batches = _prefetch(iter_tiles(info, params, refs=list(refs), is_canceled=is_canceled, on_error=on_error,
                                       on_skip=on_empty),
                            cap.batch_size)

        def captioned() -> Iterator[tuple[list[TileImage], list[list[CaptionVariant]]]]:
            for batch in batches:
                if is_canceled():
                    raise Canceled()
                per_tile = cap.caption(batch)
                if len(per_tile) != len(batch):
                    raise EngineError(f"captioner returned {len(per_tile)} results for {len(batch)} tiles")
                yield batch, per_tile

        stage = _background(captioned(), 1, "captioner") if self.overlap else captioned()
        for batch, per_tile in stage:
            if is_canceled():
                raise Canceled()
            vecs = embed_variants(self.embedder, per_tile)
            yield [t.ref for t in batch], per_tile, vecs

    def close(self) -> None:
        close = getattr(self.captioner, "close", None)
        if close:
            close()
