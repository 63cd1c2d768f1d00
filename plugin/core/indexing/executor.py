"""The executor seam: how planned tiles become captioned, embedded batches.

The job plans, checks the caption cache and commits; an executor only reads the tiles it is given,
captions and embeds them, and yields batches in any order. `local` does it in this process (the
default); other executors (a Ray cluster) plug in here without touching planning or the writer.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

import numpy as np

from ..types import CancelFn, CaptionVariant, TileRef

#: One executor result: tile refs, their caption variants and one (n_variants, dim) array per tile.
CaptionedBatch = tuple[list[TileRef], list[list[CaptionVariant]], list[np.ndarray]]


class Executor(Protocol):
    def run(self, info: Any, params: Any, refs: Sequence[TileRef], is_canceled: CancelFn,
            on_error: Optional[Callable[[TileRef, str], None]] = None,
            on_empty: Optional[Callable[[TileRef], None]] = None) -> Iterator[CaptionedBatch]:
        """Yield captioned batches for `refs` (tiles the reader skips as empty are never yielded;
        tiles it cannot read go to `on_error(ref, reason)`, possibly from another thread). Empty
        tiles go to `on_empty(ref)` (any thread), so they count as progress and are recorded
        (updates then skip them without reading)."""
        ...

    def close(self) -> None:
        ...


EXECUTORS = ("local", "ray", "ray-job")
