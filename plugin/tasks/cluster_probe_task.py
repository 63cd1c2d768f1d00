""""Test cluster" as a QgsTask: a worker of its own (the token in its environment) asks the cluster.

Its own worker, not the dock's warm one: Ray reads RAY_AUTH_TOKEN when it is imported, and a
driver's connection should not outlive the check. The dialog stays responsive; the answer arrives
through `probed(result, error)` on the main thread (error: one line, never the token).
"""

from __future__ import annotations

from typing import Any, Optional

from qgis.core import QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from ..core.worker.worker_client import WorkerClient


class ClusterProbeTask(QgsTask):
    probed = pyqtSignal(dict, str)

    def __init__(self, python: str, args: dict[str, Any], env: Optional[dict[str, str]] = None) -> None:
        super().__init__("Semantic Imagery Search: test cluster", QgsTask.CanCancel)
        self.args = dict(args)
        self.client = WorkerClient(python, env=env, cancel_grace=0)
        self.result: dict[str, Any] = {}
        self.error = ""

    def run(self) -> bool:
        try:
            self.client.start()
            self.result = dict(self.client.request("cluster_info", self.args, is_canceled=self.isCanceled) or {})
            return True
        except Exception as exc:  # EngineError, WorkerCrashed, Canceled: one line for the dialog
            text = str(exc).strip()
            self.error = text.splitlines()[0] if text else type(exc).__name__
            return False
        finally:
            try:
                self.client.stop(timeout=5.0)
            except Exception:
                self.client.kill()

    def finished(self, result: bool) -> None:
        if not self.error and not self.result:
            self.error = "cancelled" if self.isCanceled() else "the check ended without an answer"
        self.probed.emit(dict(self.result), self.error)


def summary(result: dict[str, Any]) -> str:
    """One line for the dialog: 'Ray 2.60.0 (same on both sides) · 3 nodes · 96 CPUs · 8 GPUs · token auth'."""
    cluster, client = result.get("cluster_version") or "?", result.get("client_version")
    if result.get("mismatch"):
        parts = [f"⚠ Ray version mismatch: cluster {cluster}, this engine {client} (install the same version)"]
    elif client:
        parts = [f"Ray {cluster} (same on both sides)"]
    else:
        parts = [f"Ray {cluster} on the cluster"]
    if "nodes" in result:
        n = int(result["nodes"])
        parts += [f"{n} node{'' if n == 1 else 's'}", f"{float(result.get('cpus') or 0):g} CPUs",
                  f"{float(result.get('gpus') or 0):g} GPUs"]
    parts.append("token auth accepted" if result.get("auth") == "token" else "no auth (open cluster)")
    return " · ".join(parts)
