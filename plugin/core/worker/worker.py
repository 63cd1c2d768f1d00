"""`python -m plugin worker`: the engine process that QGIS drives with JSON lines on stdin/stdout.

Why a process: QGIS's own Python never imports torch, and a model that crashes or runs out of
memory takes this process down, not QGIS. Why warm: a `Searcher` per index folder keeps the
embedder loaded, so the second query costs one encode and one kNN search.

Protocol (one JSON object per line):
  request   {"id": "7", "cmd": "search", "args": {...}}
  progress  {"id": "7", "event": "progress", "done": 3, "total": 10, "message": "..."}
  result    {"id": "7", "event": "result", "result": ...}
  error     {"id": "7", "event": "error", "message": "one line", "kind": "RasterError"}
  cancel    {"cmd": "cancel", "args": {"id": "7"}}   (no reply unless it carries its own id)

Commands run one after the other in a job thread, so the stdin loop stays free to honour
"cancel" (and "ping") while an index job runs. stdout carries protocol lines only: file
descriptor 1 is pointed at stderr at start, so library chatter (tqdm, warnings, C code) cannot
corrupt the stream. A bad request gets an error reply; nothing a client sends ends the loop
except "shutdown" or end of input.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import traceback
from typing import Any, Callable, Optional, TextIO

from ..errors import Canceled, EngineError, first_line

PROTOCOL_VERSION = 1
#: At most this many progress lines per second per job (the final one is always sent).
PROGRESS_RATE_S = 0.1


class ProtocolError(EngineError):
    """A request the worker cannot understand (not JSON, unknown command, missing argument)."""


class Job:
    """One request being served: its id, its cancel flag and how it reports progress."""

    def __init__(self, rid: str, cmd: str, args: dict[str, Any], send: Callable[[dict[str, Any]], None]) -> None:
        self.id, self.cmd, self.args = rid, cmd, args
        self.cancel = threading.Event()
        self._send = send
        self._last = 0.0
        self._phase: Any = None
        self._ready: Any = None

    def progress(self, done: int, total: int, message: str) -> None:
        """A progress event; a phase's fields (indexing/progress.py: phase, ready, workers, rate, eta_s)
        travel beside the message. Phase changes are always sent, counts at most every PROGRESS_RATE_S."""
        now = time.monotonic()
        info = getattr(message, "info", None)
        info = dict(info) if isinstance(info, dict) else {}
        changed = info.get("phase") != self._phase or info.get("ready") != self._ready
        if total and done >= total or changed or now - self._last >= PROGRESS_RATE_S:
            self._last, self._phase, self._ready = now, info.get("phase"), info.get("ready")
            self._send({**info, "id": self.id, "event": "progress", "done": int(done), "total": int(total),
                        "message": str(message)})

    def is_canceled(self) -> bool:
        return self.cancel.is_set()

    def arg(self, name: str, default: Any = ..., kind: type = object) -> Any:
        if name not in self.args or self.args[name] is None:
            if default is ...:
                raise ProtocolError(f"{self.cmd}: missing argument {name!r}")
            return default
        value = self.args[name]
        if kind is not object and not isinstance(value, kind):
            raise ProtocolError(f"{self.cmd}: argument {name!r} should be a {kind.__name__}")
        return value


class Worker:
    """The dispatch table and the warm state (searchers) behind the protocol loop."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._out_lock = threading.Lock()
        self._searchers: dict[tuple[str, Optional[str], str], Any] = {}
        self._jobs: queue.Queue[Optional[Job]] = queue.Queue()
        self._current: Optional[Job] = None
        self._lock = threading.Lock()
        self._shutdown_id: Optional[str] = None
        self.handlers: dict[str, Callable[[Job], Any]] = {
            "ping": self.cmd_ping,
            "index": self.cmd_index,
            "search": self.cmd_search,
            "warm": self.cmd_warm,
            "surface": self.cmd_surface,
            "info": self.cmd_info,
            "preview": self.cmd_preview,
            "remove": self.cmd_remove,
            "cluster_info": self.cmd_cluster_info,
        }
        #: Commands answered on the reader thread at once, even while a job runs.
        self.immediate: dict[str, Callable[[Job], Any]] = {"ping": self.cmd_ping, "cancel": self.cmd_cancel}

    # --- output --------------------------------------------------------------------------------
    def send(self, msg: dict[str, Any]) -> None:
        line = json.dumps(msg, default=_json_default, ensure_ascii=False)
        with self._out_lock:
            self._out.write(line + "\n")
            self._out.flush()

    def reply_error(self, rid: Optional[str], exc: BaseException) -> None:
        if isinstance(exc, Canceled):
            msg = "canceled: what was done so far is kept"
        else:
            msg = _one_line(exc)
        out: dict[str, Any] = {"id": rid, "event": "error", "message": msg, "kind": type(exc).__name__}
        if not isinstance(exc, (EngineError, Canceled)):
            # A bug or a library failure: keep the traceback for the QGIS log.
            out["details"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]
            print(out["details"], file=sys.stderr, flush=True)
        self.send(out)

    # --- loop ----------------------------------------------------------------------------------
    def serve(self, lines: TextIO) -> int:
        runner = threading.Thread(target=self._run_jobs, name="worker-jobs", daemon=True)
        runner.start()
        try:
            for raw in lines:
                raw = raw.strip()
                if not raw:
                    continue
                if not self.dispatch(raw):
                    break
        finally:
            with self._lock:
                if self._current is not None:
                    self._current.cancel.set()
            for queued in list(self._jobs.queue):
                if queued is not None:
                    queued.cancel.set()
            self._jobs.put(None)
            runner.join(timeout=30)
            self.close()
            if self._shutdown_id is not None:
                self.send({"id": self._shutdown_id, "event": "result", "result": True})
        return 0

    def dispatch(self, raw: str) -> bool:
        """Handle one request line; False means shut down."""
        rid: Optional[str] = None
        try:
            req = json.loads(raw)
            if not isinstance(req, dict):
                raise ProtocolError("a request must be a JSON object with 'cmd'")
            rid = None if req.get("id") is None else str(req["id"])
            cmd = req.get("cmd")
            args = req.get("args") or {}
            if not isinstance(cmd, str) or not isinstance(args, dict):
                raise ProtocolError("a request needs 'cmd' (text) and optional 'args' (object)")
        except json.JSONDecodeError as exc:
            self.reply_error(None, ProtocolError(f"not a JSON line: {exc.msg}"))
            return True
        except ProtocolError as exc:
            self.reply_error(rid, exc)
            return True
        if cmd == "shutdown":
            self._shutdown_id = rid
            return False
        job = Job(rid or "", cmd, args, self.send)
        if cmd in self.immediate:
            self._run(job, self.immediate[cmd], reply=rid is not None)
        elif cmd in self.handlers:
            self._jobs.put(job)
        else:
            known = ", ".join(sorted([*self.handlers, "cancel", "shutdown"]))
            self.reply_error(rid, ProtocolError(f"unknown command {cmd!r} (known: {known})"))
        return True

    def _run_jobs(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                self._current = job
            try:
                self._run(job, self.handlers[job.cmd], reply=True)
            finally:
                with self._lock:
                    self._current = None

    def _run(self, job: Job, handler: Callable[[Job], Any], reply: bool) -> None:
        try:
            result = handler(job)
        except BaseException as exc:  # noqa: B036 -- every failure becomes a reply, the loop goes on
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            if reply:
                self.reply_error(job.id, exc)
            return
        if reply:
            self.send({"id": job.id, "event": "result", "result": result})

    # --- commands ------------------------------------------------------------------------------
    def cmd_ping(self, job: Job) -> dict[str, Any]:
        return {"pong": True, "pid": os.getpid(), "python": sys.executable, "protocol": PROTOCOL_VERSION}

    def cmd_cancel(self, job: Job) -> bool:
        """Cancel the running job (or a queued one) with the given id; True if it was found."""
        target = str(job.arg("id"))
        with self._lock:
            if self._current is not None and self._current.id == target:
                self._current.cancel.set()
                return True
        for queued in list(self._jobs.queue):
            if queued is not None and queued.id == target:
                queued.cancel.set()
                return True
        return False

    def cmd_index(self, job: Job) -> dict[str, Any]:
        """The arguments are an IndexRequest's dict, checked as a whole (unknown keys and bad values: one line)."""
        from ..index_request import IndexRequest

        try:
            request = IndexRequest.from_dict(dict(job.args))
        except EngineError as exc:
            raise ProtocolError(f"index: {first_line(exc)}") from None
        if job.is_canceled():
            raise Canceled()
        os.makedirs(request.index_dir, exist_ok=True)
        return request.run(progress=job.progress, is_canceled=job.is_canceled).to_dict()  # type: ignore[no-any-return]

    def cmd_cluster_info(self, job: Job) -> dict[str, Any]:
        """The settings' "Test cluster": {"executor": "ray", "address"} or {"executor": "ray-job", "dashboard_url"}."""
        from ..env.cluster_probe import probe_jobs, probe_ray

        if job.arg("executor", "ray", kind=str) == "ray-job":
            return probe_jobs(str(job.arg("dashboard_url", kind=str)))
        return probe_ray(str(job.arg("address", kind=str)))

    def searcher(self, index_dir: str, embedder: Optional[str], device: str) -> Any:
        from ..search.searcher import Searcher

        key = (os.path.abspath(index_dir), embedder, device)
        s = self._searchers.get(key)
        if s is None:
            s = self._searchers[key] = Searcher(key[0], embedder=embedder, device=device)
        return s

    def cmd_search(self, job: Job) -> list[dict[str, Any]]:
        index_dir = str(job.arg("index_dir", kind=str))
        bbox = job.arg("bbox", None, kind=list)
        if bbox is not None and len(bbox) != 4:
            raise ProtocolError("search: bbox needs 4 numbers minx,miny,maxx,maxy")
        embedder, device = job.arg("embedder", None, kind=str), str(job.arg("device", "auto", kind=str))
        key = (os.path.abspath(index_dir), embedder, device)
        if key not in self._searchers:
            job.progress(0, 0, "loading the embedder (first search)")
        s = self.searcher(index_dir, embedder, device)
        hits = s.search(
            str(job.arg("query", "" if job.arg("like", None) else ..., kind=str)),
            top=int(job.arg("top", 10)),
            fusion=str(job.arg("fusion", "max", kind=str)),
            rasters=job.arg("rasters", None, kind=list),
            bbox=tuple(float(v) for v in bbox) if bbox else None,  # type: ignore[arg-type]
            bbox_crs=job.arg("bbox_crs", None, kind=str),
            min_score=job.arg("min_score", None),
            suppress_overlaps=bool(job.arg("suppress_overlaps", False)),
            ranker=job.arg("ranker", None, kind=str),
            like=job.arg("like", None, kind=str),
        )
        return [h.to_dict() for h in hits]

    def cmd_warm(self, job: Job) -> dict[str, Any]:
        """Load the embedder and open the index now, so the first real query answers at once.

        The dock sends it when an indexed project opens; it runs one throw-away query through the
        same searcher a search uses (the embedder's first call initialises lazily too).
        """
        t0 = time.perf_counter()
        index_dir = str(job.arg("index_dir", kind=str))
        embedder, device = job.arg("embedder", None, kind=str), str(job.arg("device", "auto", kind=str))
        self.searcher(index_dir, embedder, device).search("warm up", top=1)
        return {"ready": True, "seconds": round(time.perf_counter() - t0, 3)}

    def cmd_surface(self, job: Job) -> list[dict[str, Any]]:
        """Every tile's fused score for a query as GeoTIFFs (one per raster) in `out_dir`."""
        from ..search.surface import score_surface

        return score_surface(
            str(job.arg("index_dir", kind=str)), str(job.arg("query", kind=str)), str(job.arg("out_dir", kind=str)),
            embedder=job.arg("embedder", None, kind=str), device=str(job.arg("device", "auto", kind=str)),
            fusion=str(job.arg("fusion", "max", kind=str)), cell_px=int(job.arg("cell_px", 0)),
            rasters=job.arg("rasters", None, kind=list),
        )

    def cmd_info(self, job: Job) -> dict[str, Any]:
        from ..indexing import index_info

        return index_info(str(job.arg("index_dir", kind=str)))

    def cmd_preview(self, job: Job) -> list[dict[str, Any]]:
        """Before Index: per raster, tiles searchable already / from the caption cache / to caption."""
        from ..indexing import preview_index
        from ..rasters.tiling import TilingParams
        from ..types import RasterSource

        sources = [RasterSource.from_dict(s) if isinstance(s, dict) else RasterSource(str(s))
                   for s in job.arg("sources", [], kind=list)]
        tiling = job.arg("tiling", None, kind=dict)
        return preview_index(str(job.arg("index_dir", kind=str)), sources, TilingParams.from_dict(tiling) if tiling else None)

    def cmd_remove(self, job: Job) -> list[str]:
        from ..indexing import remove_rasters

        index_dir = str(job.arg("index_dir", kind=str))
        rasters = [str(r) for r in job.arg("rasters", kind=list)]
        self._close_searchers(index_dir)
        return remove_rasters(index_dir, rasters)

    def _close_searchers(self, index_dir: str) -> None:
        path = os.path.abspath(index_dir)
        for key in [k for k in self._searchers if k[0] == path]:
            self._searchers.pop(key).close()

    def close(self) -> None:
        for s in self._searchers.values():
            try:
                s.close()
            except Exception as exc:  # closing must not hide the reason we stop
                print(f"closing a searcher: {exc}", file=sys.stderr)
        self._searchers.clear()


def _one_line(exc: BaseException) -> str:
    return first_line(exc)


def _json_default(o: Any) -> Any:
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def protocol_stdout() -> TextIO:
    """Keep a private copy of stdout for protocol lines and point fd 1 (and sys.stdout) at stderr."""
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(proto_fd, "w", encoding="utf-8", buffering=1)


def run(args: Any = None) -> int:
    """Entry point of `python -m plugin worker`."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = protocol_stdout()
    stdin = open(sys.stdin.fileno(), encoding="utf-8", closefd=False)
    worker = Worker(out)
    worker.send({"id": None, "event": "ready", "pid": os.getpid(), "protocol": PROTOCOL_VERSION})
    return worker.serve(stdin)


def add_worker_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("worker", help="serve the QGIS plugin: JSON requests on stdin, replies on stdout")
    p.set_defaults(func=run)


if __name__ == "__main__":
    sys.exit(run())
