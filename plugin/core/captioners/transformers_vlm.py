"""The `transformers` captioner: any image-text-to-text VLM transformers can load.

Chat models (LLaVA / LLaVA-NeXT, Qwen2-VL / Qwen2.5-VL, SmolVLM, Idefics3, ...) get the RSRT
prompt through their own chat template, one generation per variant over a batch of tiles (left
padding, so every row's answer starts at the same column). Models without a chat template
(BLIP, GIT) are plain captioners: they get the image only and their variants come from seeded
sampling. Variant 0 is greedy, the others sample: reruns give the same captions, which the
caption cache relies on.

Throughput (issues 5 and 13): all K variants of a chunk of tiles go into as few `generate` calls as memory
allows (`fuse_variants`, default on): rows are bucketed by prompt length, greedy rows ride in the
sampled batch (`RowSampler`: each sampled row has its own seed, so no row depends on its batch), the vision tower can run once per tile (`reuse_vision`), the
row count per call comes from free CUDA memory when `batch_size` is None, attention is SDPA where
the model supports it, and `compile=True` (CUDA only) adds a static KV cache + torch.compile.
Measured on an H200 with a 7B LLaVA-1.5 (benchmarks/RESULTS.md), the CUDA defaults are: static
KV cache (`cache="auto"`; 19.6 vs 9.1 tiles/s for plain generate's dynamic cache at 128 rows: no
per-step torch.cat of the whole cache), vision once per tile (`reuse_vision=None`), no
compile (no gain after an 82 s warm-up), rows per call from free memory, expandable segments.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional, Sequence

from ..errors import CaptionerError, EngineError, ModelUnavailableError
from ..types import CaptionVariant, TileImage
from . import vlm_families
from .base import (
    assemble_variants,
    fingerprint,
    folder_revision,
    is_oom,
    offline,
    resolve_device,
    resolve_dtype,
    tile_image,
    tile_key,
)
from .prompts import PROMPT_VERSION, SYSTEM, get_preset, variant_prompt
from .spectral import SpectralCaptioner, spectral_facts
from .vlm_batching import RowSampler, auto_rows, encode_images_once, plan_rows, resolve_cache, reusable_vision, row_seed

log = logging.getLogger(__name__)

def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or os.path.isabs(name) or name.count("/") > 1 or "\\" in name


def _load(
    name: str, revision: Optional[str], torch_dtype: Any, trust_remote_code: bool, attn: str = "auto",
) -> tuple[Any, Any, str]:
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
        config = vlm_families.check_config(name, source, kw)  # one-line refusals of what cannot caption
        processor = vlm_families.load_processor(name, source, config, kw)
    except (OSError, ValueError, KeyError) as exc:
        where = "offline (HF_HUB_OFFLINE is set; download it first or give a local folder)" if offline() and not local else ""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailableError(f"captioner model {name!r} is not available{' ' + where if where else ''}: {first}") from None
    errors = []
    for cls_name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq", "AutoModelForCausalLM"):
        cls = getattr(transformers, cls_name, None)
        if cls is None:
            continue
        try:
            extra = {} if attn == "auto" else {"attn_implementation": attn}
            model = cls.from_pretrained(source, dtype=torch_dtype, **kw, **extra)
            return processor, model, source
        except ValueError as exc:  # "Unrecognized configuration class" -> try the next auto class
            errors.append(str(exc).splitlines()[0])
        except OSError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ModelUnavailableError(f"captioner model {name!r} has no loadable weights: {first}") from None
    raise ModelUnavailableError(f"captioner model {name!r} is not an image-to-text model transformers can load: {errors[-1] if errors else ''}")


class TransformersCaptioner:
    """RSRT captions from a local or hub VLM (see the module docstring).

    `batch_size` is tiles per chunk (what the pipeline reads ahead); `max_rows` is sequences per
    generate call (tiles x variants are split into calls of at most that many). On CUDA, when
    they are None, both come from the free GPU memory after the model is loaded.
    """

    def __init__(
        self, model: str, *, variants: Optional[int] = None, preset: str = "rsrt", device: str = "auto",
        dtype: str = "auto", batch_size: Optional[int] = None, max_new_tokens: Optional[int] = None,
        temperature: float = 0.7, top_p: float = 0.9, seed: int = 0, append_facts: bool = True,
        revision: Optional[str] = None, max_rows: Optional[int] = None,
        fuse_variants: bool = True, reuse_vision: Any = None, attn_implementation: str = "auto",
        compile: bool = False, cache: str = "auto", prefetch: bool = True,
    ) -> None:
        import torch

        p = get_preset(preset)
        self.variants = int(variants or p.variants)
        self.max_new_tokens = int(max_new_tokens or p.max_new_tokens)
        if self.variants < 1 or self.max_new_tokens < 1:
            raise EngineError("variants and max_new_tokens must be at least 1")
        if (batch_size is not None and int(batch_size) < 1) or (max_rows is not None and int(max_rows) < 1):
            raise EngineError(f"batch_size and max_rows must be at least 1, got {batch_size} and {max_rows}")
        self.device = resolve_device(device)
        if compile and not self.device.startswith("cuda"):
            raise EngineError(f"compile=True (static KV cache + torch.compile) needs a CUDA device, not {self.device!r}")
        if cache not in ("auto", "dynamic", "static"):
            raise EngineError(f"unknown cache {cache!r}; choose auto, dynamic or static")
        if compile and cache == "dynamic":
            raise EngineError("compile=True needs the static KV cache (cache='static' or 'auto'), not cache='dynamic'")
        if attn_implementation not in ("auto", "sdpa", "eager", "flash_attention_2"):
            raise EngineError(f"unknown attn_implementation {attn_implementation!r}; choose auto, sdpa, eager or flash_attention_2")
        self.dtype = resolve_dtype(dtype, self.device)
        self.temperature, self.top_p, self.seed = float(temperature), float(top_p), int(seed)
        self.append_facts = bool(append_facts)
        # Vision tower once per tile: +22% variant rows/s at K=5 on an H200 (benchmarks/RESULTS.md),
        # noise on CPU; same answers either way (tests/core/test_vlm_throughput.py).
        if reuse_vision is None or reuse_vision == "auto":
            reuse_vision = self.device.startswith("cuda")
        self.fuse_variants, self.reuse_vision, self.compile = bool(fuse_variants), bool(reuse_vision), bool(compile)
        self.cache = resolve_cache(cache, self.device, self.compile)
        self.prefetch = bool(prefetch)
        self.name = model
        if self.device.startswith("cuda") and not torch.cuda.is_initialized():
            # Large generate batches leave the caching allocator fragmented (a 209-row call failed
            # with 24 GB reserved but unusable on an H200); expandable segments avoid that. Read
            # by PyTorch when CUDA initialises, so only set before the first CUDA allocation.
            os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        preloaded = self.__dict__.pop("_preloaded", None)
        self.processor, self.model, source = preloaded or _load(model, revision, self.dtype, False, attn_implementation)  # remote code never runs
        self.model.to(self.device).eval()
        # transformers picks SDPA by itself where the architecture supports it ("auto").
        self.attn_implementation = str(getattr(self.model.config, "_attn_implementation", None) or "eager")
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
        self.cache = vlm_families.cache_for(model, self.model_type, self.cache, asked=cache == "static" or self.compile)
        self._prompts: dict[int, str] = {}
        self._prompt_lens: dict[int, int] = {}
        self._size_batch(batch_size, max_rows)
        rev = getattr(self.model.config, "_commit_hash", None) or (folder_revision(source) if os.path.isdir(source) else revision or "")
        shown = os.path.basename(source.rstrip("/")) if os.path.isdir(source) else model
        self.fingerprint = fingerprint(
            "transformers", shown, rev, PROMPT_VERSION if self.chat else "plain-caption", variants=self.variants,
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p, seed=self.seed,
            facts=int(self.append_facts),
        )
        self._fallback = SpectralCaptioner(variants=self.variants)

    @classmethod
    def from_model(cls, model: Any, processor: Any, name: str, **options: Any) -> TransformersCaptioner:
        """A captioner around a model already in memory (benchmarks build a random 7B on the GPU
        in seconds; saving and reloading it would take minutes). `options` are the constructor's."""
        obj = cls.__new__(cls)
        obj.__dict__["_preloaded"] = (processor, model, name)  # read (and dropped) by __init__
        obj.__init__(name, **options)  # type: ignore[misc]
        return obj

    def _size_batch(self, batch_size: Optional[int], max_rows: Optional[int]) -> None:
        """Tiles per chunk and rows per call: given, or from free CUDA memory, or small CPU defaults."""
        k = self.variants if self.fuse_variants else 1
        rows = max_rows
        if rows is None and self.device.startswith("cuda"):
            tokens = self._row_tokens() + self.max_new_tokens
            itemsize = int(self._torch.tensor([], dtype=self.dtype).element_size())
            rows = auto_rows(self.model, self.device, itemsize, tokens, self._torch)
            if rows is not None:
                log.info("captioner %s: %d rows per generate call from free GPU memory", self.name, rows)
        if batch_size is None:
            batch_size = max(1, rows // k) if rows is not None else (8 if self.device != "cpu" else 2)
        self.batch_size = int(batch_size)
        self.max_rows = int(rows if rows is not None else self.batch_size * k)

    def _row_tokens(self) -> int:
        """Prompt tokens of one row with the image placeholders expanded (a blank tile through the processor)."""
        from PIL import Image

        blank = Image.new("RGB", (64, 64))
        if not self.chat:
            return 64
        imgs = vlm_families.images_arg(self.model_type, [blank])
        return int(self.processor(images=imgs, text=[self._prompt(0)], return_tensors="pt")["input_ids"].shape[1])

    # -- prompts ------------------------------------------------------------------------------
    def _prompt(self, k: int) -> str:
        if k not in self._prompts:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"{SYSTEM} {variant_prompt(k)}"}]}]
            self._prompts[k] = vlm_families.chat_prompt(self.processor, messages)
        return self._prompts[k]

    def _prompt_len(self, k: int) -> int:
        """Token length of variant k's prompt text (image placeholders count once): the bucketing key."""
        if not self.chat or self._tokenizer is None:
            return 0
        if k not in self._prompt_lens:
            self._prompt_lens[k] = len(self._tokenizer(self._prompt(k), add_special_tokens=False)["input_ids"])
        return self._prompt_lens[k]

    # -- generation ---------------------------------------------------------------------------
    def _host_inputs(self, images: list[Any], ks: list[int]) -> Any:
        """Processor outputs for one row per (image, variant) pair, on the host (pinned on CUDA).

        This is the CPU half of a generate call: `generate_texts` runs it for the next call in a
        background thread while the GPU decodes the current one (`prefetch`)."""
        if self.chat:
            imgs = vlm_families.images_arg(self.model_type, images)
            batch = self.processor(images=imgs, text=[self._prompt(k) for k in ks], return_tensors="pt", padding=True)
        else:
            batch = self.processor(images=images, return_tensors="pt")
        out = {}
        pin = self.device.startswith("cuda")
        for key, value in batch.items():
            if hasattr(value, "is_floating_point") and value.is_floating_point():
                value = value.to(self.dtype)  # cast on the host: half the bytes to copy
            if pin and hasattr(value, "pin_memory"):
                value = value.pin_memory()
            out[key] = value
        return out

    def _inputs(self, images: list[Any], ks: list[int]) -> Any:
        """Processor outputs for one row per (image, variant) pair, on the device in the model dtype."""
        return self._to_device(self._host_inputs(images, ks))

    def _to_device(self, host: dict[str, Any]) -> dict[str, Any]:
        return {k: (v.to(self.device, non_blocking=True) if hasattr(v, "to") else v) for k, v in host.items()}

    def _generate_kwargs(self, rows: list[tuple[int, int]], keys: Sequence[str]) -> dict[str, Any]:
        """Greedy decoding over scores where each sampled row (variant > 0) already drew its token
        with its own seed (`RowSampler`): the same tile and variant give the same text in any batch."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        seeds = [None if k == 0 else row_seed(self.seed, keys[i], k) for i, k in rows]
        if any(s is not None for s in seeds):
            top_k = getattr(getattr(self.model, "generation_config", None), "top_k", None)
            kwargs["logits_processor"] = [RowSampler(seeds, self.temperature, self.top_p, 50 if top_k is None else top_k)]
        kwargs.update(vlm_families.pad_kwargs(self.model_type, self._tokenizer))
        if self.cache == "static":
            # A preallocated KV cache: no per-step torch.cat of the whole cache. transformers compiles
            # the decode step by itself for a static cache on CUDA; `compile` decides whether it may.
            kwargs["cache_implementation"] = "static"
            kwargs["disable_compile"] = not self.compile
        return kwargs

    def _generate_rows(self, images: list[Any], rows: list[tuple[int, int]], host: Optional[dict[str, Any]] = None,
                       keys: Optional[Sequence[str]] = None) -> list[str]:
        """One generate call over `rows` (tile index, variant): variant 0 greedy, the others sampled
        with a seed from the tile's key (`keys[tile index]`) and the variant."""
        torch = self._torch
        inputs = self._to_device(host if host is not None else self._host_inputs([images[i] for i, _ in rows], [k for _, k in rows]))
        kwargs = self._generate_kwargs(rows, keys if keys is not None else [str(i) for i in range(len(images))])
        with torch.inference_mode():
            if self.reuse_vision and self.chat and reusable_vision(self.model, list(inputs)):
                pixel_values = inputs.pop("pixel_values")
                kwargs["mm_encoder_outputs"] = encode_images_once(self.model, pixel_values, [i for i, _ in rows])
            ids = self.model.generate(**inputs, **kwargs)
        if self.chat and "input_ids" in inputs and not self.model.config.is_encoder_decoder:
            ids = ids[:, inputs["input_ids"].shape[1]:]
        decode: Any = getattr(self.processor, "batch_decode", None) or self._tokenizer.batch_decode
        return [str(t).strip() for t in decode(ids.cpu(), skip_special_tokens=True)]

    def generate_texts(self, tiles: Sequence[TileImage]) -> list[list[str]]:
        """The raw model answers, K per tile, before parsing (what tests and benchmarks compare).

        With `prefetch` and more than one generate call, the processor work (resize, normalise,
        tokenise, pin) for call n+1 runs in a thread while call n generates."""
        images = [tile_image(t) for t in tiles]
        keys = [tile_key(t) for t in tiles]
        texts: dict[tuple[int, int], str] = {}
        if self.fuse_variants:
            plan = plan_rows(len(tiles), self.variants, self._prompt_len, self.max_rows)
        else:  # one call per variant (the reference path, kept for measurements)
            plan = [[(i, k) for i in range(len(tiles))] for k in range(self.variants)]

        def host(rows: list[tuple[int, int]]) -> dict[str, Any]:
            return self._host_inputs([images[i] for i, _ in rows], [k for _, k in rows])

        if not self.prefetch or len(plan) < 2:
            for rows in plan:
                texts.update(zip(rows, self._generate_rows(images, rows, keys=keys)))
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlm-preprocess") as pool:
                pending = pool.submit(host, plan[0])
                for n, rows in enumerate(plan):
                    ready = pending.result()
                    if n + 1 < len(plan):
                        pending = pool.submit(host, plan[n + 1])
                    texts.update(zip(rows, self._generate_rows(images, rows, ready, keys=keys)))
        return [[texts[(i, k)] for k in range(self.variants)] for i in range(len(tiles))]

    def _caption_chunk(self, tiles: Sequence[TileImage]) -> list[list[CaptionVariant]]:
        out = []
        for tile, answers in zip(tiles, self.generate_texts(tiles)):
            facts = spectral_facts(tile) if self.append_facts and tile.has_nir else ""
            out.append(assemble_variants(answers, self.variants, self._fallback, tile, facts))
        return out

    def caption(self, tiles: Sequence[TileImage]) -> list[list[CaptionVariant]]:
        """K variants per tile, in input order; CUDA OOM halves the rows per call and retries down to 1."""
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
                if self.batch_size <= 1 and self.max_rows <= 1:
                    raise CaptionerError(
                        f"captioner {self.name!r} ran out of GPU memory even with batch size 1; "
                        "try dtype float16, a smaller model or device cpu"
                    ) from None
                self.max_rows = max(1, self.max_rows // 2)
                self.batch_size = max(1, min(self.batch_size // 2, self.max_rows))
                log.warning(
                    "captioner %s: out of GPU memory, retrying with %d tiles per chunk, %d rows per generate call",
                    self.name, self.batch_size, self.max_rows,
                )
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
