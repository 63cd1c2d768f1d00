"""What a running indexing job shows: the status line, the progress bar and the layer rows.

Phases come from the task (tasks/index_task.py) as the engine reports them: planning, loading,
starting workers k/n ready (a Ray cluster), captioned x/N with rate and ETA (computed once, in
core/indexing/progress.py, for every executor), merging shards (Ray job mode). A timer redraws
every second so the elapsed time moves between tiles.
"""

from __future__ import annotations

import time
from typing import Callable

from qgis.PyQt.QtCore import QObject, QTimer

from ...core.progress_text import describe, duration


class IndexProgressView(QObject):
    def __init__(self, widget, session, set_status, active: Callable[[], bool], parent=None) -> None:
        super().__init__(parent)
        self.widget, self.session, self.set_status, self.active = widget, session, set_status, active
        self.where = ""  # "" (this computer) or "on Ray cluster host:port"
        self._phase: dict = {}
        self._keys: list[str] = []
        self._names: dict[str, str] = {}
        self._seen: list[str] = []
        self._t_start = 0.0
        self._workers = (0, 0)  # Ray caption workers (ready, most)
        self._ticker = QTimer(self)
        self._ticker.setInterval(1000)
        self._ticker.timeout.connect(self.show)

    def start(self, keys: list[str], names: dict[str, str], where: str = "") -> None:
        self._keys, self._names, self.where = list(keys), dict(names), where
        self._seen, self._phase, self._workers = [], {}, (0, 0)
        self._t_start = time.monotonic()
        self._ticker.start()

    def stop(self) -> None:
        self._ticker.stop()

    def on_phase(self, phase: dict) -> None:
        """Rows: only the raster being worked on shows a percentage; earlier ones are done."""
        if not self.active():
            return
        if phase.get("workers"):
            self._workers = (int(phase.get("ready") or 0), int(phase["workers"]))
        if phase.get("phase") == "starting" and self._phase.get("phase") == "captioning":
            self.show()  # a pool that grows while tiles are captioned: the counts stay, "k/n workers" moves
            return
        self._phase = dict(phase)
        raster = str(phase.get("raster") or "")
        if raster and raster not in self._seen:
            self._seen.append(raster)
        done, total = int(phase.get("done") or 0), int(phase.get("total") or 0)
        pct = int(100 * done / total) if total else 0
        for key in self._keys:
            name = self._names.get(key, "")
            if name and name == raster:
                self.widget.set_state(key, f"indexing {pct}% of the job")
            elif name in self._seen:
                self.widget.set_state(key, "indexed (finishing the job)")
        self.show()

    def text(self) -> str:
        p = self._phase
        done, total = int(p.get("done") or 0), int(p.get("total") or 0)
        text = describe(done, total, {"phase": p.get("phase"), "rate": p.get("rate"), "eta_s": p.get("eta")})
        if text:
            text = text[:1].upper() + text[1:]
            if self._workers[1]:
                text += f" · {self._workers[0]}/{self._workers[1]} workers"
        elif p.get("phase") == "starting" and p.get("workers"):
            text = f"Starting workers: {int(p.get('ready') or 0)}/{int(p['workers'])} ready (loading models)"
        else:
            text = str(p.get("message") or "Starting the engine…")
            text = text[:1].upper() + text[1:]
        if self.where:
            text += f" · {self.where}"
        return text + f" · {duration(time.monotonic() - self._t_start)} elapsed"

    def show(self) -> None:
        """Status line and progress bar (also every second from the timer)."""
        if not self.active():
            self._ticker.stop()
            return
        text = self.text()
        self.widget.set_progress(text, int(self._phase.get("done") or 0), int(self._phase.get("total") or 0))
        self.session.job_text = f"Indexing: {text}"
        self.set_status(self.session.status_text())
