"""The `ray` executor (driver mode): the engine process is the Ray driver, the cluster does the work.

Tile references go into `ray.data.from_items`; three `map_batches` stages read windows (CPU tasks
with fractional `num_cpus`, so reads are never starved by the actor pools), caption (an actor pool,
one model load per actor, `num_gpus=1` each when the cluster has GPUs) and embed (an actor pool).
Results stream back with `iter_batches` in plan order and the job's single writer commits them as
they arrive, so a killed driver or actor loses at most the batches in flight: the next run plans
only what is missing (the resume key is still (tile id, captioner fingerprint)).

Without an address a private local cluster is started on loopback and shut down with the job;
with one, the job attaches to that cluster (token auth comes from RAY_AUTH_MODE / RAY_AUTH_TOKEN in
the environment, never from a command line) and disconnecting ends the job's actors and tasks.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from typing import Any, Callable, Iterator, Optional, Sequence

from ...captioners.vllm_ray import is_vllm, parse_vllm_spec, vllm_identity
from ...errors import Canceled, EngineError
from ...types import CancelFn, TileRef
from ..executor import CaptionedBatch, ExecutorBase
from ..path_map import parse_path_map, to_cluster
from .ray_connection import RayConnection
from .ray_ready import ReadyCounter, ReportingCaptionStage
from .ray_stages import Chunk, EmbedStage, captioner_identity, chunk_rows, decode_results, read_tiles

#: Default no-progress timeout: above the load time of a 7B VLM from a cold disk.
STALL_TIMEOUT_S = 1800.0
#: Actor errors worth retrying (a flaky server, a dropped connection); anything else fails the job.
TRANSIENT_ERRORS: list[type[BaseException]] = [ConnectionError, TimeoutError]
#: Read-task error messages worth retrying (remote storage hiccups).
TRANSIENT_READ_ERRORS = ["timed out", "Timeout", "onnection", "HTTP response code: 5", "Temporary failure"]
_GPU_BACKENDS = ("transformers", "vllm")
_END = object()
#: Seconds between asks of how many caption workers are ready (while the driver waits for results).
READY_POLL_S = 1.0


class RemoteCaptioner:
    """What the writer needs to know about a captioner that lives on the cluster."""

    def __init__(self, fingerprint: str, batch_size: int) -> None:
        self.fingerprint = fingerprint
        self.batch_size = batch_size


class RayExecutor(ExecutorBase):
    """Driver mode: Ray Data stages over the whole job as one stream (read tasks, caption and embed actors)."""

    streams_whole_job = True

    def __init__(
        self,
        captioner: str,
        captioner_options: dict[str, Any],
        embedder: Optional[str],
        device: str,
        dim: int,
        *,
        embedder_fingerprint: Optional[str] = None,
        document_graph: str = "fp32",
        address: Optional[str] = None,
        num_cpus: Optional[int] = None,
        caption_workers: Optional[int] = None,
        min_caption_workers: int = 1,
        embed_workers: int = 1,
        batch_size: Optional[int] = None,
        read_cpus: float = 0.25,
        actor_cpus: float = 0.5,
        gpus_per_captioner: Optional[float] = None,
        stall_timeout_s: float = STALL_TIMEOUT_S,
        temp_dir: Optional[str] = None,
        path_map: Any = None,
    ) -> None:
        super().__init__()
        self.spec, self.options = captioner, dict(captioner_options)
        self.embedder_spec, self.device, self.dim = embedder, device, int(dim)
        self.embedder_fingerprint = embedder_fingerprint
        self.document_graph = document_graph  # the index's (document_graph.py): every embed actor follows it
        self.read_cpus, self.actor_cpus = float(read_cpus), float(actor_cpus)
        self.embed_workers = max(1, int(embed_workers))
        self.min_caption_workers = max(1, int(min_caption_workers))
        self.stall_timeout_s = float(stall_timeout_s)
        self.path_map = parse_path_map(path_map)  # local -> cluster, for the paths the read tasks open
        #: on_workers(ready, n): set by the job to report "starting workers k/n ready"
        self.on_workers: Optional[Callable[[int, int], None]] = None
        self._ready: Any = None
        self._ready_seen, self._ready_next = -1, 0.0
        self.connection = RayConnection(address, num_cpus=num_cpus, temp_dir=temp_dir)
        self.ray = ray = self.connection.open()
        self._stop = threading.Event()
        try:
            self._setup(ray, captioner, caption_workers, batch_size, gpus_per_captioner)
        except BaseException:
            self.close()  # never leave a cluster (or our connection to one) behind
            raise
        self._queue: Optional[queue.Queue[Any]] = None
        self._decode: Callable[[Any], list[Chunk]] = lambda batch: decode_results(batch, self.dim)
        self._plan: dict[str, set[str]] = {}
        self._order: list[str] = []
        self._carry: list[Chunk] = []

    def _setup(self, ray: Any, captioner: str, caption_workers: Optional[int], batch_size: Optional[int],
               gpus_per_captioner: Optional[float]) -> None:
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        kind = captioner.partition(":")[0].strip().lower()
        self.gpus = gpus_per_captioner if gpus_per_captioner is not None else (1.0 if gpus and kind in _GPU_BACKENDS else 0.0)
        if self.gpus:
            pool = int(gpus // self.gpus) or 1
        else:
            pool = max(1, int(float(ray.cluster_resources().get("CPU", 1.0)) // 2))
        self.caption_workers = max(1, int(caption_workers or pool))
        self.vllm = parse_vllm_spec(captioner, self.options) if is_vllm(captioner) else None
        if self.vllm is not None and not self.gpus:
            raise EngineError("the vllm: captioner needs GPUs on the Ray cluster, and it has none")
        fp_fn = vllm_identity if self.vllm is not None else captioner_identity  # vLLM: checked on a GPU node
        fp_task = ray.remote(num_cpus=self.actor_cpus, num_gpus=self.gpus or 0, max_retries=2)(fp_fn)
        try:
            fp, own_batch = ray.get(fp_task.remote(self.spec, self.options), timeout=self.stall_timeout_s)
        except Exception as exc:
            raise EngineError(f"the captioner could not be built on the cluster: {_cause(exc)}") from None
        # A chunk is one caption batch: the one asked for, else the captioner's own (as built there).
        self.batch_size = max(1, int(batch_size or self.options.get("batch_size") or own_batch or 16))
        self.captioner = RemoteCaptioner(fp, self.batch_size)
        self._configure_data_context()

    @property
    def fingerprint(self) -> str:
        return self.captioner.fingerprint

    def _configure_data_context(self) -> None:
        ctx = self.ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ctx.raise_original_map_exception = True  # the user's error, not "UDF failed to process a data block"
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        ctx.execution_options.preserve_order = True  # results in plan order: the writer commits raster by raster
        ctx.actor_task_retry_on_errors = list(TRANSIENT_ERRORS)
        ctx.retried_map_errors = list(TRANSIENT_READ_ERRORS)
        ctx.max_map_retries = 3
        ctx.execution_no_progress_timeout_s = self.stall_timeout_s
        ctx.wait_for_min_actors_s = int(self.stall_timeout_s)

    # -- planning ---------------------------------------------------------------------------------
    def prepare(self, work: Sequence[tuple[Any, Sequence[TileRef]]], params: Any) -> None:
        """One dataset for the whole job (one model load per actor, not per raster)."""
        rd = self.ray.data
        # A row is a chunk: one caption batch of one raster. Each stage takes one chunk per call and
        # each chunk is its own block, so results stream back (in plan order) a caption batch at a
        # time, and Ray Data's per-row and per-block costs are paid per batch, not per tile.
        rows = [row for info, refs in work for row in chunk_rows(info.raster_id, refs, self.batch_size)]
        for cid, row in enumerate(rows):
            row["cid"] = cid  # the order chunks are handed to the writer in
        self._plan = {info.raster_id: {r.tile_id for r in refs} for info, refs in work}
        self._order = [info.raster_id for info, refs in work if refs]
        self._carry = []
        self._queue = None
        if not rows:
            return
        # Read tasks open the cluster's path; ids and the stored (local) path never change.
        infos = {info.raster_id: dataclasses.replace(info, path=to_cluster(info.path, self.path_map)) for info, _ in work}
        ds = rd.from_items(rows, override_num_blocks=len(rows))
        ds = ds.map_batches(read_tiles, fn_kwargs={"infos": infos, "params": params}, batch_size=1,
                            num_cpus=self.read_cpus, batch_format="numpy")
        embed = {"spec": self.embedder_spec, "device": self.device, "expected_fingerprint": self.embedder_fingerprint,
                 "document_graph": self.document_graph}
        if self.vllm is not None:  # ray.data.llm's processor is the caption stage
            from .ray_vllm import VllmAssembler, add_vllm_stages

            self._decode = VllmAssembler(self.dim)
            ds = add_vllm_stages(ds, rd, self.vllm, self.caption_workers, embed, self.embed_workers, self.actor_cpus)
            self._queue = self._pump(ds)
            return
        self._decode = lambda batch: decode_results(batch, self.dim)
        self._start_ready_counter()
        ds = ds.map_batches(ReportingCaptionStage, fn_constructor_kwargs={
                                "spec": self.spec, "options": self.options, "expected_fingerprint": self.fingerprint,
                                "ready": self._ready},
                            batch_size=1, batch_format="numpy",
                            compute=rd.ActorPoolStrategy(min_size=min(self.min_caption_workers, self.caption_workers),
                                                         max_size=self.caption_workers),
                            num_cpus=self.actor_cpus, num_gpus=self.gpus or None)
        ds = ds.map_batches(EmbedStage, fn_constructor_kwargs=embed, batch_size=1, batch_format="numpy",  # one chunk: results stream to the writer
                            compute=rd.ActorPoolStrategy(min_size=1, max_size=self.embed_workers), num_cpus=self.actor_cpus)
        self._queue = self._pump(ds)

    def _start_ready_counter(self) -> None:
        self._ready, self._ready_seen, self._ready_next = None, -1, 0.0
        if self.on_workers is None:
            return
        try:
            self._ready = self.ray.remote(num_cpus=0)(ReadyCounter).remote()
        except Exception:  # pragma: no cover - no readiness report, the job still runs
            return
        self._poll_ready(force=True)

    def _poll_ready(self, force: bool = False, at_least: int = 0) -> None:
        """Report k/n caption workers ready when k changed (at most every READY_POLL_S unless forced)."""
        if self._ready is None or self.on_workers is None or (not force and time.monotonic() < self._ready_next):
            return
        self._ready_next = time.monotonic() + READY_POLL_S
        try:
            k = 0 if self._ready_seen < 0 and force else int(self.ray.get(self._ready.count.remote(), timeout=5))
        except Exception:  # the counter is a nicety: stop asking
            self._ready = None
            return
        k = max(k, at_least)
        if k != self._ready_seen:
            self._ready_seen = k
            self.on_workers(min(k, self.caption_workers), self.caption_workers)
        if k >= self.caption_workers:
            self._ready = None  # all there: stop asking

    def _pump(self, ds: Any) -> queue.Queue[Any]:
        """iter_batches in a thread, so the driver checks cancel and the stall timer while it waits."""
        q: queue.Queue[Any] = queue.Queue(maxsize=2)
        stop = self._stop

        def put(item: Any) -> None:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.2)
                    return
                except queue.Full:
                    continue

        def run() -> None:
            try:
                for b in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1):
                    put(b)
                    if stop.is_set():
                        return
                put(_END)
            except BaseException as exc:  # handed to the driver loop
                put(exc)

        threading.Thread(target=run, name="ray-results", daemon=True).start()
        return q

    def _next_chunks(self, is_canceled: CancelFn) -> Optional[list[Chunk]]:
        """The next chunks of results, or None once the job's dataset is exhausted."""
        q = self._queue
        if q is None:
            return None
        last = time.monotonic()
        while True:
            if is_canceled():
                raise Canceled()
            self._poll_ready()
            try:
                item = q.get(timeout=0.25)
            except queue.Empty:
                if time.monotonic() - last > self.stall_timeout_s:
                    raise EngineError(f"the Ray job made no progress for {self.stall_timeout_s:.0f} s (workers lost or"
                                      " waiting for resources); run it again to resume") from None
                continue
            if item is _END:
                self._queue = None
                return None
            if isinstance(item, BaseException):
                raise EngineError(f"the Ray job failed: {_cause(item)}") from None
            if self._ready_seen < 1:  # results came: a worker is ready (say so before "captioned x/N")
                self._poll_ready(force=True, at_least=1)
            return self._decode(item)

    def run(self, info: Any, params: Any, refs: Sequence[TileRef], is_canceled: CancelFn,
            on_error: Optional[Callable[[TileRef, str], None]] = None,
            on_empty: Optional[Callable[[TileRef], None]] = None) -> Iterator[CaptionedBatch]:
        """Every chunk comes back: its captioned tiles are yielded, its empty tiles go to `on_empty`
        and its unreadable tiles to `on_error(ref, reason)` (without `on_error`, the first one fails
        the job with its reason), as the local executor reports them."""
        rid = info.raster_id
        if rid not in self._plan or not {r.tile_id for r in refs} <= self._plan.pop(rid):
            self.prepare([(info, refs)], params)  # not part of the prepared plan: a dataset of its own
            self._plan.pop(rid, None)
        later = self._order[self._order.index(rid) + 1:] if rid in self._order else []
        while True:
            while self._carry and self._carry[0].raster_id == rid:
                chunk = self._carry.pop(0)
                for ref in chunk.empty:
                    if on_empty is not None:
                        on_empty(ref)
                for ref, why in chunk.failed:
                    if on_error is None:
                        raise EngineError(f"{info.name}: {why}")
                    on_error(ref, why)
                if chunk.refs:
                    yield chunk.refs, chunk.variants, chunk.vecs
            if self._carry:  # the next raster's results: this raster is complete
                if self._carry[0].raster_id not in later:
                    raise EngineError("the Ray job returned results out of plan order")
                return
            chunks = self._next_chunks(is_canceled)
            if chunks is None:
                return
            self._carry.extend(chunks)

    @property
    def owns_cluster(self) -> bool:
        return self.connection.owns_cluster

    def close(self) -> None:
        """Disconnect: the cluster ends this driver's actors and tasks; a private cluster is shut down."""
        self._stop.set()
        self.connection.close()


def _cause(exc: BaseException) -> str:
    """One line: the innermost error a Ray failure wraps (the user's, not Ray's plumbing)."""
    cause: BaseException = exc
    for _ in range(8):
        inner = getattr(cause, "cause", None) or cause.__cause__
        if not isinstance(inner, BaseException) or inner is cause:
            break
        cause = inner
    lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
    text = lines[0] if lines else type(cause).__name__
    return text[:300]
