"""Progress phases of an indexing job, and its rate and ETA, computed in one place for every executor.

The engine's progress callback stays `progress(done, total, message)`; a phase travels as a
`PhaseMessage`, a `str` that also carries the phase's fields, so a caller that prints the message
(the CLI's bar) keeps working and one that wants the fields (the worker protocol) reads `.info`:

  planning   {"phase": "planning"}
  loading    {"phase": "loading"}                                  (captioner / embedder / server)
  starting   {"phase": "starting", "ready": k, "workers": n}       (Ray caption workers k/n ready)
  captioning {"phase": "captioning", "rate": tiles/s, "eta_s": s or None}
  merging    {"phase": "merging", "shards": x, "shards_total": S}  (job mode)
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Optional

from ..progress_text import describe, duration  # noqa: F401 - the text side, importable by the QGIS side
from ..types import ProgressFn

PHASES = ("planning", "loading", "starting", "captioning", "merging")
#: Rate over the last this many seconds (a job that sped up or slowed down shows it within a minute).
RATE_WINDOW_S = 60.0
#: No rate before this many seconds of counts: results that arrive in a burst (a cluster's first
#: batches) would otherwise show a rate many times the real one.
MIN_SPAN_S = 2.0


class PhaseMessage(str):
    """A progress message that carries its phase's fields in `.info`."""

    info: dict[str, Any]

    def __new__(cls, text: str, **info: Any) -> PhaseMessage:
        obj = super().__new__(cls, text)
        obj.info = dict(info)
        return obj


def phase_info(message: Any) -> dict[str, Any]:
    """The fields a message carries ({} for a plain string)."""
    info = getattr(message, "info", None)
    return dict(info) if isinstance(info, dict) else {}


def planning(text: str = "planning") -> PhaseMessage:
    return PhaseMessage(text, phase="planning")


def loading(text: str) -> PhaseMessage:
    return PhaseMessage(text, phase="loading")


def starting_workers(ready: int, workers: int) -> PhaseMessage:
    ready = max(0, min(int(ready), int(workers)))  # a restarted actor reports twice
    return PhaseMessage(f"starting workers {ready}/{workers} ready", phase="starting", ready=ready, workers=int(workers))


def merging(shards: int, shards_total: int) -> PhaseMessage:
    return PhaseMessage(f"merging shards {shards}/{shards_total}", phase="merging", shards=int(shards),
                        shards_total=int(shards_total))


class RateMeter:
    """Tiles per second over the last `window_s` seconds, and the seconds left at that rate.

    The clock starts at the first update (captioning has begun: models are loaded), so model load
    time never dilutes the rate. No rate (0.0, ETA None) until a tile was done after that start."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, window_s: float = RATE_WINDOW_S) -> None:
        self.clock, self.window_s = clock, float(window_s)
        self._samples: deque[tuple[float, int]] = deque()

    def update(self, done: int, total: int) -> tuple[float, Optional[float]]:
        now = self.clock()
        s = self._samples
        if s and done < s[-1][1]:  # a new count (another job on this meter): start again
            s.clear()
        s.append((now, int(done)))
        # keep one sample at or before the window's start, so the window is always covered
        while len(s) > 2 and s[1][0] <= now - self.window_s:
            s.popleft()
        t0, d0 = s[0]
        if now - t0 < MIN_SPAN_S or done <= d0:
            return 0.0, None
        rate = (done - d0) / (now - t0)
        return rate, max(0.0, (total - done) / rate)


def captioning(progress: ProgressFn, meter: Optional[RateMeter] = None) -> ProgressFn:
    """Wrap the job's progress so every count becomes a captioning event with rate and ETA."""
    m = meter or RateMeter()

    def report(done: int, total: int, message: str) -> None:
        if not total:
            progress(done, total, message)
            return
        rate, eta = m.update(done, total)
        extra = phase_info(message)
        extra.pop("phase", None)
        progress(done, total, PhaseMessage(str(message), phase="captioning", rate=round(rate, 4),
                                           eta_s=None if eta is None else round(eta, 1), **extra))

    return report
