"""Captioners for the Ray executor tests and the scaling benchmark (`python:tests.core.ray_captioners:<factory>`).

They wrap the real spectral captioner, so texts are the spectral ones and equivalence with the local
executor can be checked; they add what a cluster test needs: a fixed per-tile latency that uses no
CPU (a stand-in for a GPU model), and faults that fire once per marker file (a transient
ConnectionError, an actor process that exits), shared by every actor through the file system.
`fast_when=<file>`: the latency stops once that file exists, so a test that killed something
mid-run lets the rest of the job finish at once instead of waiting out the latency.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional, Sequence

from plugin.core.captioners import SpectralCaptioner


class WrappedSpectral:
    def __init__(self, variants: Optional[int] = None, batch_size: Optional[int] = None, latency: float = 0.0,
                 fail_once: Optional[str] = None, exit_once: Optional[str] = None, fault_after: int = 0,
                 fast_when: Optional[str] = None) -> None:
        self.inner = SpectralCaptioner(variants=variants, batch_size=batch_size)
        self.batch_size = self.inner.batch_size
        self.variants = self.inner.variants
        # Fault options change nothing in the captions: they are not part of the cache key.
        self.fingerprint = f"test-wrapped({self.inner.fingerprint})"
        self.latency, self.fail_once, self.exit_once, self.fault_after = float(latency), fail_once, exit_once, int(fault_after)
        self.fast_when = fast_when
        self.seen = 0

    @staticmethod
    def _first(marker: Optional[str]) -> bool:
        """True exactly once per marker file, across processes."""
        if not marker:
            return False
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        os.close(fd)
        return True

    def caption(self, tiles: Sequence[Any]) -> list:
        self.seen += len(tiles)
        if self.seen > self.fault_after:
            if self._first(self.fail_once):
                raise ConnectionError("captioner server reset the connection (test fault)")
            if self._first(self.exit_once):
                os._exit(3)  # the actor's process dies mid-batch
        if self.latency and not (self.fast_when and os.path.exists(self.fast_when)):
            time.sleep(self.latency * len(tiles))  # a GPU busy elsewhere: wall time, no CPU
        return self.inner.caption(tiles)


def wrapped(variants: Optional[int] = None, batch_size: Optional[int] = None, device: str = "auto", **options: Any) -> WrappedSpectral:
    return WrappedSpectral(variants=variants, batch_size=batch_size, **options)


def faulty(variants: Optional[int] = None, batch_size: Optional[int] = None, device: str = "auto", **options: Any) -> WrappedSpectral:
    """Faults from the cluster's environment (RAY9_FAIL_ONCE / RAY9_EXIT_ONCE marker files), so a job
    started from the CLI gets them too; they fire after the actor's first 4 tiles."""
    options.setdefault("fail_once", os.environ.get("RAY9_FAIL_ONCE"))
    options.setdefault("exit_once", os.environ.get("RAY9_EXIT_ONCE"))
    options.setdefault("fault_after", 4)
    return WrappedSpectral(variants=variants, batch_size=batch_size or 4, **options)


def slow(variants: Optional[int] = None, batch_size: Optional[int] = None, device: str = "auto", **options: Any) -> WrappedSpectral:
    """0.8 s per tile: long enough to kill things mid-run from a test (until `fast_when` exists)."""
    options.setdefault("latency", 0.8)
    return WrappedSpectral(variants=variants, batch_size=batch_size or 2, **options)
