"""The indexing job and the warm searcher: the two things every front end (CLI, worker, QGIS) runs.

Indexing is incremental and resumable because the store is the only state: a tile is "done" once
its caption variants and their embeddings are committed, so a job killed at any moment simply
finds fewer tiles to do next time. Captions are cached per (tile id, captioner fingerprint), so a
new embedder re-embeds without re-captioning and a captioner that has seen a tile never sees it again.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from .errors import Canceled, EngineError, RasterError
from .searcher import Searcher, cached_embedder, open_index_for
from .types import (
    BandMap,
    CancelFn,
    CaptionVariant,
    ProgressFn,
    RasterSource,
    TileImage,
    TileRef,
    never_canceled,
    no_progress,
)

#: Rewrite the hnsw file at most this often while indexing. Commits are searchable without it
#: (readers replay the store's change log), so it only bounds how much a reader has to replay.
FLUSH_EVERY_S = 30.0
#: ... and never spend more than 1/FLUSH_BUDGET of the job rewriting it (1.6 GB at 1M variants).
FLUSH_BUDGET = 20.0


@dataclass
class IndexReport:
    rasters: list[dict[str, Any]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    canceled: bool = False
    embedder: str = ""
    captioner: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def _resolve_sources(sources: Sequence[RasterSource]) -> list[RasterSource]:
    out = []
    for s in sources:
        p = os.path.abspath(os.path.expanduser(s.path))
        out.append(RasterSource(p, s.band_map, s.name))
    return out


def index_rasters(
    index_dir: str,
    sources: Sequence[RasterSource],
    *,
    captioner: str = "spectral",
    embedder: Optional[str] = None,
    tiling: Optional[Any] = None,
    captioner_options: Optional[dict[str, Any]] = None,
    device: str = "auto",
    remove_missing: bool = False,
    progress: ProgressFn = no_progress,
    is_canceled: CancelFn = never_canceled,
) -> IndexReport:
    """Index `sources` into `index_dir` (created if needed); only what is not done yet is computed."""
    from .captioners import make_captioner
    from .raster import open_raster
    from .tiling import TilingParams, iter_tiles, plan_tiles

    t0 = time.perf_counter()
    params = tiling or TilingParams()
    sources = _resolve_sources(sources)
    report = IndexReport()
    if not sources and not remove_missing:
        raise EngineError("nothing to index: give at least one raster")
    # Open and plan every raster before loading any model, so bad input fails in a second.
    opened, failed_paths = _open_all(sources, params, report, open_raster, plan_tiles)
    if sources and not opened:
        raise RasterError("; ".join(r["error"] for r in report.rasters) or "no raster could be opened")
    progress(0, 0, "loading embedder")
    emb = cached_embedder(embedder, device)
    opts = dict(captioner_options or {})
    opts.setdefault("device", device)
    cap = make_captioner(captioner, **opts)
    report.embedder, report.captioner = emb.fingerprint, cap.fingerprint
    switched = _previous_embedder(index_dir) not in (None, emb.fingerprint)
    idx = open_index_for(index_dir, emb, create=True, allow_new_embedder=True)
    try:
        known = {r["raster_id"]: r for r in idx.raster_rows()}
        if switched:
            # A new embedder dropped every embedding: re-embed the other indexed rasters too, from
            # their cached captions (no re-captioning), so the whole index stays searchable.
            asked = {s.path for s in sources}
            extra = [
                RasterSource(r["path"], _row_band_map(r), r.get("name"))
                for r in known.values()
                if r.get("path") and r["path"] not in asked and os.path.exists(r["path"])
            ]
            opened += _open_all(extra, params, report, open_raster, plan_tiles)[0]
        planned: list[tuple[Any, list[TileRef], set[str]]] = []
        for info, refs in opened:
            # Same file, new content: the old tiles are stale, the new content is indexed afresh.
            for rid, row in known.items():
                if row.get("path") == info.path and rid != info.raster_id and rid not in report.removed:
                    idx.remove_raster(rid)
                    report.removed.append(rid)
            idx.upsert_raster(info, cap.fingerprint, params.to_dict())
            planned.append((info, refs, idx.done_tile_ids(info.raster_id, cap.fingerprint)))
        if remove_missing:
            # Rasters that failed to open this time are kept: nothing indexed is lost to a flaky drive.
            keep = {info.raster_id for info, _ in opened}
            for rid, row in known.items():
                if rid not in keep and row.get("path") not in failed_paths and rid not in report.removed:
                    idx.remove_raster(rid)
                    report.removed.append(rid)
        total = sum(len(refs) - len(done & {r.tile_id for r in refs}) for _, refs, done in planned)
        counter = [0]
        last_flush = [time.monotonic()]
        flush_every = [FLUSH_EVERY_S]

        def step(n: int, msg: str) -> None:
            counter[0] += n
            progress(counter[0], total, msg)
            if time.monotonic() - last_flush[0] > flush_every[0]:
                t = time.monotonic()
                idx.flush()
                last_flush[0] = time.monotonic()
                flush_every[0] = max(FLUSH_EVERY_S, FLUSH_BUDGET * (last_flush[0] - t))

        for info, refs, done in planned:
            entry = _index_one(idx, cap, emb, info, params, refs, done, step, is_canceled, iter_tiles)
            report.rasters.append(entry)
        report.seconds = time.perf_counter() - t0
        progress(total, total, "done")
        return report
    except Canceled:
        report.canceled = True
        raise
    finally:
        try:
            idx.flush()
        finally:
            idx.close()
            close = getattr(cap, "close", None)
            if close:
                close()


def _open_all(sources, params, report, open_raster, plan_tiles) -> tuple[list[tuple[Any, list[TileRef]]], set[str]]:
    """Open and plan each raster; failures go into the report (one line each) instead of stopping the job."""
    opened, failed = [], set()
    for src in sources:
        try:
            info = open_raster(src.path, src.band_map)
            if src.name:
                info = _with_name(info, src.name)
            opened.append((info, plan_tiles(info, params)))
        except EngineError as exc:
            report.rasters.append({"path": src.path, "name": src.name or os.path.basename(src.path), "error": str(exc)})
            failed.add(src.path)
    return opened, failed


def _previous_embedder(index_dir: str) -> Optional[str]:
    """The embedder fingerprint an existing index was built with (None for a new index)."""
    from .store import SearchIndex

    if not os.path.exists(os.path.join(index_dir, "manifest.json")):
        return None
    with SearchIndex.open(index_dir, readonly=True) as idx:
        return str(idx.embedder_fingerprint)


def _row_band_map(row: dict[str, Any]) -> Optional[BandMap]:
    bm = row.get("band_map") or (row.get("info") or {}).get("band_map")
    if isinstance(bm, dict):
        return BandMap(**bm)
    if isinstance(bm, (list, tuple)):
        return BandMap(*bm)
    return BandMap.parse(bm) if bm else None


def _with_name(info: Any, name: str) -> Any:
    from dataclasses import replace

    try:
        return replace(info, name=name)
    except TypeError:
        return info


def _index_one(idx, cap, emb, info, params, refs, done, step, is_canceled, iter_tiles) -> dict[str, Any]:
    rid = info.raster_id
    todo = [r for r in refs if r.tile_id not in done]
    entry = {
        "raster_id": rid, "path": info.path, "name": info.name, "tiles_planned": len(refs),
        "tiles_new": 0, "tiles_cached": 0, "tiles_empty": 0, "variants": 0,
    }
    idx.set_raster_state(rid, "indexing")
    # Captions this captioner already wrote (e.g. before an embedder switch) are only re-embedded.
    cached = idx.cached_variants([r.tile_id for r in todo], cap.fingerprint) if todo else {}
    by_id = {r.tile_id: r for r in todo}
    cached_ids = [t for t in by_id if t in cached]
    for i in range(0, len(cached_ids), 256):
        if is_canceled():
            raise Canceled()
        chunk = cached_ids[i : i + 256]
        variants = [cached[t] for t in chunk]
        vecs = _embed_variants(emb, variants)
        idx.add_tiles(rid, cap.fingerprint, [(by_id[t], v, e) for t, v, e in zip(chunk, variants, vecs)])
        entry["tiles_cached"] += len(chunk)
        entry["variants"] += sum(len(v) for v in variants)
        step(len(chunk), f"{info.name}: re-embedding cached captions")
    need = [r for r in todo if r.tile_id not in cached]
    if need:
        seen = 0
        for batch in _prefetch(iter_tiles(info, params, refs=need, is_canceled=is_canceled), cap.batch_size):
            if is_canceled():
                raise Canceled()
            per_tile = cap.caption(batch)
            if len(per_tile) != len(batch):
                raise EngineError(f"captioner returned {len(per_tile)} results for {len(batch)} tiles")
            vecs = _embed_variants(emb, per_tile)
            idx.add_tiles(rid, cap.fingerprint, [(t.ref, v, e) for t, v, e in zip(batch, per_tile, vecs)])
            seen += len(batch)
            entry["tiles_new"] += len(batch)
            entry["variants"] += sum(len(v) for v in per_tile)
            step(len(batch), f"{info.name}: captioned {entry['tiles_new']} tiles")
        # Tiles the reader skipped as (mostly) nodata still count as progress.
        entry["tiles_empty"] = len(need) - seen
        if entry["tiles_empty"]:
            step(entry["tiles_empty"], f"{info.name}: skipped {entry['tiles_empty']} empty tiles")
    idx.retain_tiles(rid, {r.tile_id for r in refs})
    idx.set_raster_state(rid, "indexed")
    return entry


def remove_rasters(index_dir: str, rasters: Sequence[str]) -> list[str]:
    """Remove rasters (given by path or raster id) from the index; returns the removed ids."""
    from .store import SearchIndex

    removed: list[str] = []
    with SearchIndex.open(index_dir) as idx:
        for key in rasters:
            ids = idx.find_raster_ids(os.path.abspath(key) if os.path.exists(key) else key)
            if not ids:
                ids = idx.find_raster_ids(key)
            if not ids:
                raise EngineError(f"{key!r} is not in the index at {index_dir}")
            for rid in ids:
                idx.remove_raster(rid)
                removed.append(rid)
        idx.flush()
    return removed


def index_info(index_dir: str) -> dict[str, Any]:
    """What the index holds, for `info` and the dock's status line; never raises for a missing index."""
    from .store import SearchIndex

    if not os.path.isdir(index_dir) or not os.path.exists(os.path.join(index_dir, "manifest.json")):
        return {"exists": False, "index_dir": index_dir, "rasters": [], "tiles": 0, "variants": 0}
    with SearchIndex.open(index_dir, readonly=True) as idx:
        stats = dict(idx.stats())
        rows = idx.raster_rows()
    for r in rows:
        r["missing"] = not (r.get("path") and os.path.exists(r["path"]))
    stats.update({"exists": True, "index_dir": index_dir, "rasters": rows})
    return stats


__all__ = ["IndexReport", "RasterSource", "Searcher", "index_info", "index_rasters", "remove_rasters"]
