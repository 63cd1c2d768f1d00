"""What runs on the Ray cluster: the read, caption and embed stages of the `ray` executor.

Rows carry tile references, never pixels, into the dataset; pixels exist only between the read
task and the caption actor (pickled `TileImage`s, a batch at a time). Each stage is a plain
callable (class) that Ray Data runs as tasks or as an actor pool; none of them touches the index:
results stream back to the driver, whose single writer commits them.
No ray import here, so the module is unit-testable and importable without the cluster extra.
"""

from __future__ import annotations

import pickle
from typing import Any, Optional

import numpy as np

from ..errors import EngineError
from ..types import CaptionVariant, TileRef

Batch = dict[str, Any]


def encode_ref(ref: TileRef) -> bytes:
    return pickle.dumps(ref, protocol=5)


def decode_ref(b: Any) -> TileRef:
    return pickle.loads(bytes(b))


def encode_variants(variants: list[CaptionVariant]) -> bytes:
    return pickle.dumps(list(variants), protocol=5)  # whatever fields a variant carries, exactly


def decode_variants(b: Any) -> list[CaptionVariant]:
    return list(pickle.loads(bytes(b)))


def read_tiles(batch: Batch, *, infos: dict[str, Any], params: Any) -> Batch:
    """CPU task: read the batch's windows (one raster open per raster in the batch); tiles the
    reader skips as (mostly) nodata are dropped here, as the local executor drops them."""
    from ..tiling import iter_tiles

    by_raster: dict[str, list[TileRef]] = {}
    for rid, ref in zip(batch["rid"], batch["ref"]):
        by_raster.setdefault(str(rid), []).append(decode_ref(ref))
    out: Batch = {"rid": [], "ref": [], "tile": []}
    for rid, refs in by_raster.items():
        for tile in iter_tiles(infos[rid], params, refs=refs):
            out["rid"].append(rid)
            out["ref"].append(encode_ref(tile.ref))
            tile.pixel_size = tile.pixel_size  # resolve the lazy geodesic size: its function does not pickle
            out["tile"].append(pickle.dumps(tile, protocol=5))
    return out


class CaptionStage:
    """Actor: one captioner (one model load) per actor, reused for every batch it is given."""

    def __init__(self, spec: str, options: dict[str, Any], expected_fingerprint: Optional[str] = None) -> None:
        from ..captioners import make_captioner

        self.captioner = make_captioner(spec, **options)
        fp = self.captioner.fingerprint
        if expected_fingerprint is not None and fp != expected_fingerprint:
            # Another model revision on this node would file its captions under the job's key.
            raise EngineError(f"captioner on this node is {fp!r}, the job planned with {expected_fingerprint!r}:"
                              " install the same model and versions on every node")

    def __call__(self, batch: Batch) -> Batch:
        tiles = [pickle.loads(bytes(t)) for t in batch["tile"]]
        if not tiles:
            return {"rid": [], "ref": [], "variants": []}
        per_tile = self.captioner.caption(tiles)
        if len(per_tile) != len(tiles):
            raise EngineError(f"captioner returned {len(per_tile)} results for {len(tiles)} tiles")
        return {"rid": list(batch["rid"]), "ref": list(batch["ref"]), "variants": [encode_variants(v) for v in per_tile]}


class EmbedStage:
    """Actor: the document embedder, so caption actors never wait on it (and the driver never embeds)."""

    def __init__(self, spec: Optional[str], device: str, expected_fingerprint: Optional[str] = None) -> None:
        from ..searcher import cached_embedder

        self.embedder = cached_embedder(spec, device)
        fp = self.embedder.fingerprint
        if expected_fingerprint is not None and fp != expected_fingerprint:
            raise EngineError(f"embedder on this node is {fp!r}, the index needs {expected_fingerprint!r}")

    def __call__(self, batch: Batch) -> Batch:
        from .local import _embed_variants

        per_tile = [decode_variants(s) for s in batch["variants"]]
        vecs = _embed_variants(self.embedder, per_tile)
        return {
            "rid": list(batch["rid"]), "ref": list(batch["ref"]), "variants": list(batch["variants"]),
            "vecs": [np.ascontiguousarray(v, dtype=np.float32).tobytes() for v in vecs],
            "n": [int(v.shape[0]) for v in vecs],
        }


def captioner_fingerprint(spec: str, options: dict[str, Any]) -> str:
    """Run on the cluster: the fingerprint is what the model loaded there says it is."""
    from ..captioners import make_captioner

    cap = make_captioner(spec, **options)
    try:
        return str(cap.fingerprint)
    finally:
        close = getattr(cap, "close", None)
        if close:
            close()


def decode_results(batch: Batch, dim: int) -> list[tuple[str, TileRef, list[CaptionVariant], np.ndarray]]:
    """Driver side: one numpy batch from `iter_batches` -> (raster id, ref, variants, vectors) per tile."""
    out = []
    for rid, ref, var, vec, n in zip(batch["rid"], batch["ref"], batch["variants"], batch["vecs"], batch["n"]):
        arr = np.frombuffer(bytes(vec), dtype=np.float32).reshape(int(n), dim).copy()
        out.append((str(rid), decode_ref(ref), decode_variants(var), arr))
    return out
