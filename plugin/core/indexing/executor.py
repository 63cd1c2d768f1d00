"""The executor seam: how planned tiles become captioned, embedded batches.

The job plans, checks the caption cache and commits; an executor only reads the tiles it is given,
captions and embeds them, and yields batches in any order. `local` does it in this process (the
default); other executors (a Ray cluster) plug in here without touching planning or the writer.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

import numpy as np

from ..definitions import EXECUTORS as DEFINED_EXECUTORS
from ..types import CancelFn, CaptionVariant, TileRef

#: One executor result: tile refs, their caption variants and one (n_variants, dim) array per tile.
CaptionedBatch = tuple[list[TileRef], list[list[CaptionVariant]], list[np.ndarray]]


class Executor(Protocol):
    """What the job calls on an executor: every hook is declared here and given a default by
    `ExecutorBase`, so the job never probes an executor for what it can do."""

    #: called with (ready, total) while worker pools start; the job sets it (None: nobody listens)
    on_workers: Optional[Callable[[int, int], None]]
    #: a status line between commits (job mode: the job's state and shard counts); the job sets it
    notify: Callable[[str], None]
    #: True when the executor runs the whole job as one stream and wants every tile up front (`prepare`)
    streams_whole_job: bool

    def prepare(self, work: Sequence[tuple[Any, Sequence[TileRef]]], params: Any) -> None:
        """The tiles it will be asked for, per raster (only when `streams_whole_job`)."""
        ...

    def run(self, info: Any, params: Any, refs: Sequence[TileRef], is_canceled: CancelFn,
            on_error: Optional[Callable[[TileRef, str], None]] = None,
            on_empty: Optional[Callable[[TileRef], None]] = None) -> Iterator[CaptionedBatch]:
        """Yield captioned batches for `refs` (tiles the reader skips as empty are never yielded;
        tiles it cannot read go to `on_error(ref, reason)`, possibly from another thread). Empty
        tiles go to `on_empty(ref)` (any thread), so they count as progress and are recorded
        (updates then skip them without reading)."""
        ...

    def remove_merged(self, settled: Callable[[str], Any]) -> Optional[str]:
        """After a run that ended well, under the writer lock: clean up what the index now holds
        elsewhere (job mode: merged shards); one line for the report, or None."""
        ...

    def close(self) -> None:
        """Release models, pools and clusters (always called, also after an error)."""
        ...


class ExecutorBase:
    """The defaults of every hook of `Executor`; each executor derives from it."""

    on_workers: Optional[Callable[[int, int], None]] = None
    streams_whole_job = False

    def __init__(self) -> None:
        self.notify: Callable[[str], None] = _no_notice

    def prepare(self, work: Sequence[tuple[Any, Sequence[TileRef]]], params: Any) -> None:
        return None

    def run(self, info: Any, params: Any, refs: Sequence[TileRef], is_canceled: CancelFn,
            on_error: Optional[Callable[[TileRef, str], None]] = None,
            on_empty: Optional[Callable[[TileRef], None]] = None) -> Iterator[CaptionedBatch]:
        raise NotImplementedError(f"{type(self).__name__} does not run tiles")

    def remove_merged(self, settled: Callable[[str], Any]) -> Optional[str]:
        return None

    def close(self) -> None:
        return None


def _no_notice(message: str) -> None:
    """The default `notify`: nobody listens."""


EXECUTORS = DEFINED_EXECUTORS  # the names live in core/definitions.py
