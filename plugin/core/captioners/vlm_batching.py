"""Throughput helpers of the transformers captioner: row plans, batch sizing, row-seeded sampling.

A "row" is one (tile, variant) pair, i.e. one sequence in a `generate` batch. Decoding a 7B VLM
is memory-bound: one generate call over many rows costs little more than one over a few, so the
captioner puts all K variants of a chunk of tiles into as few calls as memory allows instead of K
calls (issue 5). Three things make that possible without changing answers:

* `RowSampler` samples variants 1..K-1 row by row, each with its own seeded generator, while
  variant 0 stays greedy in the same call (generate runs greedy over the scores it leaves): a row's
  text does not depend on the batch it was put in;
* `plan_rows` buckets rows by prompt length so rows padded together have similar lengths (left
  padding wastes less compute);
* `rows_from_free_memory` sizes the batch from the KV cache a row needs and the free GPU memory.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from ..errors import EngineError

#: Upper bound of rows in one generate call (beyond this the decode step is compute-bound anyway).
MAX_ROWS = 512


class RowSampler:
    """A logits processor that samples each row with its own seed (None: the row stays greedy).

    `generate` then runs greedy (do_sample=False) and takes the one token left per row. A sampled row's
    text depends on its seed alone, not on which rows share its batch or in which order the batches run:
    batch-1 gives what batch-N gives, a Ray actor what a local run gives, and a rerun the caption the
    cache holds. Temperature, top-k and top-p are applied as transformers' warpers do (after the model's
    own processors); then one uniform number per row and step, a counter-based hash of (seed, step) in
    exact integer arithmetic on the scores' device (no Python loop over rows on the decode path), picks
    the token by inverse CDF.
    """

    def __init__(self, seeds: Sequence[Optional[int]], temperature: float, top_p: float, top_k: int = 0) -> None:
        self.rows = [r for r, s in enumerate(seeds) if s is not None]
        self.seeds = [int(s) & _MASK32 for s in seeds if s is not None]
        self.temperature, self.top_p, self.top_k = float(temperature), float(top_p), int(top_k or 0)
        self.step = 0
        self._on: Any = None  # (rows, seeds) as tensors on the scores' device, made on the first step

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if not self.rows:
            return scores
        if self._on is None or self._on[0].device != scores.device:
            self._on = (torch.tensor(self.rows, device=scores.device),
                        torch.tensor(self.seeds, dtype=torch.int64, device=scores.device))
        rows, seeds = self._on
        logits = scores[rows].float() / max(self.temperature, 1e-6)
        probs = torch.softmax(logits, dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        cum = sorted_p.cumsum(dim=-1)
        keep = (cum - sorted_p) < self.top_p  # the smallest prefix reaching top_p (the first token always)
        if self.top_k > 0:
            keep[:, self.top_k:] = False
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        cum = sorted_p.cumsum(dim=-1)
        u = uniform(seeds, self.step).to(cum.dtype) * cum[:, -1]
        self.step += 1
        pick = torch.searchsorted(cum, u[:, None]).clamp_(max=cum.shape[-1] - 1)
        token = order.gather(1, pick)[:, 0]
        out = scores.clone()
        out[rows] = float("-inf")
        out[rows, token] = 0.0
        return out


_MASK32 = 0xFFFFFFFF


def _hash32(x: Any) -> Any:
    """A 32-bit integer mix (values in [0, 2^32) held in int64: no product overflows)."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _MASK32
    return (x >> 16) ^ x


def uniform(seeds: Any, step: int) -> Any:
    """One number in (0, 1) per seed for decode step `step`: the same on every device and batch."""
    import torch

    mixed = _hash32(seeds ^ int(_hash32(torch.tensor(step + 1, dtype=torch.int64))))
    return (mixed.to(torch.float32) + 0.5) / float(1 << 32)  # float32: MPS has no float64


def row_seed(seed: int, key: str, variant: int) -> int:
    """The sampling seed of one (tile, variant) row: from the captioner's seed and the tile's identity."""
    import zlib

    return zlib.crc32(f"{seed}|{key}|{variant}".encode()) & 0x7FFFFFFF


def plan_rows(n_tiles: int, variants: int, prompt_len: Callable[[int], int], max_rows: int) -> list[list[tuple[int, int]]]:
    """Chunks of (tile index, variant) rows, at most `max_rows` each, bucketed by prompt length.

    Rows are sorted by the token length of their variant's prompt so each generate call pads a
    group of near-equal lengths; within a length, tiles keep their order (deterministic plans, so
    seeded sampling gives the same captions on a rerun of the same chunk).
    """
    if max_rows < 1:
        raise EngineError(f"rows per generate call must be at least 1, got {max_rows}")
    lengths = {k: int(prompt_len(k)) for k in range(variants)}
    rows = sorted(((i, k) for i in range(n_tiles) for k in range(variants)), key=lambda r: (lengths[r[1]], r[1], r[0]))
    return [rows[j : j + max_rows] for j in range(0, len(rows), max_rows)]


def kv_bytes_per_token(config: Any, dtype_bytes: int) -> int:
    """Bytes of K and V cache one token takes across all decoder layers of `config` (text part)."""
    text = getattr(config, "text_config", None) or config
    layers = int(getattr(text, "num_hidden_layers", 0) or 0)
    hidden = int(getattr(text, "hidden_size", 0) or 0)
    heads = int(getattr(text, "num_attention_heads", 0) or 1)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or (hidden // heads if heads else 0))
    if layers <= 0 or head_dim <= 0:
        raise EngineError("cannot size the batch: the model config has no decoder layer/head sizes; give batch_size")
    return 2 * layers * kv_heads * head_dim * int(dtype_bytes)


def rows_from_free_memory(free_bytes: int, per_row_bytes: int, *, fraction: float = 0.85, cap: int = MAX_ROWS) -> int:
    """How many rows fit in `fraction` of the free memory, between 1 and `cap`.

    `per_row_bytes` includes the row's prefill activations (see `row_bytes`); the remaining
    15% covers the allocator's fragmentation and the vision tower's prefill.
    """
    if per_row_bytes <= 0:
        raise EngineError(f"per-row memory must be positive, got {per_row_bytes}")
    return int(max(1, min(cap, (free_bytes * fraction) // per_row_bytes)))


def row_bytes(config: Any, dtype_bytes: int, tokens_per_row: int) -> int:
    """GPU bytes one row needs at its peak: its whole KV cache (prompt + new tokens) plus the
    transient activations of one decoder layer's prefill over the prompt (attention in/out and
    the MLP's gate, up and product planes), which dominate beside the cache during prefill."""
    text = getattr(config, "text_config", None) or config
    hidden = int(getattr(text, "hidden_size", 0) or 0)
    inter = int(getattr(text, "intermediate_size", 0) or 4 * hidden)
    tokens = max(1, int(tokens_per_row))
    kv = kv_bytes_per_token(config, dtype_bytes) * tokens
    act = tokens * (6 * hidden + 3 * inter) * int(dtype_bytes)
    return int(kv + act)


def auto_rows(model: Any, device: str, dtype_bytes: int, tokens_per_row: int, torch: Any) -> Optional[int]:
    """Rows per generate call from free CUDA memory (`torch.cuda.mem_get_info`); None off CUDA."""
    if not device.startswith("cuda"):
        return None
    return rows_from_free_memory(free_cuda_bytes(device, torch), row_bytes(model.config, dtype_bytes, tokens_per_row))


def free_cuda_bytes(device: str, torch: Any) -> int:
    """Memory this process can still use on `device`: what the driver reports free plus what
    PyTorch's caching allocator holds but no tensor uses (after a large earlier call the allocator
    keeps tens of GB reserved, and the driver alone would report them as taken)."""
    dev = torch.device(device)
    free, _total = torch.cuda.mem_get_info(dev)
    cached = int(torch.cuda.memory_reserved(dev)) - int(torch.cuda.memory_allocated(dev))
    return int(free) + max(0, cached)


#: The KV cache the captioner uses on CUDA when `cache="auto"` (measured, benchmarks/RESULTS.md).
CUDA_DEFAULT_CACHE = "static"


def resolve_cache(cache: str, device: str, compile: bool) -> str:
    """'auto' -> static with compile (compile needs it), the measured best on CUDA, dynamic elsewhere."""
    if cache != "auto":
        return cache
    if compile:
        return "static"
    return CUDA_DEFAULT_CACHE if device.startswith("cuda") else "dynamic"


def reusable_vision(model: Any, batch_keys: Sequence[str]) -> bool:
    """True when image features can be computed once per tile and handed to `generate`.

    Needs a model whose forward takes pre-encoded `mm_encoder_outputs` (transformers >= 5.2x) and
    a processor output that is just ids, mask and one fixed-size image tensor per row (LLaVA-1.5
    style): models with per-image grids or sizes (Qwen2-VL, LLaVA-NeXT) keep the plain path.
    """
    supports = getattr(model, "_supports_mm_encoder_outputs", None)
    base = getattr(model, "base_model", None)
    return bool(
        callable(supports) and supports() and hasattr(base, "get_image_features")
        and set(batch_keys) <= {"input_ids", "attention_mask", "pixel_values"} and "pixel_values" in batch_keys
    )


def encode_images_once(model: Any, pixel_values: Any, row_tiles: Sequence[int]) -> dict[str, Any]:
    """`mm_encoder_outputs` for `generate`: the vision tower runs once per distinct tile of the rows."""
    first: dict[int, int] = {}
    for r, t in enumerate(row_tiles):
        first.setdefault(t, r)
    tiles = sorted(first)
    out = model.base_model.get_image_features(pixel_values=pixel_values[[first[t] for t in tiles]], return_dict=True)
    per_tile = dict(zip(tiles, list(out.pooler_output)))
    out.pooler_output = [per_tile[t] for t in row_tiles]
    return {"image": out}
