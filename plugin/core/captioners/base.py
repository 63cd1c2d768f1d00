"""Pieces every VLM captioner shares: spec parsing, fingerprints, variant assembly, devices.

Kept free of torch imports at module level: the spectral captioner and the QGIS side load this
without paying for torch.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from typing import Any, Sequence

import numpy as np

from ..env.devices import resolve_device  # noqa: F401 (re-exported for the captioners)
from ..errors import EngineError, hub_offline
from ..types import CaptionVariant, TileImage
from .parsing import parse_variants


def fingerprint(backend: str, model: str, revision: str, prompt_version: str, **params: Any) -> str:
    """`backend|model|rev=...|prompt=...|k=v...`: the caption cache key.

    Parameters are sorted so the key does not depend on keyword order; `None` values are kept
    (as 'None') so switching an option on or off changes the key.
    """
    extra = "|".join(f"{k}={params[k]}" for k in sorted(params))
    return f"{backend}|{model}|rev={revision or 'unknown'}|prompt={prompt_version}" + (f"|{extra}" if extra else "")


def folder_revision(folder: str) -> str:
    """A short content hash of a local model folder (config + weight file names and sizes).

    Local folders have no commit hash; this changes when the weights or config are replaced,
    which is what the caption cache needs to notice.
    """
    h = hashlib.sha1()
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        if name.endswith((".json", ".jinja", ".txt", ".model")) and os.path.getsize(path) < 5_000_000:
            with open(path, "rb") as fh:
                h.update(name.encode() + b"\0" + fh.read())
        else:
            st = os.stat(path)
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return "local-" + h.hexdigest()[:12]


def assemble_variants(texts: Sequence[str], want: int, fallback: Any, tile: TileImage, facts: str = "",
                      source: str = "the model") -> list[CaptionVariant]:
    """K variants of one tile from the K raw answers: parsed, never empty, facts appended.

    An answer that parses into several variants contributes only its first (each answer is one
    variant by design); an empty or unusable answer is replaced by the spectral description of that
    variant, marked as a fallback with the reason (`source` says who answered: "the server", "the
    model"), so the store never files it under the VLM and the next update asks again.
    """
    out: list[CaptionVariant] = []
    for k, text in enumerate(texts[:want]):
        found = parse_variants(text)
        if found:
            v = found[0]
        else:
            why = f"{source} returned no text" if not (text or "").strip() else f"{source}'s answer could not be parsed"
            v = replace(fallback.describe_tile(tile, k), fallback=why)
        if facts:
            v = replace(v, caption=f"{v.caption} {facts}".strip())
        out.append(v)
    if not out:
        out = [replace(fallback.describe_tile(tile, 0), fallback=f"{source} returned no answers")]
    return out


def tile_image(tile: TileImage) -> Any:
    """The tile's stretched RGB as a PIL image (what a VLM sees)."""
    from PIL import Image

    rgb = np.ascontiguousarray(np.asarray(tile.rgb, dtype=np.uint8))
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise EngineError(f"tile {tile.ref.tile_id}: expected an (H, W, 3) RGB image, got shape {rgb.shape}")
    return Image.fromarray(rgb, "RGB")


def tile_key(tile: TileImage) -> str:
    """What identifies a tile for seeded sampling: its tile id (stable across runs, batches and machines)."""
    return str(tile.ref.tile_id)


def resolve_dtype(dtype: str, device: str) -> Any:
    """'auto' -> bf16 on CUDA that supports it (else fp16), fp16 on MPS, fp32 on CPU."""
    import torch

    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    d = (dtype or "auto").lower()
    if d != "auto":
        if d not in names:
            raise EngineError(f"unknown dtype {dtype!r}; choose auto, float32, float16 or bfloat16")
        return names[d]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


def is_oom(exc: BaseException) -> bool:
    """True for a CUDA/MPS out-of-memory error (the only error a smaller batch can fix)."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except Exception:  # pragma: no cover - torch without cuda module
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def offline() -> bool:
    """True when the hub must not be contacted (errors.hub_offline, the one rule)."""
    return hub_offline()
