"""What job mode keeps in the shared folder: the job's manifest (JSON) and its result shards (Parquet).

A shard is plain data, never pickles (whoever can write the shared folder must not run code on the
analyst's machine): per tile its id, raster id, window, scale, the captioner fingerprint, the caption
variants as JSON, the vectors (float32, variant after variant), an `empty` flag (tiles the reader
skipped as nodata, so the engine records them and never reads them again) and a `failed` flag with
its `reason` (a tile that could not be read: reported, never captioned, read again by the next run).
Shards written before the `failed` column read as having no failed rows.
Names are deterministic (`shard-<first tile>-<n>-<hash of the tile ids>.parquet`) and a shard is
written under a temporary name, then renamed: a reader sees whole shards only. Once the index holds a
shard's rows (and no job can still write its folder) the shard is deleted: `remove_merged_shards`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from typing import Any, Callable, Collection, Iterable, Optional, Sequence

import numpy as np

from ...errors import EngineError
from ...types import CaptionVariant, PixelWindow, TileRef

SHARD_PREFIX = "shard-"
MANIFEST = "manifest.json"


def import_pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise EngineError(f"job mode reads Parquet shards: install pyarrow<26 in the engine environment ({exc})") from None
    return pa, pq


# -- tile references and the manifest ---------------------------------------------------------------
def ref_to_json(ref: TileRef) -> list[Any]:
    w = ref.window
    return [ref.tile_id, ref.raster_id, [w.col_off, w.row_off, w.width, w.height], ref.scale,
            [list(p) for p in ref.footprint]]


def ref_from_json(row: Sequence[Any]) -> TileRef:
    tid, rid, w, scale, fp = row
    return TileRef(str(tid), str(rid), PixelWindow(*(int(v) for v in w)), int(scale),
                   tuple((float(p[0]), float(p[1])) for p in fp))


def write_json_atomic(path: str, obj: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def read_json(path: str) -> Optional[Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# -- shards -----------------------------------------------------------------------------------------
def shard_name(tile_ids: Sequence[str]) -> str:
    first = re.sub(r"[^A-Za-z0-9_.]", "_", str(tile_ids[0]))[:40]
    digest = hashlib.sha1("\n".join(sorted(tile_ids)).encode()).hexdigest()[:10]
    return f"{SHARD_PREFIX}{first}-{len(tile_ids)}-{digest}.parquet"


def write_shard(out_dir: str, fingerprint: str, refs: Sequence[TileRef],
                per_tile: Optional[Sequence[Sequence[CaptionVariant]]] = None,
                vecs: Optional[Sequence[np.ndarray]] = None, empty: bool = False,
                reasons: Optional[Sequence[str]] = None) -> str:
    """One shard for `refs` (captioned, all `empty`, or all failed with their `reasons`); returns its file name."""
    pa, pq = import_pyarrow()
    n = len(refs)
    if reasons is not None and len(reasons) != n:
        raise EngineError(f"{len(reasons)} reasons for {n} failed tiles")
    if per_tile is None or vecs is None:
        per_tile, vecs = [[] for _ in refs], [np.zeros((0, 0), np.float32) for _ in refs]
    table = pa.table({
        "tile_id": [r.tile_id for r in refs],
        "raster_id": [r.raster_id for r in refs],
        "window": [[r.window.col_off, r.window.row_off, r.window.width, r.window.height] for r in refs],
        "scale": pa.array([r.scale for r in refs], pa.int32()),
        "captioner_fp": [fingerprint] * n,
        "variants": [json.dumps([{**v.to_dict(), "fallback": v.fallback} for v in vs]) for vs in per_tile],
        "vectors": pa.array([np.ascontiguousarray(v, np.float32).ravel() for v in vecs], pa.list_(pa.float32())),
        "n_variants": pa.array([len(vs) for vs in per_tile], pa.int32()),
        "empty": [bool(empty)] * n,
        "failed": [reasons is not None] * n,
        "reason": [str(r) for r in reasons] if reasons is not None else [""] * n,
    })
    name = shard_name([r.tile_id for r in refs])
    tmp = os.path.join(out_dir, f".tmp-{uuid.uuid4().hex}.parquet")
    pq.write_table(table, tmp)
    os.replace(tmp, os.path.join(out_dir, name))
    return name


def list_shards(job_dir: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(job_dir) if n.startswith(SHARD_PREFIX) and n.endswith(".parquet"))
    except OSError:
        return []


def shard_rows(path: str) -> list[tuple[str, str, bool]]:
    """(tile id, raster id, failed) of every row, read without the vectors."""
    _, pq = import_pyarrow()
    has_failed = "failed" in pq.read_schema(path).names
    t = pq.read_table(path, columns=["tile_id", "raster_id"] + (["failed"] if has_failed else []))
    tids, rids = t.column("tile_id").to_pylist(), t.column("raster_id").to_pylist()
    failed = t.column("failed").to_pylist() if has_failed else [False] * len(tids)
    return [(tid, rid, bool(f)) for tid, rid, f in zip(tids, rids, failed)]


def shard_tiles(path: str, settled: bool = False) -> list[tuple[str, str]]:
    """(tile id, raster id) of every row; with `settled`, only the captioned and empty ones (a failed
    row is to be read again)."""
    return [(tid, rid) for tid, rid, failed in shard_rows(path) if not (settled and failed)]


def drop_failed_shards(job_dir: str) -> list[str]:
    """Remove the shards that hold only failed rows (before a job is resubmitted into this folder:
    those tiles are read again and must not be reported failed from the earlier attempt)."""
    gone = []
    for name in list_shards(job_dir):
        rows = shard_rows(os.path.join(job_dir, name))
        if rows and all(f for _, _, f in rows):
            os.remove(os.path.join(job_dir, name))
            gone.append(name)
    return gone


def remove_merged_shards(dirs: Sequence[str], settled: Callable[[str], Collection[str]]) -> tuple[int, int, list[str]]:
    """Delete the shards of the job folders `dirs` whose every row the index has settled: `settled(raster
    id)` gives the tiles committed with this captioner or recorded empty; a failed row counts as settled
    (it was reported, the tile is not done, so the next run plans it for a new job anyway). A shard with
    any other row (a raster not in this run, a fallback caption asked again next time) stays, and so do
    the folders. Only when no folder keeps a shard do the manifests, the leftover temporary files and
    the folders go too (an earlier folder left alone would drop out of the chain the next run merges).
    The caller makes sure no job still writes into `dirs`. Returns (shards removed, bytes freed, folders removed)."""
    removed, freed, kept = 0, 0, False
    known: dict[str, Collection[str]] = {}

    def held(tid: str, rid: str) -> bool:
        if rid not in known:
            known[rid] = settled(rid)
        return tid in known[rid]

    for d in dirs:
        for name in list_shards(d):
            path = os.path.join(d, name)
            try:
                merged = all(failed or held(tid, rid) for tid, rid, failed in shard_rows(path))
            except (OSError, ValueError):  # unreadable: not known to be merged
                merged = False
            if not merged:
                kept = True
                continue
            size = os.path.getsize(path)
            os.remove(path)
            removed, freed = removed + 1, freed + size
    gone: list[str] = []
    if kept:
        return removed, freed, gone
    for d in dirs:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:  # the manifest and temporary files of writers that died: nothing else is ours
            if name == MANIFEST or (name.startswith(".tmp-") and name.endswith(".parquet")) \
                    or (name.startswith(MANIFEST + ".") and name.endswith(".tmp")):
                os.remove(os.path.join(d, name))
        try:
            os.rmdir(d)
            gone.append(d)
        except OSError:  # something else in there: not ours to delete
            pass
    return removed, freed, gone


ShardRows = tuple[list[tuple[str, list[CaptionVariant], np.ndarray]], list[str], list[tuple[str, str]]]


def read_shard(path: str, raster_id: str, wanted: Iterable[str], fingerprint: str, dim: int) -> ShardRows:
    """([(tile id, variants, (n, dim) vectors)], [empty tile ids], [(failed tile id, reason)]) for the
    shard's rows of `raster_id` in `wanted`. A row filed under another captioner fingerprint is
    refused, naming both."""
    _, pq = import_pyarrow()
    want = set(wanted)
    t = pq.read_table(path).to_pydict()
    done: list[tuple[str, list[CaptionVariant], np.ndarray]] = []
    empty: list[str] = []
    failed: list[tuple[str, str]] = []
    flags = t.get("failed") or [False] * len(t["tile_id"])  # shards written before the column: none failed
    for i, tid in enumerate(t["tile_id"]):
        if t["raster_id"][i] != raster_id or tid not in want:
            continue
        if t["captioner_fp"][i] != fingerprint:
            raise EngineError(f"shard {os.path.basename(path)} holds captions of {t['captioner_fp'][i]!r}, the job"
                              f" planned with {fingerprint!r}")
        if flags[i]:
            failed.append((tid, str(t["reason"][i] or "cannot be read")))
            continue
        if t["empty"][i]:
            empty.append(tid)
            continue
        variants = [CaptionVariant(str(d.get("one_sentence", "")), str(d.get("feature", "")), str(d.get("caption", "")),
                                   fallback=str(d.get("fallback") or "")) for d in json.loads(t["variants"][i])]
        n = int(t["n_variants"][i])
        arr = np.asarray(t["vectors"][i], dtype=np.float32)
        if n != len(variants) or arr.size != n * dim:
            raise EngineError(f"shard {os.path.basename(path)}: tile {tid} has {arr.size} values for {n} variants of"
                              f" {dim}-d vectors")
        done.append((tid, variants, arr.reshape(n, dim)))
    return done, empty, failed
