"""The rasters table of an index: registration, states, lookups (a part of `SearchIndex`)."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

from ..errors import IndexStoreError
from .table_part import TablePart

RASTER_STATES = ("indexing", "indexed", "stale")


class RasterRows(TablePart):
    """The rasters table (`SearchIndex.rasters`)."""

    # ---- rasters ------------------------------------------------------------------------------
    def upsert_raster(self, info: Any, captioner_fp: str, params: dict) -> None:
        """Register or update a raster (path, name, metadata) and mark it "indexing".

        A new captioner makes the other captioners' captions of this raster unsearchable (their
        embeddings are dropped, the captions stay as cache).
        """
        d = info.to_dict() if hasattr(info, "to_dict") else dict(info)
        rid = str(d["raster_id"])
        now = time.time()
        name = str(d.get("name") or os.path.basename(str(d["path"])))
        with self.transaction() as c:
            c.execute(
                "INSERT INTO rasters (raster_id, path, name, crs_wkt, info, captioner_fp, params, state, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'indexing', ?, ?) ON CONFLICT(raster_id) DO UPDATE SET path = excluded.path,"
                " name = excluded.name, crs_wkt = excluded.crs_wkt, info = excluded.info, captioner_fp = excluded.captioner_fp,"
                " params = excluded.params, state = 'indexing', updated_at = excluded.updated_at",
                (rid, str(d["path"]), name, d.get("crs_wkt"), json.dumps(d, default=str), captioner_fp,
                 json.dumps(params or {}, sort_keys=True, default=str), now, now),
            )
            c.execute(
                "DELETE FROM embeddings WHERE caption_id IN (SELECT c.caption_id FROM captions c JOIN tiles t"
                " ON t.tile_id = c.tile_id WHERE t.raster_id = ? AND c.captioner_fp != ?)", (rid, captioner_fp),
            )

    def raster_rows(self) -> list[dict]:
        """Every raster with its state, captioner and counts of tiles and current-captioner variants."""
        rows = self.conn.execute(
            "SELECT r.raster_id, r.path, r.name, r.crs_wkt, r.state, r.captioner_fp, r.params, r.info, r.updated_at,"
            f" (SELECT COUNT(*) FROM tiles t WHERE t.raster_id = r.raster_id AND {self.active_sql('t')}),"
            " (SELECT COUNT(*) FROM captions c JOIN tiles t ON t.tile_id = c.tile_id"
            f"   WHERE t.raster_id = r.raster_id AND c.captioner_fp = r.captioner_fp AND {self.active_sql('t')}),"
            " (SELECT COUNT(*) FROM embeddings e JOIN captions c ON c.caption_id = e.caption_id JOIN tiles t"
            "   ON t.tile_id = c.tile_id WHERE t.raster_id = r.raster_id)"
            " FROM rasters r ORDER BY r.created_at, r.raster_id"
        ).fetchall()
        out = []
        for rid, path, name, crs, state, cfp, params, info, upd, ntiles, nvar, nemb in rows:
            info_d = json.loads(info)
            out.append({
                "raster_id": rid, "path": path, "name": name, "crs_wkt": crs, "state": state, "captioner_fp": cfp,
                "params": json.loads(params), "tiles": ntiles, "variants": nvar, "embedded": nemb, "updated_at": upd,
                "band_map": info_d.get("band_map"), "info": info_d,
            })
        return out

    def get_raster(self, raster_id: str) -> Optional[dict]:
        for r in self.raster_rows():
            if r["raster_id"] == raster_id:
                return r
        return None

    def find_raster_ids(self, path_or_id: str) -> list[str]:
        """Raster ids matching an id, an id prefix (>= 6 chars), a path or a display name."""
        key = str(path_or_id)
        rows = self.conn.execute(
            "SELECT raster_id FROM rasters WHERE raster_id = ? OR path = ? OR name = ? ORDER BY raster_id", (key, key, key)
        ).fetchall()
        if not rows and len(key) >= 6:
            rows = self.conn.execute("SELECT raster_id FROM rasters WHERE raster_id LIKE ? ORDER BY raster_id",
                                     (key.replace("%", "") + "%",)).fetchall()
        return [r[0] for r in rows]

    def set_raster_state(self, raster_id: str, state: str) -> None:
        if state not in RASTER_STATES:
            raise IndexStoreError(f"unknown raster state {state!r} (expected one of {', '.join(RASTER_STATES)})")
        with self.transaction() as c:
            c.execute("UPDATE rasters SET state = ?, updated_at = ? WHERE raster_id = ?", (state, time.time(), raster_id))

    def remove_raster(self, raster_id: str) -> None:
        """Delete the raster's rows (tiles, captions, embeddings cascade; triggers log the labels)."""
        with self.transaction() as c:
            c.execute("DELETE FROM rasters WHERE raster_id = ?", (raster_id,))
