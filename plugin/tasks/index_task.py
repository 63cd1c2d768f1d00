"""Indexing as a QgsTask driving its own engine worker process.

Why its own process: a captioner that crashes or runs out of memory ends that process only; the task
fails with a message and QGIS stays up. The main thread resolves layers into `RasterSource` values
before the task starts; run() only talks to the worker. Cancel: the task manager's cancel sets
isCanceled(), the client sends "cancel" and kills the process if it has not stopped after a grace
period; the index keeps what was committed and the next update resumes.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence

from qgis.core import QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from ..core.errors import Canceled
from ..core.types import RasterSource
from ..core.worker_client import WorkerClient, WorkerError

#: Keywords of index_rasters that the task passes through.
OPTION_KEYS = ("captioner", "embedder", "tiling", "captioner_options", "device", "remove_missing",
               "job_name", "force", "wait_s")


class IndexTask(QgsTask):
    """`index_finished(report)`: the engine's report dict, or {"error": msg[, "details"]}, or {"canceled": True}.

    `phase_changed(dict)` tells the dock what is happening, as it happens: {"phase": "starting" |
    "loading" | "working", "message", "done", "total", "rate" (tiles/s since the first tile),
    "eta" (seconds, or None), "raster" (the raster the message names, or "")}. A canceled job ends
    as a completed task with {"canceled": True}: QGIS must not call a cancel a failure.
    """

    index_finished = pyqtSignal(dict)
    phase_changed = pyqtSignal(dict)

    def __init__(self, description: str, index_dir: str, sources: Sequence[RasterSource], options: dict,
                 python: str, *, env: Optional[dict] = None, cancel_grace: float = 10.0) -> None:
        super().__init__(description, QgsTask.CanCancel)
        unknown = set(options) - set(OPTION_KEYS)
        if unknown:
            raise ValueError(f"unknown indexing option(s): {', '.join(sorted(unknown))}")
        self.args: dict[str, Any] = {"index_dir": index_dir, "sources": [s.to_dict() for s in sources], **options}
        self.client = WorkerClient(python, env=env, cancel_grace=cancel_grace)
        self.report: dict[str, Any] = {}
        self.message = ""
        self.names = [s.name or "" for s in sources]
        self._t_first: Optional[float] = None
        self._done_first = 0

    def _phase(self, phase: str, message: str, done: int = 0, total: int = 0) -> None:
        rate, eta = 0.0, None
        if phase == "working":
            now = time.monotonic()
            if self._t_first is None:
                self._t_first, self._done_first = now, done
            elif now > self._t_first and done > self._done_first:
                rate = (done - self._done_first) / (now - self._t_first)
                eta = (total - done) / rate if rate > 0 else None
        raster = next((n for n in self.names if n and message.startswith(f"{n}:")), "")
        self.phase_changed.emit({"phase": phase, "message": message, "done": done, "total": total,
                                 "rate": rate, "eta": eta, "raster": raster})

    def _on_event(self, event: dict) -> None:
        if event.get("event") != "progress":
            return
        total, done = int(event.get("total") or 0), int(event.get("done") or 0)
        self.message = str(event.get("message") or "")
        if total > 0:
            self.setProgress(min(100.0, 100.0 * done / total))
            self._phase("working", self.message, done, total)
        else:
            self._phase("loading", f"{self.message or 'loading models'}…")

    def run(self) -> bool:
        try:
            self._phase("starting", "starting the engine…")
            self.client.start()
            if self.isCanceled():
                raise Canceled()
            self._phase("loading", "loading the captioner and embedder…")
            self.report = self.client.request("index", self.args, on_event=self._on_event, is_canceled=self.isCanceled)
            return True
        except Canceled:
            self.report = {"canceled": True}
            return True
        except WorkerError as exc:
            self.report = {"error": str(exc), "details": exc.details}
            return False
        except Exception as exc:  # EngineError, WorkerCrashed: the message is the story
            text = str(exc).strip()
            self.report = {"error": text.splitlines()[0] if text else type(exc).__name__}
            return False
        finally:
            try:
                self.client.stop(timeout=5.0)
            except Exception:  # stopping must not replace the job's outcome
                self.client.kill()

    def finished(self, result: bool) -> None:
        if not self.report:
            self.report = {"canceled": True} if self.isCanceled() else {"error": "the indexing task ended without a report"}
        self.index_finished.emit(dict(self.report))
