"""The single writer: commits what the executor yields, re-embeds cached captions, paces hnsw rewrites.

Only this process writes the store, whatever executor produced the batches, so a job killed at any
moment leaves whole tiles committed and the next run plans only what is missing.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from ..errors import Canceled, CaptionFallbackError
from ..report_lines import fallback_line
from ..types import ProgressFn
from .local import embed_variants

#: Rewrite the hnsw file at most this often while indexing. Commits are searchable without it
#: (readers replay the store's change log), so it only bounds how much a reader has to replay.
FLUSH_EVERY_S = 30.0
#: ... and never spend more than 1/FLUSH_BUDGET of the job rewriting it (1.6 GB at 1M variants).
FLUSH_BUDGET = 20.0
#: Stop the job once more than this share of caption answers fell back to spectral captions ...
FALLBACK_STOP_SHARE = 0.5
#: ... judged after at least this many answers (and at the end of each raster, whatever the count).
MIN_ANSWERS_TO_JUDGE = 20


def make_step(idx: Any, total: int, progress: ProgressFn) -> Callable[..., None]:
    """Progress callback for the job that also rewrites the hnsw file now and then.

    `step(n, msg, may_flush=False)` may come from the tile-reader thread (empty tiles): it only
    counts and reports; the hnsw file is rewritten from the writer's thread only."""
    counter = [0]
    last_flush = [time.monotonic()]
    flush_every = [FLUSH_EVERY_S]
    lock = threading.Lock()

    def step(n: int, msg: str, may_flush: bool = True) -> None:
        with lock:
            counter[0] += n
            done = counter[0]
        progress(done, total, msg)
        if may_flush and time.monotonic() - last_flush[0] > flush_every[0]:
            t = time.monotonic()
            idx.flush()
            last_flush[0] = time.monotonic()
            flush_every[0] = max(FLUSH_EVERY_S, FLUSH_BUDGET * (last_flush[0] - t))

    return step


def index_one(idx, cap, emb, info, params, refs, done, step, is_canceled, executor) -> dict[str, Any]:
    rid = info.raster_id
    known_empty = idx.empty_tile_ids(rid, params.min_valid_fraction)
    todo = [r for r in refs if r.tile_id not in done]
    entry: dict[str, Any] = {
        "raster_id": rid, "path": info.path, "name": info.name, "tiles_planned": len(refs),
        "tiles_new": 0, "tiles_cached": 0, "tiles_empty": 0, "variants": 0, "tiles_failed": 0,
        "tiles_fallback": 0, "fallback_reason": "", "tiles_retired": 0,
    }
    idx.set_raster_state(rid, "indexing")
    # Tiles an earlier run found empty are not read again (the raster id pins the content).
    skip = [r for r in todo if r.tile_id in known_empty]
    if skip:
        entry["tiles_empty"] += len(skip)
        step(len(skip), f"{info.name}: {len(skip)} empty tiles (known)")
    todo = [r for r in todo if r.tile_id not in known_empty]
    # Captions this captioner already wrote (before an embedder switch, or in another tiling that
    # had the same tile) are only re-embedded.
    cached = idx.cached_variants([r.tile_id for r in todo], cap.fingerprint) if todo else {}
    by_id = {r.tile_id: r for r in todo}
    cached_ids = [t for t in by_id if t in cached]
    for i in range(0, len(cached_ids), 256):
        if is_canceled():
            raise Canceled()
        chunk = cached_ids[i : i + 256]
        variants = [cached[t] for t in chunk]
        vecs = embed_variants(emb, variants)
        idx.add_tiles(rid, cap.fingerprint, [(by_id[t], v, e) for t, v, e in zip(chunk, variants, vecs)])
        entry["tiles_cached"] += len(chunk)
        entry["variants"] += sum(len(v) for v in variants)
        step(len(chunk), f"{info.name}: re-embedding cached captions")
    need = [r for r in todo if r.tile_id not in cached]
    if need:
        empty: list[str] = []

        def on_empty(ref: Any) -> None:  # reader thread: count and report only
            empty.append(ref.tile_id)
            step(1, f"{info.name}: skipping empty tiles", may_flush=False)

        answers = fell_back = 0
        failed: list[tuple[Any, str]] = []  # appended by the tile reader (list.append is atomic)
        for batch_refs, per_tile, vecs in executor.run(info, params, need, is_canceled,
                                                       on_error=lambda ref, why: failed.append((ref, why)),
                                                       on_empty=on_empty):
            idx.add_tiles(rid, cap.fingerprint, list(zip(batch_refs, per_tile, vecs)))
            entry["tiles_new"] += len(batch_refs)
            entry["variants"] += sum(len(v) for v in per_tile)
            answers += sum(len(v) for v in per_tile)
            for variants in per_tile:
                reasons = [v.fallback for v in variants if v.fallback]
                fell_back += len(reasons)
                if reasons:
                    entry["tiles_fallback"] += 1
                    entry["fallback_reason"] = entry["fallback_reason"] or reasons[0]
            step(len(batch_refs), f"{info.name}: captioned {entry['tiles_new']} tiles")
            if answers >= MIN_ANSWERS_TO_JUDGE and fell_back > FALLBACK_STOP_SHARE * answers:
                _stop_on_fallbacks(entry)
        n_empty = len(need) - entry["tiles_new"] - len(failed)
        if empty:
            idx.mark_empty(rid, empty, params.min_valid_fraction)
        if n_empty > len(empty):  # an executor that does not report empties: count them now
            step(n_empty - len(empty), f"{info.name}: skipped {n_empty} empty tiles")
        entry["tiles_empty"] += n_empty
        if failed:
            step(len(failed), f"{info.name}: {len(failed)} tiles could not be read")
            record_failures(entry, failed)
        if answers and fell_back > FALLBACK_STOP_SHARE * answers:
            _stop_on_fallbacks(entry)
    entry["tiles_retired"] = idx.retain_tiles(rid, {r.tile_id for r in refs})
    # A raster with unreadable tiles stays "indexing": it is searchable, shown as unfinished, and
    # the next run (Update) reads exactly those tiles again (they were never committed).
    idx.set_raster_state(rid, "indexing" if entry.get("tiles_failed") else "indexed")
    return entry


def _stop_on_fallbacks(entry: dict[str, Any]) -> None:
    raise CaptionFallbackError(
        f"{entry['name']}: {fallback_line(entry).split(' (')[0]}; stopped because most answers failed -- check that the"
        " model can see images and answers in its message content (what was done is kept)"
    )


#: How many failed tiles a report lists one by one (all are counted).
MAX_LISTED_FAILURES = 20


def record_failures(entry: dict[str, Any], failed: list[tuple[Any, str]]) -> None:
    """Count failed tiles in the raster's report entry and list the first few with their reason."""
    entry["tiles_failed"] = entry.get("tiles_failed", 0) + len(failed)
    listed = entry.setdefault("failed_tiles", [])
    for ref, why in failed[: max(0, MAX_LISTED_FAILURES - len(listed))]:
        w = ref.window
        listed.append({"tile_id": ref.tile_id, "scale": ref.scale,
                       "window": [w.col_off, w.row_off, w.width, w.height], "reason": why})


def failure_line(entry: dict[str, Any]) -> str:
    """ "3 tiles could not be read (the next run retries them), e.g. pixels 64,64 64x64 ..." ("" if none)."""
    n = int(entry.get("tiles_failed") or 0)
    if not n:
        return ""
    first = (entry.get("failed_tiles") or [{}])[0].get("reason", "")
    return f"{n} tile(s) could not be read (the next run retries them); first: {first}"
