"""The `transformers` captioner: any image-text-to-text VLM transformers can load.

Chat models (LLaVA / LLaVA-NeXT, Qwen2-VL / Qwen2.5-VL, SmolVLM, Idefics3, ...) get the RSRT
prompt through their own chat template, one generation per variant over a batch of tiles (left
padding, so every row's answer starts at the same column). Models without a chat template
(BLIP, GIT) are plain captioners: they get the image only and their variants come from seeded
sampling. Variant 0 is greedy, the others sample with seed `seed + k`: reruns give the same
captions, which the caption cache relies on.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional, Sequence

from ..errors import CaptionerError, EngineError, ModelUnavailableError
from ..types import CaptionVariant, TileImage
from .base import (
    assemble_variants,
    fingerprint,
    folder_revision,
    is_oom,
    offline,
    resolve_device,
    resolve_dtype,
    tile_image,
)
from .prompts import PROMPT_VERSION, SYSTEM, get_preset, variant_prompt
from .spectral import SpectralCaptioner, spectral_facts

log = logging.getLogger(__name__)

#: Processors of these model types want one list of images per prompt.
_NESTED_IMAGES = {"idefics", "idefics2", "idefics3", "smolvlm", "mllama"}


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or os.path.isabs(name) or name.count("/") > 1 or "\\" in name


def _load(name: str, revision: Optional[str], torch_dtype: Any, trust_remote_code: bool) -> tuple[Any, Any, str]:
    """(processor, model, source) -- or ModelUnavailableError naming the model and why."""
    import transformers

    path = os.path.expanduser(name)
    local = os.path.isdir(path)
    if not local and _looks_like_path(name):
        raise ModelUnavailableError(f"captioner model folder {name!r} does not exist")
    source = os.path.abspath(path) if local else name
    kw: dict[str, Any] = {"local_files_only": local or offline(), "trust_remote_code": trust_remote_code}
    if revision and not local:
        kw["revision"] = revision
    try:
        processor = transformers.AutoProcessor.from_pretrained(source, **kw)
    except (OSError, ValueError, KeyError) as exc:
        where = "offline (HF_HUB_OFFLINE is set; download it first or give a local folder)" if offline() and not local else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailableError(f"captioner model {name!r} is not available {where}: {first}".replace("  ", " ")) from None
    errors = []
    for cls_name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModelForCausalLM"):
        cls = getattr(transformers, cls_name, None)
        if cls is None:
            continue
        try:
            model = cls.from_pretrained(source, dtype=torch_dtype, **kw)
            return processor, model, source
        except ValueError as exc:  # "Unrecognized configuration class" -> try the next auto class
            errors.append(str(exc).splitlines()[0])
        except OSError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ModelUnavailableError(f"captioner model {name!r} has no loadable weights: {first}") from None
    raise ModelUnavailableError(f"captioner model {name!r} is not an image-to-text model transformers can load: {errors[-1] if errors else ''}")


class TransformersCaptioner:
    """RSRT captions from a local or hub VLM (see the module docstring)."""

    def __init__(
        self, model: str, *, variants: Optional[int] = None, preset: str = "rsrt", device: str = "auto",
        dtype: str = "auto", batch_size: Optional[int] = None, max_new_tokens: Optional[int] = None,
        temperature: float = 0.7, top_p: float = 0.9, seed: int = 0, append_facts: bool = True,
        revision: Optional[str] = None, trust_remote_code: bool = False,
    ) -> None:
        import torch

        p = get_preset(preset)
        self.variants = int(variants or p.variants)
        self.max_new_tokens = int(max_new_tokens or p.max_new_tokens)
        if self.variants < 1 or self.max_new_tokens < 1:
            raise EngineError("variants and max_new_tokens must be at least 1")
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = int(batch_size or (8 if self.device != "cpu" else 2))
        self.temperature, self.top_p, self.seed = float(temperature), float(top_p), int(seed)
        self.append_facts = bool(append_facts)
        self.name = model
        self.processor, self.model, source = _load(model, revision, self.dtype, trust_remote_code)
        self.model.to(self.device).eval()
        self._torch = torch
        tok = getattr(self.processor, "tokenizer", None)
        if tok is not None:
            tok.padding_side = "left"
            if tok.pad_token is None and tok.eos_token is not None:
                tok.pad_token = tok.eos_token
        self._tokenizer: Any = tok
        template = getattr(self.processor, "chat_template", None) or getattr(tok, "chat_template", None)
        self.chat = bool(template)
        self.model_type = str(getattr(self.model.config, "model_type", ""))
        rev = getattr(self.model.config, "_commit_hash", None) or (folder_revision(source) if os.path.isdir(source) else revision or "")
        shown = os.path.basename(source.rstrip("/")) if os.path.isdir(source) else model
        self.fingerprint = fingerprint(
            "transformers", shown, rev, PROMPT_VERSION if self.chat else "plain-caption", variants=self.variants,
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p, seed=self.seed,
            facts=int(self.append_facts),
        )
        self._fallback = SpectralCaptioner(variants=self.variants)

    # -- generation ---------------------------------------------------------------------------
    def _inputs(self, images: list[Any], k: int) -> Any:
        if self.chat:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"{SYSTEM} {variant_prompt(k)}"}]}]
            prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            imgs: Any = [[im] for im in images] if self.model_type in _NESTED_IMAGES else images
            batch = self.processor(images=imgs, text=[prompt] * len(images), return_tensors="pt", padding=True)
        else:
            batch = self.processor(images=images, return_tensors="pt")
        out = {}
        for key, value in batch.items():
            if hasattr(value, "to"):
                value = value.to(self.device)
                if value.is_floating_point():
                    value = value.to(self.dtype)
            out[key] = value
        return out

    def _generate(self, images: list[Any], k: int) -> list[str]:
        torch = self._torch
        inputs = self._inputs(images, k)
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if k == 0:
            kwargs["do_sample"] = False
        else:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
            torch.manual_seed(self.seed + k)
        if self._tokenizer is not None and self._tokenizer.pad_token_id is not None:
            kwargs["pad_token_id"] = self._tokenizer.pad_token_id
        with torch.inference_mode():
            ids = self.model.generate(**inputs, **kwargs)
        if self.chat and "input_ids" in inputs and not self.model.config.is_encoder_decoder:
            ids = ids[:, inputs["input_ids"].shape[1]:]
        decode: Any = getattr(self.processor, "batch_decode", None) or self._tokenizer.batch_decode
        return [str(t).strip() for t in decode(ids, skip_special_tokens=True)]

    def _caption_chunk(self, tiles: Sequence[TileImage]) -> list[list[CaptionVariant]]:
        images = [tile_image(t) for t in tiles]
        answers = [self._generate(images, k) for k in range(self.variants)]
        out = []
        for i, tile in enumerate(tiles):
            facts = spectral_facts(tile) if self.append_facts and tile.has_nir else ""
            out.append(assemble_variants([a[i] for a in answers], self.variants, self._fallback, tile, facts))
        return out

    def caption(self, tiles: Sequence[TileImage]) -> list[list[CaptionVariant]]:
        """K variants per tile, in input order; CUDA OOM halves the batch and retries down to 1."""
        out: list[list[CaptionVariant]] = []
        i = 0
        while i < len(tiles):
            chunk = list(tiles[i : i + self.batch_size])
            try:
                out.extend(self._caption_chunk(chunk))
            except Exception as exc:
                if not is_oom(exc):
                    raise
                self._free_memory()
                if self.batch_size <= 1:
                    raise CaptionerError(
                        f"captioner {self.name!r} ran out of GPU memory even with batch size 1; "
                        "try dtype float16, a smaller model or device cpu"
                    ) from None
                self.batch_size = max(1, self.batch_size // 2)
                log.warning("captioner %s: out of GPU memory, retrying with batch size %d", self.name, self.batch_size)
                continue
            i += len(chunk)
        return out

    def _free_memory(self) -> None:
        import gc

        gc.collect()
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()

    def close(self) -> None:
        """Drop the model so its (GPU) memory is released before the next job."""
        self.model = None
        self.processor = None
        self._free_memory()
