"""What the algorithms share: their base class (group, createInstance), the warm engine workers,
progress from worker events, the engine interpreter, API keys. (The provider imports the algorithms; they import this, never the provider.)"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional

from qgis.core import QgsApplication, QgsAuthMethodConfig, QgsProcessingAlgorithm, QgsProcessingFeedback

from ..core.progress_text import describe
from ..core.worker.worker_client import WorkerClient
from ..qgis_io.engine import engine_python


class SearchAlgorithm(QgsProcessingAlgorithm):
    """The provider's algorithms: one group, and a fresh instance of the same class for each run."""

    def createInstance(self) -> QgsProcessingAlgorithm:  # noqa: N802 (QGIS API)
        return type(self)()

    def group(self) -> str:
        return "Index and search"

    def groupId(self) -> str:  # noqa: N802
        return "index_search"


_clients: dict[str, WorkerClient] = {}
_clients_lock = threading.Lock()


def shared_client(python: str) -> WorkerClient:
    """The warm worker for `python` (started on first use by the caller's request)."""
    with _clients_lock:
        client = _clients.get(python)
        if client is None:
            client = _clients[python] = WorkerClient(python)
        return client


def stop_shared_clients() -> None:
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for c in clients:
        try:
            c.stop()
        except Exception:  # unloading must go on
            c.kill()


def progress_to_feedback(feedback: Optional[QgsProcessingFeedback]) -> Callable[[dict], None]:
    """A worker on_event callback that drives the Processing progress bar and log (text at most 1/s)."""
    state = {"last": 0.0}

    def on_event(event: dict) -> None:
        if feedback is None or event.get("event") != "progress":
            return
        total, done = int(event.get("total") or 0), int(event.get("done") or 0)
        if total > 0:
            feedback.setProgress(min(100.0, 100.0 * done / total))
        now = time.monotonic()
        if now - state["last"] >= 1.0 or (total and done >= total) or event.get("phase") == "starting":
            state["last"] = now
            info = {"phase": event.get("phase"), "rate": event.get("rate"), "eta_s": event.get("eta_s")}
            # "captioned 120/3,000 tiles · 2.0 tiles/s · about 24 min left" (rate and ETA from the engine)
            counts = f" ({done}/{total})" if total else ""
            feedback.setProgressText(describe(done, total, info) or f"{event.get('message') or ''}{counts}")

    return on_event


def canceled_fn(feedback: Optional[QgsProcessingFeedback]) -> Callable[[], bool]:
    return (lambda: False) if feedback is None else feedback.isCanceled


def api_key(authcfg: str) -> Optional[str]:
    """The API key stored in QGIS's authentication database under `authcfg` (None when missing or locked)."""
    if not authcfg:
        return None
    cfg = QgsAuthMethodConfig()
    res = QgsApplication.authManager().loadAuthenticationConfig(authcfg, cfg, True)
    ok, cfg = res if isinstance(res, tuple) else (res, cfg)
    if not ok:
        return None
    return cfg.config("password") or cfg.config("token") or None


__all__ = ["api_key", "canceled_fn", "engine_python", "progress_to_feedback"]
