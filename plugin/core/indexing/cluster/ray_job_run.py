"""The cluster side of job mode: `python -m <package>.core.indexing.cluster.ray_job_run {fingerprint|run} FILE`.

Submitted by the engine through the Jobs REST API (`ray_job.py`); runs as the Ray job's driver.
It plans nothing: `run` reads the manifest the engine wrote (the tiles still missing after the
engine's cache check), captions and embeds them with the `ray` executor's Ray Data stages
(`ray_exec.RayExecutor`, `ray_stages`), and writes each result batch as a Parquet shard into the
job folder (`ray_job_shards`). Tiles already in a shard of that folder (a resubmitted job) are
skipped; tiles the reader drops as nodata go into one `empty` shard per raster and tiles it cannot
read (a corrupt block) into one shard of failed rows with their reasons (the job still succeeds: the
engine reports them and the next run reads them again, so a folder's failed rows are not counted as
done when a job is resubmitted into it). `fingerprint`
builds the captioner on the cluster once and writes what it calls itself.
The last line this prints is the job's error, if any (the engine shows it).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from ...errors import EngineError
from ...types import never_canceled
from .ray_job_shards import list_shards, read_json, ref_from_json, shard_tiles, write_json_atomic, write_shard


def _executor(req: dict[str, Any], dim: int, embedder_fp: Any) -> Any:
    import ray

    from .ray_exec import RayExecutor

    if not ray.is_initialized():
        ray.init(address="auto", log_to_driver=False)  # the job's own cluster (Ray sets RAY_ADDRESS)
    return RayExecutor(req["spec"], dict(req.get("options") or {}), req.get("embedder"), req.get("device", "auto"),
                       dim, embedder_fingerprint=embedder_fp, document_graph=str(req.get("document_graph") or "fp32"),
                       caption_workers=req.get("caption_workers"),
                       batch_size=req.get("batch_size"), stall_timeout_s=float(req.get("stall_timeout_s") or 1800))


def fingerprint(path: str) -> None:
    req = read_json(path)
    if not isinstance(req, dict):
        raise EngineError(f"cannot read the request {path}")
    ex = _executor(req, 0, None)
    try:
        write_json_atomic(req["out"], {"fingerprint": ex.fingerprint})
        print(f"captioner fingerprint: {ex.fingerprint}")
    finally:
        ex.close()


def run(path: str) -> None:
    from ...rasters.raster import RasterInfo
    from ...rasters.tiling import TilingParams

    m = read_json(path)
    if not isinstance(m, dict):
        raise EngineError(f"cannot read the manifest {path}")
    out_dir = m["out_dir"]
    os.makedirs(out_dir, exist_ok=True)
    have = {tid for name in list_shards(out_dir) for tid, _ in shard_tiles(os.path.join(out_dir, name), settled=True)}
    infos = {rid: RasterInfo.from_dict(d) for rid, d in m["infos"].items()}
    params = TilingParams.from_dict(m["params"])
    by_raster: dict[str, list[Any]] = {}
    for row in m["tiles"]:
        ref = ref_from_json(row)
        if ref.tile_id not in have:
            by_raster.setdefault(ref.raster_id, []).append(ref)
    work = [(infos[rid], refs) for rid, refs in by_raster.items()]
    print(f"{sum(len(r) for _, r in work)} tiles to caption ({len(have)} already in shards)", flush=True)
    if not work:
        return
    ex = _executor(m, int(m["dim"]), m.get("embedder_fingerprint"))
    try:
        if ex.fingerprint != m["fingerprint"]:
            raise EngineError(f"the captioner on the cluster is {ex.fingerprint!r}, the engine planned with"
                              f" {m['fingerprint']!r}: install the same model and versions everywhere")
        ex.prepare(work, params)
        for info, refs in work:
            _write_raster(ex, info, params, refs, out_dir, m["fingerprint"], int(m.get("shard_tiles") or 64),
                          float(m.get("shard_every_s") or 2.0))
    finally:
        ex.close()


def _write_raster(ex: Any, info: Any, params: Any, refs: list[Any], out_dir: str, fp: str, shard_tiles_n: int,
                  every_s: float) -> None:
    """Batches come back a caption batch at a time; a shard gathers them for up to `every_s`
    seconds or `shard_tiles_n` tiles (fewer, larger files, while progress still flows)."""
    seen: set[str] = set()
    failed: list[tuple[Any, str]] = []
    buf: list[list[Any]] = [[], [], []]
    last = time.monotonic()
    for batch_refs, per_tile, vecs in ex.run(info, params, refs, never_canceled,
                                             on_error=lambda ref, why: failed.append((ref, why))):
        for part, new in zip(buf, (batch_refs, per_tile, vecs)):
            part.extend(new)
        seen.update(r.tile_id for r in batch_refs)
        if len(buf[0]) >= shard_tiles_n or time.monotonic() - last >= every_s:
            print(f"{write_shard(out_dir, fp, buf[0], buf[1], buf[2])}: {len(buf[0])} tiles", flush=True)
            buf, last = [[], [], []], time.monotonic()
    if buf[0]:
        print(f"{write_shard(out_dir, fp, buf[0], buf[1], buf[2])}: {len(buf[0])} tiles", flush=True)
    if failed:
        name = write_shard(out_dir, fp, [r for r, _ in failed], reasons=[why for _, why in failed])
        print(f"{name}: {len(failed)} unreadable tiles", flush=True)
    seen.update(r.tile_id for r, _ in failed)
    empty = [r for r in refs if r.tile_id not in seen]
    if empty:
        print(f"{write_shard(out_dir, fp, empty, empty=True)}: {len(empty)} empty tiles", flush=True)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("fingerprint", "run"):
        print("usage: ray_job_run {fingerprint|run} FILE", file=sys.stderr)
        return 2
    try:
        (fingerprint if argv[0] == "fingerprint" else run)(argv[1])
    except Exception as exc:  # one line last: the engine reports the job's last log line
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        print(f"error: {type(exc).__name__}: {lines[0] if lines else ''}"[:400], flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
