"""What runs on the Ray cluster: the read, caption and embed stages of the `ray` executor.

A dataset row is one *chunk*: the tile references of one caption batch of one raster, never
pixels. Pixels exist only between the read task and the caption actor (one pickled list of
`TileImage`s per chunk). Rows of whole batches keep Ray Data's per-row and per-block costs per
batch instead of per tile, and make a caption batch the unit that streams back to the writer.

Every chunk comes back, whatever happened to its tiles: captioned tiles with their variants and
vectors, tiles the reader skipped as (mostly) nodata (`empty`, recorded with `mark_empty` by the
writer) and tiles that could not be read (`failed`, with the reason: counted in the job report,
left uncommitted so the next run reads them again), as the local executor reports them.

Each stage is a plain callable (class) that Ray Data runs as tasks or as an actor pool; none of
them touches the index. No ray import here, so the module is importable and unit-testable without
the cluster extra.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ...errors import EngineError
from ...types import CaptionVariant, TileRef

Batch = dict[str, Any]


def _dump(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=5)


def _load(b: Any) -> Any:
    return pickle.loads(bytes(b))


def chunk_rows(raster_id: str, refs: Sequence[TileRef], size: int) -> list[dict[str, Any]]:
    """Driver side: the dataset rows of one raster, one per caption batch, in plan order."""
    size = max(1, int(size))
    return [{"rid": raster_id, "refs": _dump(list(refs[i : i + size]))} for i in range(0, len(refs), size)]


def _passthrough(batch: Batch, i: int) -> dict[str, Any]:
    return {"rid": str(batch["rid"][i]), "empty": batch["empty"][i], "failed": batch["failed"][i]}


def _columns(rows: list[dict[str, Any]], keys: Sequence[str]) -> Batch:
    return {k: [r[k] for r in rows] for k in keys}


def _appender(failed: list[tuple[TileRef, str]]) -> Callable[[TileRef, str], None]:
    return lambda ref, why: failed.append((ref, why))


def read_tiles(batch: Batch, *, infos: dict[str, Any], params: Any) -> Batch:
    """CPU task: read each chunk's windows (one raster open per chunk). A window that cannot be
    read (a corrupt block) fails that tile only, as in the local executor."""
    from ...rasters.tiling import iter_tiles

    rows = []
    cids = batch.get("cid")
    for i, (rid, blob) in enumerate(zip(batch["rid"], batch["refs"])):
        rid = str(rid)
        refs: list[TileRef] = _load(blob)
        empty: list[TileRef] = []
        failed: list[tuple[TileRef, str]] = []
        tiles = list(iter_tiles(infos[rid], params, refs=refs, on_error=_appender(failed), on_skip=empty.append))
        for t in tiles:
            t.pixel_size = t.pixel_size  # resolve the lazy geodesic size: its function does not pickle
        rows.append({"rid": rid, "tiles": _dump(tiles), "empty": _dump(empty), "failed": _dump(failed),
                     "cid": int(cids[i]) if cids is not None else i})
    return _columns(rows, ("rid", "tiles", "empty", "failed", "cid"))


class CaptionStage:
    """Actor: one captioner (one model load) per actor, reused for every chunk it is given."""

    def __init__(self, spec: str, options: dict[str, Any], expected_fingerprint: Optional[str] = None) -> None:
        from ...captioners import make_captioner

        self.captioner = make_captioner(spec, **options)
        fp = self.captioner.fingerprint
        if expected_fingerprint is not None and fp != expected_fingerprint:
            # Another model revision on this node would file its captions under the job's key.
            raise EngineError(f"captioner on this node is {fp!r}, the job planned with {expected_fingerprint!r}:"
                              " install the same model and versions on every node")

    def __call__(self, batch: Batch) -> Batch:
        rows = []
        for i, blob in enumerate(batch["tiles"]):
            tiles = _load(blob)
            per_tile = self.captioner.caption(tiles) if tiles else []
            if len(per_tile) != len(tiles):
                raise EngineError(f"captioner returned {len(per_tile)} results for {len(tiles)} tiles")
            rows.append({**_passthrough(batch, i), "refs": _dump([t.ref for t in tiles]), "variants": _dump(per_tile)})
        return _columns(rows, ("rid", "refs", "variants", "empty", "failed"))


class EmbedStage:
    """Actor: the document embedder, so caption actors never wait on it (and the driver never embeds)."""

    def __init__(self, spec: Optional[str], device: str, expected_fingerprint: Optional[str] = None,
                 document_graph: str = "fp32") -> None:
        from ...search.searcher import cached_embedder

        self.embedder = cached_embedder(spec, device, document_graph)
        fp = self.embedder.fingerprint
        if expected_fingerprint is not None and fp != expected_fingerprint:
            raise EngineError(f"embedder on this node is {fp!r}, the index needs {expected_fingerprint!r}")
        got = getattr(self.embedder, "document_graph", "fp32")
        if got != document_graph:  # the index's documents all come from one graph (document_graph.py)
            raise EngineError(f"the embedder on this node cannot run the {document_graph} document graph the index"
                              f" records (it would embed {got}): install onnxruntime and onnx on every node")
        self.embedder.encode_documents(["warm-up"])  # the first encode is slow: not on the first batch

    def __call__(self, batch: Batch) -> Batch:
        from ..local import embed_variants

        per_chunk = [_load(v) for v in batch["variants"]]
        # One encode call for every chunk in the batch: the embedder batches across them.
        vecs = embed_variants(self.embedder, [v for chunk in per_chunk for v in chunk])
        rows, k = [], 0
        for i, chunk in enumerate(per_chunk):
            mine = vecs[k : k + len(chunk)]
            k += len(chunk)
            flat = np.concatenate(mine) if mine else np.zeros((0, self.embedder.dim), np.float32)
            rows.append({**_passthrough(batch, i), "refs": batch["refs"][i], "variants": batch["variants"][i],
                         "vecs": np.ascontiguousarray(flat, dtype=np.float32).tobytes()})
        return _columns(rows, ("rid", "refs", "variants", "vecs", "empty", "failed"))


def captioner_fingerprint(spec: str, options: dict[str, Any]) -> str:
    """Run on the cluster: the fingerprint is what the model loaded there says it is."""
    return captioner_identity(spec, options)[0]


def captioner_identity(spec: str, options: dict[str, Any]) -> tuple[str, int]:
    """Run on the cluster: (fingerprint, the captioner's own batch size) as built there."""
    from ...captioners import make_captioner

    cap = make_captioner(spec, **options)
    try:
        return str(cap.fingerprint), int(getattr(cap, "batch_size", 0) or 0)
    finally:
        close = getattr(cap, "close", None)
        if close:
            close()


@dataclass
class Chunk:
    """Driver side: one caption batch as it came back (tiles captioned, empty, failed)."""

    raster_id: str
    refs: list[TileRef]
    variants: list[list[CaptionVariant]]
    vecs: list[np.ndarray]
    empty: list[TileRef] = field(default_factory=list)
    failed: list[tuple[TileRef, str]] = field(default_factory=list)


def decode_results(batch: Batch, dim: int) -> list[Chunk]:
    """Driver side: one numpy batch from `iter_batches` -> its chunks, in order."""
    out = []
    for rid, refs, var, vec, empty, failed in zip(batch["rid"], batch["refs"], batch["variants"], batch["vecs"],
                                                  batch["empty"], batch["failed"]):
        per_tile: list[list[CaptionVariant]] = _load(var)
        flat = np.frombuffer(bytes(vec), dtype=np.float32).reshape(-1, dim)
        vecs, k = [], 0
        for variants in per_tile:
            vecs.append(flat[k : k + len(variants)].copy())
            k += len(variants)
        if k != flat.shape[0]:
            raise EngineError(f"the Ray job returned {flat.shape[0]} vectors for {k} caption variants")
        out.append(Chunk(str(rid), _load(refs), per_tile, vecs, _load(empty), _load(failed)))
    return out
