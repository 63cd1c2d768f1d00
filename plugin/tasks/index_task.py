"""Indexing as a QgsTask driving its own engine worker process.

Why its own process: a captioner that crashes or runs out of memory ends that process only; the task
fails with a message and QGIS stays up. The main thread resolves layers into `RasterSource` values
before the task starts; run() only talks to the worker. Cancel: the task manager's cancel sets
isCanceled(), the client sends "cancel" and kills the process if it has not stopped after a grace
period; the index keeps what was committed and the next update resumes.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from qgis.core import QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from ..core.errors import Canceled, EngineError
from ..core.index_request import IndexRequest
from ..core.types import RasterSource
from ..core.worker.worker_client import WorkerClient, WorkerError


class IndexTask(QgsTask):
    """`index_finished(report)`: the engine's report dict, or {"error": msg[, "details"]}, or {"canceled": True}.

    `phase_changed(dict)` tells the dock what is happening, as it happens: {"phase": "engine" (the
    worker process starts) | "planning" | "loading" | "starting" (Ray workers: "ready"/"workers") |
    "captioning" | "merging", "message", "done", "total", "rate" (tiles/s), "eta" (seconds, or None),
    "raster" (the raster the message names, or "")}. Rate and ETA come from the engine
    (core/indexing/progress.py), the same for every executor. A canceled job ends as a completed
    task with {"canceled": True}: QGIS must not call a cancel a failure.

    `env`: the worker's environment (a Ray token travels only there, see gui/settings/cluster_settings.py).
    """

    index_finished = pyqtSignal(dict)
    phase_changed = pyqtSignal(dict)

    def __init__(self, description: str, index_dir: str, sources: Sequence[RasterSource], options: dict,
                 python: str, *, env: Optional[dict] = None, cancel_grace: float = 10.0) -> None:
        super().__init__(description, QgsTask.CanCancel)
        try:  # checked here, on the main thread: a bad option never reaches the worker
            request = IndexRequest.from_dict({"index_dir": index_dir, "sources": list(sources), **options})
        except EngineError as exc:
            raise ValueError(f"indexing options: {exc}") from None
        self.args: dict[str, Any] = request.to_dict()
        self.client = WorkerClient(python, env=env, cancel_grace=cancel_grace)
        self.report: dict[str, Any] = {}
        self.message = ""
        self.names = [s.name or "" for s in sources]

    def _phase(self, phase: str, message: str, done: int = 0, total: int = 0, extra: Optional[dict] = None) -> None:
        extra = extra or {}
        raster = next((n for n in self.names if n and message.startswith(f"{n}:")), "")
        eta = extra.get("eta_s")
        self.phase_changed.emit({"phase": phase, "message": message, "done": done, "total": total,
                                 "rate": float(extra.get("rate") or 0.0), "eta": None if eta is None else float(eta),
                                 "raster": raster, "ready": extra.get("ready"), "workers": extra.get("workers")})

    def _on_event(self, event: dict) -> None:
        if event.get("event") != "progress":
            return
        total, done = int(event.get("total") or 0), int(event.get("done") or 0)
        self.message = str(event.get("message") or "")
        phase = str(event.get("phase") or ("captioning" if total > 0 else "loading"))
        extra = {k: event.get(k) for k in ("rate", "eta_s", "ready", "workers")}
        if total > 0:
            self.setProgress(min(100.0, 100.0 * done / total))
            self._phase(phase, self.message, done, total, extra)
        else:
            self._phase(phase, f"{self.message or 'loading models'}…", extra=extra)

    def run(self) -> bool:
        try:
            self._phase("engine", "starting the engine…")
            self.client.start()
            if self.isCanceled():
                raise Canceled()
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
