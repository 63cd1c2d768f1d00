"""The base of `SearchIndex`'s table mixins (`RasterRows`, `TileRows`): what they use of the index."""

from __future__ import annotations

import sqlite3
from typing import Any


class TablePart:
    """A part of `SearchIndex` (store.py), which provides `conn`, `_write()` and `_has_active`."""

    _has_active: bool

    @property
    def conn(self) -> sqlite3.Connection:  # pragma: no cover - provided by SearchIndex
        raise NotImplementedError

    def _write(self) -> Any:  # pragma: no cover - provided by SearchIndex
        raise NotImplementedError
