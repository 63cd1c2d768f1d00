"""What the dock shares between its panels: the project's index folder, the warm worker and its queue.

The warm worker process (E1's WorkerClient) keeps the embedder loaded between searches. Its
`request` is blocking and one-at-a-time, so every call goes through `WorkerQueue`: one QgsTask at a
time, a newer search replaces a pending one, and nothing here ever waits on the main thread.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional

from qgis.core import QgsApplication, QgsProject, QgsTask
from qgis.PyQt.QtCore import QObject, pyqtSignal

from .messages import log


class WorkerCallTask(QgsTask):
    """One `client.request(cmd, args)` off the main thread; `call_finished(result, error)` on it."""

    call_finished = pyqtSignal(object, str)

    def __init__(self, client: Any, cmd: str, args: dict, description: str = "") -> None:
        super().__init__(description or f"Semantic Imagery Search: {cmd}", QgsTask.Flag.CanCancel)
        self.client, self.cmd, self.args = client, cmd, args
        self.result: Any = None
        self.error = ""

    def run(self) -> bool:
        try:
            if not self.client.alive:
                self.client.start()
            self.result = self.client.request(self.cmd, self.args, is_canceled=self.isCanceled)
            return True
        except Exception as exc:  # reported on the main thread by finished()
            self.error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return False

    def finished(self, result: bool) -> None:
        if not result and not self.error:
            self.error = "canceled"
        self.call_finished.emit(self.result, self.error)


class WorkerQueue(QObject):
    """Runs tasks that use the warm worker one after the other."""

    busy_changed = pyqtSignal(bool)

    def __init__(self, python_fn: Callable[[], str], parent=None) -> None:
        super().__init__(parent)
        self._python_fn = python_fn
        self._client: Any = None
        self._current: Optional[QgsTask] = None
        self._pending: list[tuple[Optional[str], Callable[[Any], QgsTask]]] = []
        self._closed = False

    @property
    def client(self) -> Any:
        python = self._python_fn()
        if self._client is not None and self._client.python != python:
            # the engine changed (Set up engine, Check and use): a worker started on the old interpreter
            # -- perhaps one that cannot import numpy -- must not serve the new engine's requests
            try:
                self._client.stop()
            except Exception as exc:
                log(f"stopping the old engine worker: {exc}")
            self._client = None
        if self._client is None:
            from ..core.worker.worker_client import WorkerClient

            env = dict(os.environ)
            env.setdefault("TOKENIZERS_PARALLELISM", "false")
            # One query at a time needs no intra-op threads; on a busy CPU, torch's spinning
            # threads made a single MiniLM query take 1.4 s instead of 12 ms (measured, 2 cores).
            env.setdefault("OMP_NUM_THREADS", "1")
            env.setdefault("MKL_NUM_THREADS", "1")
            self._client = WorkerClient(python, env=env)
        return self._client

    @property
    def warm(self) -> bool:
        return self._client is not None and bool(self._client.alive)

    @property
    def busy(self) -> bool:
        return self._current is not None

    def submit(self, make_task: Callable[[Any], QgsTask], key: Optional[str] = None) -> None:
        """Queue a task factory; with `key`, a queued task of the same key is replaced (newest query wins)."""
        if self._closed:
            return
        if key is not None:
            self._pending = [p for p in self._pending if p[0] != key]
        self._pending.append((key, make_task))
        self._start_next()

    def call(self, cmd: str, args: dict, on_done: Callable[[Any, str], None], key: Optional[str] = None) -> None:
        def make(client: Any) -> QgsTask:
            task = WorkerCallTask(client, cmd, args)
            task.call_finished.connect(on_done)
            return task

        self.submit(make, key=key or cmd)

    def _start_next(self) -> None:
        if self._current is not None or not self._pending or self._closed:
            return
        _key, make = self._pending.pop(0)
        try:
            task = make(self.client)
        except Exception as exc:
            log(f"could not start a worker task: {exc}")
            self._start_next()
            return
        self._current = task
        task.taskCompleted.connect(self._on_done)
        task.taskTerminated.connect(self._on_done)
        self.busy_changed.emit(True)
        QgsApplication.taskManager().addTask(task)

    def _on_done(self) -> None:
        self._current = None
        self.busy_changed.emit(False)
        self._start_next()

    def close(self) -> None:
        """Cancel what is queued or running and stop the worker process."""
        self._closed = True
        self._pending.clear()
        if self._current is not None:
            try:
                self._current.cancel()
            except RuntimeError:
                pass
        if self._client is not None:
            try:
                self._client.stop()
            except Exception as exc:
                log(f"stopping the engine worker: {exc}")
            self._client = None


def short_name(fingerprint: object) -> str:
    """"spectral|v3|variants=5" -> "spectral"; "st:all-MiniLM-L6-v2@1229...:dim=384" -> "all-MiniLM-L6-v2"."""
    text = str(fingerprint or "").split("|")[0].split("@")[0]
    text = text.split(":", 1)[1] if text.startswith(("st:", "hf:")) else text
    return os.path.basename(text.rstrip("/")) or text


class EngineSession(QObject):
    """The project's index folder and the last known index state, shared by both panels."""

    index_dir_changed = pyqtSignal(str)
    info_changed = pyqtSignal(dict)
    #: "cold" (not loaded), "loading", "ready" or "failed: <why>"
    embedder_state_changed = pyqtSignal(str)

    def __init__(self, iface, project: Optional[QgsProject] = None, parent=None) -> None:
        super().__init__(parent)
        self.iface = iface
        self.project = project or QgsProject.instance()
        self._index_dir: Optional[str] = None
        self.info: dict = {}
        self.last_outcome = ""
        #: what a running indexing job is doing; the status line shows it instead of the index summary
        self.job_text = ""
        self.embedder_state = "cold"
        self.embedder_since = 0.0
        self.warm_seconds = 0.0
        self.queue = WorkerQueue(self.python, self)

    @staticmethod
    def python() -> str:
        from ..qgis_io.engine import engine_python

        return engine_python()

    def index_dir(self) -> str:
        """The project's index folder (created on first use; a temp folder while the project is unsaved)."""
        if self._index_dir is None:
            from ..qgis_io.project_index import index_dir_for_project

            self._index_dir = index_dir_for_project(self.project)
            self.index_dir_changed.emit(self._index_dir)
        return self._index_dir

    def set_index_dir(self, path: Optional[str]) -> None:
        if path != self._index_dir:
            self._index_dir = path
            self.info = {}
            if path:
                self.index_dir_changed.emit(path)

    def reset(self) -> None:
        """The project was cleared or another one read: forget the folder, resolve it again lazily."""
        self._index_dir = None
        self.info = {}
        self.last_outcome = ""
        self.info_changed.emit({})
        if self.embedder_state != "loading":
            self.set_embedder_state("cold")

    # --- the embedder in the warm worker ------------------------------------------------------
    def set_embedder_state(self, state: str) -> None:
        if state != self.embedder_state:
            self.embedder_state = state
            self.embedder_since = time.monotonic()
            self.embedder_state_changed.emit(state)

    def embedder_ready(self) -> bool:
        return self.embedder_state == "ready" and self.queue.warm

    def preload(self) -> bool:
        """Load the embedder in the background (an indexed project just opened); False when not needed."""
        if not (self.info or {}).get("exists") or self.embedder_ready() or self.embedder_state == "loading":
            return False
        index_dir = self.index_dir()
        self.set_embedder_state("loading")

        def done(result: Any, error: str) -> None:
            if error:
                log(f"loading the embedder for {index_dir}: {error}")
                self.set_embedder_state(f"failed: {error}")
            else:
                self.warm_seconds = float((result or {}).get("seconds", 0.0)) if isinstance(result, dict) else 0.0
                self.set_embedder_state("ready")

        self.queue.call("warm", {"index_dir": index_dir}, done, key="warm")
        return True

    def refresh_info(self, on_done: Optional[Callable[[dict], None]] = None) -> None:
        index_dir = self.index_dir()

        def done(result: Any, error: str) -> None:
            if error:
                log(f"index info for {index_dir}: {error}")
            if isinstance(result, dict) and index_dir == self._index_dir:
                self.info = result
                self.info_changed.emit(result)
                self.preload()
            if on_done is not None:
                on_done(self.info)

        self.queue.call("info", {"index_dir": index_dir}, done, key="info")

    def status_text(self) -> str:
        if self.job_text:
            return self.job_text
        info = self.info or {}
        if not info.get("exists"):
            text = "No index yet: tick raster layers in the Index tab and press Index."
        else:
            rasters = info.get("rasters") or []
            caps = info.get("captioners") or sorted({str(r.get("captioner_fp", "")).split("|")[0] for r in rasters} - {""})
            caps = caps if isinstance(caps, (list, tuple)) else [caps]
            cap = ", ".join(sorted({short_name(c) for c in caps}))
            emb = short_name(info.get("embedder") or "")
            text = (
                f"{int(info.get('tiles', 0)):,} tiles, {int(info.get('variants', 0)):,} caption variants "
                f"in {len(rasters)} raster(s) · captioner {cap or '-'} · embedder {emb or '-'}"
            )
        if self.last_outcome:
            text += f" · last job: {self.last_outcome}"
        return text

    def close(self) -> None:
        self.queue.close()
