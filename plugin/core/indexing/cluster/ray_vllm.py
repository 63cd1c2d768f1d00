"""The `vllm:` captioner in the `ray` executor: `ray.data.llm`'s processor is the caption stage.

    chunks -> read_tiles -> vllm_requests (CPU task: one row per tile and variant, the tile as a
    JPEG data URL) -> ray.data.llm processor (chat template, tokenize, vLLM engine on the GPUs,
    detokenize) -> VllmEmbedStage (actor: parse each text into its variant, embed) -> driver:
    VllmAssembler puts each chunk back together (its K x tiles rows, in any order) -> the writer.

A chunk whose tiles were all empty or unreadable still needs a row to carry them through the
processor: it sends a one-token text request (cheap), so the writer hears about every tile.
No ray import here (the processor comes from `captioners.vllm_ray.build_vllm_processor`).
"""

from __future__ import annotations

import pickle
from typing import Any, Optional

import numpy as np

from ...captioners.vllm_ray import VllmSpec, build_vllm_processor, fallbacks_and_facts, request_rows, variant_from_text
from ...errors import EngineError
from .ray_stages import Batch, Chunk, EmbedStage

#: Columns carried through the processor next to its `generated_text` (renamed `text`).
KEEP = ("cid", "rid", "seq", "k", "rows", "ref", "fallback", "facts", "empty", "failed")
_NONE = pickle.dumps([], protocol=5)
#: The request of a chunk without a tile to caption: one token, no image.
_CARRIER = {"seq": -1, "k": -1, "messages": [{"role": "user", "content": "Reply OK."}],
            "sampling_params": {"temperature": 0.0, "max_tokens": 1}}


def _dump(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=5)


def _load(b: Any) -> Any:
    return pickle.loads(bytes(b))


def vllm_requests(batch: Batch, *, spec: VllmSpec) -> Batch:
    """CPU task: each chunk (read tiles) -> its request rows; the chunk's empty and failed tiles ride
    on its first row, the tile ref, spectral stand-in and NIR facts on each tile's rows."""
    out: dict[str, list[Any]] = {c: [] for c in (*KEEP, "messages", "sampling_params")}
    for i in range(len(batch["rid"])):
        tiles = _load(batch["tiles"][i])
        reqs = request_rows(tiles, spec) or [dict(_CARRIER)]
        extra = [fallbacks_and_facts(t, spec) for t in tiles]
        for j, r in enumerate(reqs):
            seq, k = int(r["seq"]), int(r["k"])
            row = {"cid": int(batch["cid"][i]), "rid": str(batch["rid"][i]), "seq": seq, "k": k, "rows": len(reqs),
                   "ref": _dump(tiles[seq].ref) if seq >= 0 else b"",
                   "fallback": _dump(extra[seq][0][k]) if seq >= 0 else b"",
                   "facts": extra[seq][1] if seq >= 0 else "",
                   "empty": batch["empty"][i] if j == 0 else _NONE, "failed": batch["failed"][i] if j == 0 else _NONE,
                   "messages": r["messages"], "sampling_params": r["sampling_params"]}
            for c, v in row.items():
                out[c].append(v)
    return out


class VllmEmbedStage(EmbedStage):
    """Actor: each generated text -> its caption variant (or the spectral stand-in, flagged) -> vector."""

    def __call__(self, batch: Batch) -> Batch:  # type: ignore[override]
        n = len(batch["cid"])
        variants: list[Optional[Any]] = []
        for i in range(n):
            if int(batch["k"][i]) < 0:
                variants.append(None)
            else:
                variants.append(variant_from_text(str(batch["text"][i] or ""), _load(batch["fallback"][i]),
                                                  str(batch["facts"][i] or "")))
        texts = [v.text() or "(empty)" for v in variants if v is not None]
        vecs = self.embedder.encode_documents(texts) if texts else np.zeros((0, self.embedder.dim), np.float32)
        out: dict[str, list[Any]] = {c: [] for c in ("cid", "rid", "seq", "k", "rows", "ref", "variant", "vec", "empty", "failed")}
        j = 0
        for i, v in enumerate(variants):
            for c in ("cid", "rid", "seq", "k", "rows", "ref", "empty", "failed"):
                out[c].append(batch[c][i])
            out["variant"].append(_dump(v) if v is not None else b"")
            out["vec"].append(np.ascontiguousarray(vecs[j], dtype=np.float32).tobytes() if v is not None else b"")
            j += v is not None
        return out


def _chunk(rows: list[dict[str, Any]], dim: int) -> Chunk:
    per_tile: dict[int, list[dict[str, Any]]] = {}
    empty, failed = [], []
    for r in rows:
        empty += _load(r["empty"])
        failed += _load(r["failed"])
        if int(r["k"]) >= 0:
            per_tile.setdefault(int(r["seq"]), []).append(r)
    refs, variants, vecs = [], [], []
    for seq in sorted(per_tile):
        tile_rows = sorted(per_tile[seq], key=lambda r: int(r["k"]))
        refs.append(_load(tile_rows[0]["ref"]))
        variants.append([_load(r["variant"]) for r in tile_rows])
        vecs.append(np.stack([np.frombuffer(bytes(r["vec"]), dtype=np.float32) for r in tile_rows]).reshape(-1, dim))
    return Chunk(str(rows[0]["rid"]), refs, variants, vecs, empty, failed)


class VllmAssembler:
    """Driver side: rows of any order -> whole chunks, in chunk order (a chunk is complete once all
    its `rows` rows came back)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.next = 0
        self.buf: dict[int, list[dict[str, Any]]] = {}

    def __call__(self, batch: Batch) -> list[Chunk]:
        cols = list(batch)
        for i in range(len(batch["cid"])):
            row = {c: batch[c][i] for c in cols}
            self.buf.setdefault(int(row["cid"]), []).append(row)
        out = []
        while self.next in self.buf and len(self.buf[self.next]) >= int(self.buf[self.next][0]["rows"]):
            rows = self.buf.pop(self.next)
            if len(rows) != int(rows[0]["rows"]):
                raise EngineError(f"the vLLM stage returned {len(rows)} rows for a chunk of {rows[0]['rows']}")
            out.append(_chunk(rows, self.dim))
            self.next += 1
        return out


def add_vllm_stages(ds: Any, rd: Any, spec: VllmSpec, workers: int, embed: dict[str, Any], embed_workers: int,
                    cpus: float) -> Any:
    """Read chunks -> request rows -> the processor -> parsed and embedded rows."""
    ds = ds.map_batches(vllm_requests, fn_kwargs={"spec": spec}, batch_size=1, num_cpus=cpus, batch_format="numpy")
    ds = build_vllm_processor(spec, workers, KEEP)(ds)
    return ds.map_batches(VllmEmbedStage, fn_constructor_kwargs=embed, batch_size=spec.variants * spec.batch_size,
                          batch_format="numpy", compute=rd.ActorPoolStrategy(min_size=1, max_size=embed_workers),
                          num_cpus=cpus)
