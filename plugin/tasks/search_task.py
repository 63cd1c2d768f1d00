"""A query as a QgsTask on the warm worker (the embedder stays loaded between searches).

The first search starts the worker and loads the embedder; the dock says so instead of freezing,
because all of it happens here, off the main thread.
"""

from __future__ import annotations

from typing import Any

from qgis.core import QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from ..core.worker.worker_client import WorkerClient

SEARCH_KEYS = ("top", "fusion", "rasters", "bbox", "bbox_crs", "min_score", "suppress_overlaps", "embedder", "device",
               "ranker", "like")


class SearchTask(QgsTask):
    """`search_finished(hits, error)`: hits as dicts (Hit.to_dict), error "" when fine."""

    search_finished = pyqtSignal(list, str)

    def __init__(self, client: WorkerClient, index_dir: str, query: str, options: dict) -> None:
        super().__init__(f"Semantic Imagery Search: {query[:40]}", QgsTask.CanCancel)
        self.client = client
        self.args: dict[str, Any] = {"index_dir": index_dir, "query": query}
        self.args.update({k: v for k, v in (options or {}).items() if k in SEARCH_KEYS and v is not None})
        if "bbox" in self.args:
            self.args["bbox"] = [float(v) for v in self.args["bbox"]]
        self.hits: list[dict] = []
        self.error = ""

    def run(self) -> bool:
        try:
            if not self.client.alive:
                self.client.start()
            self.hits = list(self.client.request("search", self.args, is_canceled=self.isCanceled) or [])
            return True
        except Exception as exc:  # shown on the main thread by finished()
            text = str(exc).strip()
            self.error = text.splitlines()[0] if text else ("canceled" if self.isCanceled() else type(exc).__name__)
            return False

    def finished(self, result: bool) -> None:
        if not result and not self.error:
            self.error = "canceled"
        self.search_finished.emit(self.hits if result else [], self.error)
