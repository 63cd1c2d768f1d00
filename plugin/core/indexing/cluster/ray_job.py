"""The `ray-job` executor (job mode): the cluster works as a Ray Job, this engine only merges shards.

For an analyst whose machine is outside the cluster network: no Ray here, only HTTP to the head's
dashboard (`ray_job_api`) and a folder both sides reach (`shared_dir`, mapped with `path_map`).

1. The plugin's engine package is uploaded once (content-hashed) and travels as `py_modules`.
2. The captioner fingerprint (the resume key) comes from a short job that builds the captioner on
   the cluster; it is kept in `shared_dir/fingerprints/`, so it is asked once per captioner and code.
3. `prepare` writes the manifest (the tiles still missing after planning and the caption cache
   check) into `shared_dir/jobs/<submission id>/` and submits the job; the submission id is derived
   from the index and the tiles, so a resubmission is recognised. `<index>/ray_job.json` names the
   job: a re-run attaches to it while it runs and planned what is still missing (or has finished
   and its shards hold it), else merges what it wrote and submits a job for the rest only.
4. `run` polls the job and its folder, and yields each shard's rows of the raster at hand (only
   tiles still missing, so merging a shard twice changes nothing) to the single writer. Tiles the job
   could not read (a corrupt block) come as failed rows of the current job's folder and go to
   `on_error` (the job report; never captioned); they count as missing for the next run, which
   submits a job for them (a job resubmitted into the same folder first drops its failed shards).
   A job that FAILED or was STOPPED is an error naming the job and its last log line; what was merged stays.
   Cancel stops the job through the REST API.
5. `remove_merged`: once the run ended well, its writes are committed (the writer lock still held,
   so no re-attach can race it), the current job SUCCEEDED and no job of the chain can still write,
   the shards whose rows the index holds are deleted, then the manifests and the job folders
   (`keep_shards` leaves them); one note in the report says what went.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import time
from typing import Any, Callable, Iterator, Optional, Sequence

from ...errors import Canceled, EngineError
from ...types import CancelFn, TileRef
from ..executor import CaptionedBatch, ExecutorBase
from ..path_map import parse_path_map, to_cluster
from ..progress import merging
from .ray_connection import plugin_package_dir
from .ray_exec import STALL_TIMEOUT_S, RemoteCaptioner
from .ray_job_api import ACTIVE, FINAL, JobsApi
from .ray_job_shards import (
    MANIFEST,
    drop_failed_shards,
    import_pyarrow,
    list_shards,
    read_json,
    read_shard,
    ref_to_json,
    remove_merged_shards,
    shard_rows,
    write_json_atomic,
)

log = logging.getLogger(__name__)

STATE_FILE = "ray_job.json"
#: How many earlier job folders of an index are still merged from (a chain of stopped jobs).
MAX_CHAIN = 8
_RUN_MODULE = __name__.rsplit(".", 1)[0] + ".ray_job_run"


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RayJobExecutor(ExecutorBase):
    """Job mode: the job server runs the stages on the cluster; shards come back through a shared folder."""

    streams_whole_job = True

    def __init__(self, captioner: str, captioner_options: dict[str, Any], embedder: Optional[str], device: str,
                 dim: int, *, embedder_fingerprint: Optional[str] = None, document_graph: str = "fp32", index_dir: str = "",
                 dashboard_url: str = "", shared_dir: str = "", path_map: Optional[Sequence[Sequence[str]]] = None,
                 caption_workers: Optional[int] = None, batch_size: Optional[int] = None, python: str = "python",
                 stall_timeout_s: float = STALL_TIMEOUT_S, poll_s: float = 0.5, keep_shards: bool = False) -> None:
        super().__init__()
        if not dashboard_url:
            raise EngineError("the ray-job executor needs the cluster's dashboard URL (--ray-dashboard http://head:8265)")
        if not shared_dir:
            raise EngineError("the ray-job executor needs a folder both sides reach for its shards (--shared-dir)")
        import_pyarrow()
        self.api = JobsApi(dashboard_url)
        self.api.version()  # a wrong URL, a dead head or a refused token fail here, in seconds
        self.shared_dir = os.path.abspath(os.path.expanduser(shared_dir))
        self.path_map = parse_path_map(path_map)
        self.index_dir, self.dim, self.poll_s, self.keep_shards = index_dir, int(dim), float(poll_s), bool(keep_shards)
        self.python, self.stall_timeout_s = python, float(stall_timeout_s)
        self.request = {"spec": captioner, "options": dict(captioner_options), "embedder": embedder, "device": device,
                        "caption_workers": caption_workers, "batch_size": batch_size,
                        "stall_timeout_s": self.stall_timeout_s, "embedder_fingerprint": embedder_fingerprint,
                        "document_graph": document_graph}
        try:
            os.makedirs(os.path.join(self.shared_dir, "jobs"), exist_ok=True)
        except OSError as exc:
            raise EngineError(f"cannot create the shared folder {self.shared_dir}: {exc.strerror or exc}") from None
        self.py_modules = [self.api.upload_package(plugin_package_dir())]
        self.captioner = RemoteCaptioner(self._fingerprint(), int(batch_size or captioner_options.get("batch_size") or 16))
        self.sid: Optional[str] = None
        self.dirs: list[str] = []  # job folders whose shards are merged (an earlier job's first)
        self.job_dir: Optional[str] = None  # the current job's folder: its failed rows are reported
        self.need: dict[str, TileRef] = {}
        self.remaining: set[str] = set()  # tiles of the job not merged yet
        self._index: dict[str, list[tuple[str, str, bool]]] = {}  # shard path -> (tile id, raster id, failed)
        self._merged: set[tuple[str, str]] = set()  # (shard path, raster id)
        self.final_status: Optional[str] = None  # the current job's, once all its tiles are merged

    @property
    def fingerprint(self) -> str:
        return self.captioner.fingerprint

    # -- paths and jobs ---------------------------------------------------------------------------
    def to_cluster(self, path: str) -> str:
        return to_cluster(path, self.path_map)

    def _submit(self, sid: str, command: str, file: str) -> None:
        """Submit (or find) job `sid`; a finished job of that id is replaced (it is asked again only
        for what it left undone: failed tiles, or work it never did)."""
        status = self.api.status(sid)
        if status in FINAL:
            self.api.delete(sid)
            status = None
        if status is None:
            entry = f"{self.python} -m {_RUN_MODULE} {command} {shlex.quote(self.to_cluster(file))}"
            self.api.submit(sid, entry, {"py_modules": self.py_modules}, metadata={"source": "semantic-imagery-search"})

    def _wait(self, sid: str, is_canceled: CancelFn = lambda: False, limit_s: Optional[float] = None) -> str:
        deadline = time.monotonic() + (self.stall_timeout_s if limit_s is None else limit_s)
        while True:
            status = self.api.status(sid)
            if status in FINAL:
                return str(status)
            if is_canceled():
                self.api.stop(sid)
                raise Canceled()
            if time.monotonic() > deadline:
                if limit_s is not None:
                    return str(status)
                raise EngineError(f"Ray job {sid} is still {status} after {self.stall_timeout_s:.0f} s")
            time.sleep(self.poll_s)

    def _failure(self, sid: str, status: Optional[str]) -> EngineError:
        if status is None:
            return EngineError(f"Ray job {sid} is unknown to the cluster at {self.api.url} (was it restarted?); run"
                               " again to resume")
        last = self.api.last_log_line(sid) or (self.api.info(sid) or {}).get("message", "")
        return EngineError(f"Ray job {sid} {status}: {str(last).splitlines()[0] if last else 'no log'}"[:500])

    def _fingerprint(self) -> str:
        """The captioner's fingerprint as the cluster builds it, asked once per captioner and code."""
        key = _digest([self.request["spec"], self.request["options"], self.py_modules])
        out = os.path.join(self.shared_dir, "fingerprints", f"{key}.json")
        got = read_json(out)
        if not (isinstance(got, dict) and got.get("fingerprint")):
            req = os.path.join(self.shared_dir, "fingerprints", f"{key}.request.json")
            write_json_atomic(req, {**self.request, "out": self.to_cluster(out)})
            sid = f"sis-fp-{key}"
            self.notify("asking the cluster for the captioner's fingerprint")
            self._submit(sid, "fingerprint", req)
            status = self._wait(sid)
            got = read_json(out)
            if status != "SUCCEEDED" or not (isinstance(got, dict) and got.get("fingerprint")):
                raise self._failure(sid, status)
        return str(got["fingerprint"])

    # -- planning ---------------------------------------------------------------------------------
    def prepare(self, work: Sequence[tuple[Any, Sequence[TileRef]]], params: Any) -> None:
        self.need = {r.tile_id: r for _, refs in work for r in refs}
        self.remaining = set(self.need)
        self.dirs, self.sid, self.job_dir, self.final_status = [], None, None, None
        if not self.need:
            return
        state_path = os.path.join(self.index_dir, STATE_FILE)
        prev = read_json(state_path)
        if isinstance(prev, dict) and prev.get("fingerprint") == self.fingerprint and os.path.isdir(prev.get("dir", "")):
            # Earlier jobs of this index (stopped, failed, replaced) may hold shards not merged yet.
            older = [d for d in prev.get("dirs", []) if d != prev["dir"] and os.path.isdir(d)][-MAX_CHAIN:]
            status = self.api.status(prev["sid"])
            planned = {row[0] for row in (read_json(os.path.join(prev["dir"], MANIFEST)) or {}).get("tiles", [])}
            missing = set(self.need) - self._covered(older)
            # A running job covers what it planned; a finished one what its shards hold (not its failed rows).
            if (status in ACTIVE and missing <= planned) or (status == "SUCCEEDED" and missing <= self._covered([prev["dir"]])):
                self.sid, self.dirs, self.job_dir = prev["sid"], older + [prev["dir"]], prev["dir"]  # re-attach
                self.notify(f"attached to Ray job {self.sid} ({status})")
                return
            if status in ACTIVE:
                self.api.stop(prev["sid"])  # another plan now; what it wrote is merged below
            self.dirs = older + [prev["dir"]]
        covered = self._covered(self.dirs)
        todo = [(info, [r for r in refs if r.tile_id not in covered]) for info, refs in work]
        todo = [(info, refs) for info, refs in todo if refs]
        if not todo:
            return
        tiles = sorted(r.tile_id for _, refs in todo for r in refs)
        key = [self.index_dir, self.fingerprint, self.request["embedder_fingerprint"], tiles]
        if self.request["document_graph"] != "fp32":  # never re-attach shards of another graph (fp32 keeps old ids)
            key.append(self.request["document_graph"])
        self.sid = sid = f"sis-{_digest(key)}"
        job_dir = os.path.join(self.shared_dir, "jobs", sid)
        infos = {}
        for info, _ in todo:
            d = info.to_dict()
            d["path"] = self.to_cluster(info.path)
            infos[info.raster_id] = d
        manifest = {**self.request, "fingerprint": self.fingerprint, "dim": self.dim, "params": params.to_dict(),
                    "out_dir": self.to_cluster(job_dir), "infos": infos,
                    "tiles": [ref_to_json(r) for _, refs in todo for r in refs]}
        if self.api.status(sid) not in ACTIVE:  # resubmitted into its folder: the failed tiles are read again
            for name in drop_failed_shards(job_dir):
                self._index.pop(os.path.join(job_dir, name), None)
                self._merged = {m for m in self._merged if m[0] != os.path.join(job_dir, name)}
        write_json_atomic(os.path.join(job_dir, MANIFEST), manifest)
        write_json_atomic(state_path, {"sid": sid, "dir": job_dir, "dirs": [d for d in self.dirs if d != job_dir] + [job_dir],
                                       "fingerprint": self.fingerprint, "dashboard_url": self.api.url})
        self._submit(sid, "run", os.path.join(job_dir, MANIFEST))
        self.job_dir = job_dir
        if job_dir not in self.dirs:
            self.dirs.append(job_dir)
        self.notify(f"submitted Ray job {sid}: {len(tiles)} tiles")

    def _covered(self, dirs: Sequence[str]) -> set[str]:
        """Tiles the shards of `dirs` settle (captioned or empty; a failed row is to be read again)."""
        return {tid for d in dirs for name in list_shards(d) for tid, _, failed in self._tiles(os.path.join(d, name))
                if not failed}

    def _tiles(self, path: str) -> list[tuple[str, str, bool]]:
        if path not in self._index:
            self._index[path] = shard_rows(path)
        return self._index[path]

    # -- merging ----------------------------------------------------------------------------------
    def run(self, info: Any, params: Any, refs: Sequence[TileRef], is_canceled: CancelFn,
            on_error: Optional[Callable[[TileRef, str], None]] = None,
            on_empty: Optional[Callable[[TileRef], None]] = None) -> Iterator[CaptionedBatch]:
        rid = info.raster_id
        if any(r.tile_id not in self.need for r in refs):
            self.prepare([(info, refs)], params)  # not part of the prepared plan: a job of its own
        want = {r.tile_id: r for r in refs}
        last_change, final, shards_seen = time.monotonic(), None, 0
        while want:
            if is_canceled():
                raise Canceled()
            progressed = False
            shards = [os.path.join(d, n) for d in self.dirs for n in list_shards(d)]
            if len(shards) != shards_seen:
                shards_seen = len(shards)
                self.notify(merging(len({p for p, _ in self._merged}), shards_seen))
            for path in shards:
                if is_canceled():
                    raise Canceled()
                if (path, rid) in self._merged or not any(r == rid and t in want for t, r, _ in self._tiles(path)):
                    continue
                done, empty, failed = read_shard(path, rid, want, self.fingerprint, self.dim)
                self._merged.add((path, rid))
                progressed = True
                if os.path.dirname(path) != self.job_dir:
                    failed = []  # an earlier job's: those tiles are in the current job (or settled by now)
                self.remaining.difference_update(empty)
                self.remaining.difference_update(t for t, _, _ in done)
                for tid, why in failed:
                    if on_error is None:
                        raise EngineError(f"{info.name}: {why}")
                    self.remaining.discard(tid)
                    on_error(want.pop(tid), why)
                for tid in empty:
                    ref = want.pop(tid)
                    if on_empty is not None:
                        on_empty(ref)
                if done:
                    yield [want.pop(t) for t, _, _ in done], [v for _, v, _ in done], [a for _, _, a in done]
            if not want:
                break
            if progressed:
                last_change = time.monotonic()
                continue
            if self.sid is None:
                raise EngineError(f"{len(want)} tiles of {info.name} are in no shard of the earlier Ray jobs; run again")
            if final is not None:  # the job ended and its last shards are merged: tiles are missing
                if final == "SUCCEEDED":
                    raise EngineError(f"Ray job {self.sid} succeeded but {len(want)} tiles of {info.name} are in none"
                                      " of its shards; run again to resume")
                raise self._failure(self.sid, None if final == "UNKNOWN" else final)
            status = self.api.status(self.sid)
            if status in FINAL or status is None:
                final = status or "UNKNOWN"  # scan once more: shards written just before the end
                continue
            if time.monotonic() - last_change > self.stall_timeout_s:
                raise EngineError(f"Ray job {self.sid} wrote no shard for {self.stall_timeout_s:.0f} s; run again"
                                  " to resume")
            time.sleep(self.poll_s)
        if self.sid and not self.remaining:  # all merged: the job ends on its own (its last shard is written)
            status = self.final_status = self._wait(self.sid, is_canceled, limit_s=60.0)
            self.notify(f"Ray job {self.sid} {status}, all its shards merged")

    def remove_merged(self, settled: Callable[[str], Any]) -> Optional[str]:
        """Delete what the shared folder holds for this index and the index already has (see
        `remove_merged_shards`); call it only after a run that ended well and whose writes are committed,
        under the writer lock. Skipped (None) with `keep_shards`, while tiles are not merged, unless the
        current job SUCCEEDED, and while any job of the chain is still pending or running. Never raises:
        a folder that cannot be cleaned is left as it is (the next run reads it as before)."""
        if self.keep_shards or not self.dirs or self.remaining:
            return None
        if self.sid is not None and self.final_status != "SUCCEEDED":
            return None
        try:
            if any(self.api.status(os.path.basename(d)) in ACTIVE for d in self.dirs):
                return None
            n, size, gone = remove_merged_shards(self.dirs, settled)
        except (OSError, EngineError) as exc:
            return f"merged Ray job shards left in {os.path.dirname(self.dirs[-1])}: {exc}"[:300]
        if not n and not gone:
            return None
        line = (f"removed {n} merged Ray job shard(s) ({size / 1e6:.1f} MB)"
                + (f" and {len(gone)} job folder(s) with their manifest" if gone else "")
                + f" from {os.path.dirname(self.dirs[-1])}")
        log.info(line)
        return line

    def close(self) -> None:
        """Stop a job this engine leaves unfinished (cancel, an error); a job whose tiles are all
        merged is left to end on its own."""
        sid, self.sid = self.sid, None
        if sid is None or not self.remaining:
            return
        try:
            if self.api.status(sid) in ACTIVE:
                self.api.stop(sid)
        except EngineError:
            pass
