"""What `SearchIndex`'s table helpers (`RasterRows`, `TileRows`) hold: the index that owns them.

The index owns one helper per group of tables (composition, not mixins); a helper reads the
connection, the vector size and the schema's features through it and writes in its transactions.
"""

from __future__ import annotations

import sqlite3
from typing import Any


class TablePart:
    """A group of an index's tables; `index` is the `SearchIndex` (store.py) that owns it."""

    def __init__(self, index: Any) -> None:
        self.index = index

    @property
    def conn(self) -> sqlite3.Connection:
        return self.index.conn  # type: ignore[no-any-return]

    @property
    def dim(self) -> int:
        return int(self.index.dim)

    @property
    def has_active(self) -> bool:
        return bool(self.index.has_active)

    def transaction(self) -> Any:
        """The index's write transaction (one writer; refused on a read-only index)."""
        return self.index.transaction()

    def active_sql(self, alias: str) -> str:
        return self.index.active_sql(alias)  # type: ignore[no-any-return]
