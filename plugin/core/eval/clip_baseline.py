"""Zero-shot CLIP-family baseline (CLIP, SigLIP, RemoteCLIP-style checkpoints) for the side-by-side.

Any model `transformers.AutoModel` loads with `get_text_features` / `get_image_features` works,
from a local folder or a hub id already in the cache (offline runs fail with a clear message
instead of a download attempt). Scores are cosines of the normalised features: the logit scale
and bias do not change any ranking, so they are left out.
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import numpy as np

from ..env.devices import resolve_device
from ..errors import ModelUnavailableError, hub_offline
from ..types import CancelFn, ProgressFn, never_canceled, no_progress
from .captioning import read_image_rgb
from .datasets import EvalDataset
from .metrics import recall_metrics
from .runner import EvalResult


def _features(out: Any) -> Any:
    """transformers 4 returns a tensor, 5 a model output whose pooler_output is the projection."""
    if hasattr(out, "pooler_output") and not hasattr(out, "shape"):
        return out.pooler_output
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


class ClipBaseline:
    """A CLIP-family model as a text encoder and an image encoder with normalised outputs."""

    def __init__(self, model: str, device: str = "auto", batch_size: int = 32) -> None:
        import os

        try:
            from transformers import AutoModel, AutoProcessor
        except ImportError as exc:  # pragma: no cover - transformers is a dependency
            raise ModelUnavailableError(f"transformers is not installed: {exc}") from None
        offline = hub_offline() or os.path.isdir(model)  # "false" is not offline (it was, here)
        try:
            self.processor = AutoProcessor.from_pretrained(model, local_files_only=offline)
            self.model = AutoModel.from_pretrained(model, local_files_only=offline)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise ModelUnavailableError(
                f"CLIP model {model!r} cannot be loaded ({'offline, not in the local cache' if offline else first}); "
                "pass a local folder or download it first"
            ) from None
        if not (hasattr(self.model, "get_text_features") and hasattr(self.model, "get_image_features")):
            raise ModelUnavailableError(f"{model!r} is not a CLIP-family model (no get_text_features/get_image_features)")
        self.device = resolve_device(device)
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.name = model
        cfg = self.model.config
        self.model_type = str(getattr(cfg, "model_type", ""))
        self.fingerprint = f"clip:{model}|{self.model_type}|{getattr(cfg, '_commit_hash', None) or 'local'}"

    def _text_kwargs(self) -> dict[str, Any]:
        # SigLIP was trained on max_length padding; CLIP pads to the longest text.
        if "siglip" in self.model_type:
            return {"padding": "max_length", "truncation": True}
        return {"padding": True, "truncation": True}

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.processor(text=list(texts[i : i + self.batch_size]), return_tensors="pt", **self._text_kwargs())
            batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
            with torch.inference_mode():
                feats = _features(self.model.get_text_features(**batch))
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)

    def encode_images(
        self, images: Sequence[np.ndarray], progress: ProgressFn = no_progress, is_canceled: CancelFn = never_canceled
    ) -> np.ndarray:
        import torch
        from PIL import Image

        from ..errors import Canceled

        out = []
        for i in range(0, len(images), self.batch_size):
            if is_canceled():
                raise Canceled()
            pil = [Image.fromarray(a) for a in images[i : i + self.batch_size]]
            batch = self.processor(images=pil, return_tensors="pt")
            with torch.inference_mode():
                feats = _features(self.model.get_image_features(pixel_values=batch["pixel_values"].to(self.device)))
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
            progress(min(len(images), i + self.batch_size), len(images), "CLIP image features")
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def run_clip(
    dataset: EvalDataset,
    model: str | ClipBaseline,
    device: str = "auto",
    progress: ProgressFn = no_progress,
    is_canceled: CancelFn = never_canceled,
    config: Optional[dict[str, Any]] = None,
) -> EvalResult:
    """Image features vs every reference caption's text features, measured like the text side."""
    clip = model if isinstance(model, ClipBaseline) else ClipBaseline(model, device)
    paths = dataset.require_images()
    t0 = time.perf_counter()
    images = [read_image_rgb(p) for p in paths]
    img = clip.encode_images(images, progress, is_canceled)
    txt = clip.encode_texts(dataset.captions)
    t_embed = time.perf_counter() - t0
    t1 = time.perf_counter()
    metrics = recall_metrics(img @ txt.T, dataset.caption_image)
    cfg = dict(config or {})
    cfg.update(model=clip.name, clip=clip.fingerprint, device=clip.device)
    return EvalResult("clip", dataset.describe(), metrics, cfg,
                      {"embed": round(t_embed, 3), "score": round(time.perf_counter() - t1, 3)})
