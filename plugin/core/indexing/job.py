"""`index_rasters`: plan, then let an executor caption what is missing, committing as batches arrive.

Indexing is incremental and resumable because the store is the only state: a tile is "done" once
its caption variants and their embeddings are committed, so a job killed at any moment simply
finds fewer tiles to do next time. Captions are cached per (tile id, captioner fingerprint), so a
new embedder re-embeds without re-captioning and a captioner that has seen a tile never sees it again.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

from ..errors import Canceled, EngineError, RasterError
from ..rasters.rasterpath import raster_present
from ..search.searcher import cached_embedder, open_index_for
from ..store.index_lock import IndexLock
from ..store.store_check import reembed_damaged
from ..store.store_schema import db_errors
from ..types import CancelFn, ProgressFn, RasterSource, TileRef, never_canceled, no_progress
from .commit import index_one, make_step
from .document_graph import check_graph, choose_graph, record_graph, recorded_graph
from .executor import EXECUTORS, Executor
from .plan import MAX_TILES, open_all, previous_embedder, resolve_sources, row_band_map
from .progress import captioning, loading, planning, starting_workers

log = logging.getLogger(__name__)


@dataclass
class IndexReport:
    rasters: list[dict[str, Any]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    canceled: bool = False
    embedder: str = ""
    captioner: str = ""
    #: The graph the documents were embedded with, recorded in the index (document_graph.py).
    document_graph: str = ""
    #: One line each: what opening the index fixed (rebuilt manifest, removed leftovers).
    notes: list[str] = field(default_factory=list)
    #: Caption variants whose damaged stored vector was re-embedded from the caption text.
    reembedded_damaged: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _make_executor(name: str, captioner: str, opts: dict[str, Any], embedder: Optional[str], emb: Any,
                   device: str, options: dict[str, Any], index_dir: str = "", graph: str = "fp32") -> tuple[Any, Executor]:
    """(captioner, executor): the local executor builds the captioner here; the Ray executors build
    it on the cluster and hand back what the writer needs (its fingerprint)."""
    if name in ("ray", "ray-job"):
        import inspect

        if name == "ray":
            from .cluster.ray_exec import RayExecutor as cls
        else:
            from .cluster.ray_job import RayJobExecutor as cls  # type: ignore[assignment]
            options = {**options, "index_dir": index_dir}
        known = {k for k, p in inspect.signature(cls).parameters.items() if p.kind == p.KEYWORD_ONLY}
        unknown = sorted(set(options) - known - {"embedder_fingerprint", "document_graph"})
        if unknown:
            raise EngineError(f"unknown {name} executor option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        ray_ex: Any = cls(captioner, opts, embedder, device, emb.dim, embedder_fingerprint=emb.fingerprint,
                          document_graph=graph, **options)
        return ray_ex.captioner, ray_ex
    if name == "local":
        from ..captioners import make_captioner
        from .local import LocalExecutor

        cap = make_captioner(captioner, **opts)
        return cap, LocalExecutor(cap, emb)
    raise EngineError(f"unknown executor {name!r}: use one of {', '.join(EXECUTORS)}")


def _graph_got(index_dir: str, graph: str, emb: Any) -> str:
    """The graph this run really embeds with: what was chosen, unless the embedder could not give int8
    (no ONNX export, SIS_EMBEDDER_BACKEND=torch): a new index then takes fp32, an int8 one is refused."""
    got = getattr(emb, "document_graph", "fp32")
    if got == graph:
        return graph
    if recorded_graph(index_dir)[1]:
        raise EngineError(f"the index at {index_dir} was embedded with the {graph} document graph, which this run "
                          f"cannot load (the log says why: no ONNX export?); documents would come out {got}")
    log.warning("documents use the %s graph, not %s (see above): the new index records %s", got, graph, got)
    return str(got)


def _prepare(ex: Any, idx: Any, cap: Any, planned: list[tuple[Any, list[TileRef], set[str]]], params: Any) -> None:
    """Give an executor that runs the whole job as one stream (Ray) every tile it will be asked for:
    not done and not in the caption cache (those are re-embedded by the writer)."""
    if not ex.streams_whole_job:
        return
    work = []
    for info, refs, done in planned:
        empty = idx.empty_tile_ids(info.raster_id, params.min_valid_fraction)  # never read again
        todo = [r for r in refs if r.tile_id not in done and r.tile_id not in empty]
        cached = idx.cached_variants([r.tile_id for r in todo], cap.fingerprint) if todo else {}
        work.append((info, [r for r in todo if r.tile_id not in cached]))
    ex.prepare(work, params)


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
    executor: str = "local",
    force: bool = False,
    wait_s: float = 0.0,
    job: Optional[str] = None,
    executor_options: Optional[dict[str, Any]] = None,
    document_graph: Optional[str] = None,
    progress: ProgressFn = no_progress,
    is_canceled: CancelFn = never_canceled,
) -> IndexReport:
    """Index `sources` into `index_dir` (created if needed); only what is not done yet is computed.

    One writer per index: the job takes the index's writer lock once its plan is accepted (a plan
    past `plan.MAX_TILES` tiles is refused unless `force`), waiting up to `wait_s` for a running
    job, else refused with `IndexBusyError` naming it (`job` is how this one is named).
    `executor`: "local" (this process), "ray" (`executor_options`: address, caption_workers, ...,
    see `ray_exec.RayExecutor`) or "ray-job" (dashboard_url, shared_dir, path_map, ...: `ray_job.RayJobExecutor`).
    `document_graph` ("fp32", "int8", None = auto) is honoured for a new index only: an index keeps
    the graph it recorded, and a contradicting request is refused (document_graph.py)."""
    index_dir = os.path.abspath(os.path.expanduser(str(index_dir)))
    with db_errors(index_dir):
        return _index_rasters(index_dir, sources, captioner, embedder, tiling, captioner_options, device,
                              remove_missing, executor, force, wait_s, job, progress, is_canceled,
                              dict(executor_options or {}), document_graph)


def _index_rasters(index_dir, sources, captioner, embedder, tiling, captioner_options, device, remove_missing,
                   executor, force, wait_s, job, progress, is_canceled, executor_options, document_graph) -> IndexReport:
    from ..captioners import bind_captioner, preflight_captioner
    from ..rasters.raster import open_raster
    from ..rasters.tiling import TilingParams, plan_tiles

    t0 = time.perf_counter()
    if executor not in EXECUTORS:
        raise EngineError(f"unknown executor {executor!r}: use one of {', '.join(EXECUTORS)}")
    check_graph(document_graph)  # a misspelt graph fails before anything is planned
    params = tiling or TilingParams()
    sources = resolve_sources(sources)
    report = IndexReport()
    if not sources and not remove_missing:
        raise EngineError("nothing to index: give at least one raster")
    # Open and plan every raster before loading any model, so bad input fails in a second.
    progress(0, 0, planning(f"planning {len(sources)} raster(s)"))
    limit = None if force else MAX_TILES
    opened, failed_paths = open_all(sources, params, report, open_raster, plan_tiles, limit)
    if sources and not opened:
        raise RasterError("; ".join(r["error"] for r in report.rasters) or "no raster could be opened")
    # The plan is accepted: take the writer lock before loading any model (a second job learns in
    # a second that it has to wait), and before anything of the index is read or changed.
    try:
        os.makedirs(index_dir, exist_ok=True)
    except OSError as exc:
        raise EngineError(f"cannot create the index folder {index_dir}: {exc.strerror or exc}") from None
    lock = IndexLock(index_dir, job).acquire(wait_s)
    try:
        opts = dict(captioner_options or {})
        opts.setdefault("device", device)
        # A captioner server that is down fails here, in seconds, before the embedder loads.
        preflight_captioner(captioner, opts, lambda message: progress(0, 0, message), is_canceled)
        if executor == "ray-job":  # a wrong dashboard URL or token fails here, in seconds, before any model
            from .cluster.ray_job_api import check_dashboard

            check_dashboard(executor_options)
        progress(0, 0, loading("loading embedder"))
        graph = choose_graph(index_dir, document_graph, executor, device)
        emb = cached_embedder(embedder, device, graph)
        graph = _graph_got(index_dir, graph, emb)
        if executor == "ray":
            progress(0, 0, loading("connecting to Ray"))
        elif executor == "ray-job":
            progress(0, 0, loading("submitting to the Ray cluster's job server"))
        cap, ex = _make_executor(executor, captioner, opts, embedder, emb, device, executor_options, index_dir, graph)
        # an executor with worker pools says how many are ready (the others never call it)
        ex.on_workers = lambda ready, n: progress(0, 0, starting_workers(ready, n))
    except BaseException:
        lock.release(unlink=not os.path.exists(os.path.join(index_dir, "index.sqlite")))
        raise
    report.embedder, report.captioner, report.document_graph = emb.fingerprint, cap.fingerprint, graph
    try:
        switched = previous_embedder(index_dir) not in (None, emb.fingerprint)
        idx = open_index_for(index_dir, emb, create=True, allow_new_embedder=True, lock=lock)
        record_graph(idx, graph)
    except BaseException:
        lock.release()
        ex.close()  # never leave a model or a Ray cluster behind
        raise
    report.notes.extend(idx.notes)
    finished = False
    try:
        known = {r["raster_id"]: r for r in idx.raster_rows()}
        if switched:
            # A new embedder dropped every embedding: re-embed the other indexed rasters too, from
            # their cached captions (no re-captioning), so the whole index stays searchable.
            asked = {s.path for s in sources}
            extra = [
                RasterSource(r["path"], row_band_map(r), r.get("name"))
                for r in known.values()
                if r.get("path") and r["path"] not in asked and raster_present(r["path"])
            ]
            opened += open_all(extra, params, report, open_raster, plan_tiles, limit)[0]
        planned: list[tuple[Any, list[TileRef], set[str]]] = []
        new_params = params.to_dict()
        changed = {rid: r["params"] for rid, r in known.items() if r.get("tiles") and r.get("params") != new_params}
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
        progress = captioning(progress)  # every count from here on carries rate and ETA
        step = make_step(idx, total, progress)
        ex.notify = lambda message: step(0, message, may_flush=False)  # job mode: job status, shard counts
        bind_captioner(cap, lambda message: step(0, message, may_flush=False), is_canceled)  # server retries show in progress
        # Rasters with nothing left to do are settled first (no model work, no cancel point), so a
        # job cancelled while it works on another raster never leaves a complete one marked unfinished.
        order = sorted(range(len(planned)), key=lambda i: bool({r.tile_id for r in planned[i][1]} - planned[i][2]))
        _prepare(ex, idx, cap, [planned[i] for i in order], params)  # the order index_one runs them in
        entries: dict[int, dict[str, Any]] = {}
        for i in order:
            info, refs, done = planned[i]
            entries[i] = index_one(idx, cap, emb, info, params, refs, done, step, is_canceled, ex)
            if info.raster_id in changed:
                entries[i]["tiling_changed_from"], entries[i]["tiling"] = changed[info.raster_id], new_params
        report.rasters.extend(entries[i] for i in range(len(planned)))
        # Damaged vectors found while loading the search file are re-embedded from their captions.
        damaged = sorted(idx.ann.bad)
        if damaged:
            report.reembedded_damaged = reembed_damaged(idx, emb, damaged)
        report.seconds = time.perf_counter() - t0
        progress(total, total, "done")
        finished = True
        return report
    except Canceled:
        report.canceled = True
        raise
    finally:
        try:
            if finished:  # the tiles are committed: a search file that cannot be saved is rebuilt on the next open
                unsaved = idx.flush_or_keep_log()
                if unsaved:
                    report.notes.append(f"the search file was not saved ({unsaved}); every tile is in the index "
                                        "database and the next search rebuilds the file")
            else:
                idx.flush()
            if finished:  # job mode: shards the index now holds (committed above); a no-op elsewhere
                fp, min_valid = cap.fingerprint, params.min_valid_fraction
                try:
                    line = ex.remove_merged(lambda rid: idx.done_tile_ids(rid, fp) | idx.empty_tile_ids(rid, min_valid))
                except Exception as exc:  # a clean-up never fails a finished run; the next run merges as before
                    line = f"merged Ray job shards were not removed: {exc}"[:300]
                if line:
                    report.notes.append(line)
        finally:
            try:
                idx.close()
            finally:
                lock.release()
                ex.close()
