"""The `vllm:<model>` captioner: vLLM on the Ray cluster's GPUs through `ray.data.llm`.

Cluster-side only: the `ray` executor puts `ray.data.llm.build_processor(vLLMEngineProcessorConfig(...))`
in place of its caption actor pool (one vLLM engine per GPU, continuous batching over every tile in
flight); the local executor refuses the spec in one line (a vLLM server is `openai:<url>#<model>`).
What is ours, and unit-tested without vLLM, is on both sides of the processor: the request rows
(one per tile and variant: the system prompt, the variant's wording and the tile as a JPEG data
URL; variant 0 greedy, variants 1.. sampled with their own seed) and the parsing of the generated
texts back into caption variants (an unusable answer becomes that variant's spectral description,
flagged as a fallback, exactly as the other VLM captioners do). Ray Data's vLLM stage returns one
output per row (`n` is not passed through), so the K variants are K rows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence

from ..errors import EngineError
from ..types import CaptionVariant, TileImage
from .base import fingerprint, folder_revision
from .openai_api.image_urls import jpeg_data_url
from .parsing import parse_variants
from .prompts import PROMPT_VERSION, SYSTEM, get_preset, variant_prompt
from .spectral import SpectralCaptioner, spectral_facts

#: The packages the cluster's GPU nodes need (the engine that drives the job needs only ray[data]).
VLLM_PACKAGES = "vllm (pip install 'ray[llm]'==<the cluster's Ray version>, on every GPU node)"
#: Engine settings that fit one tile image per prompt on one GPU (overridable: engine_kwargs).
DEFAULT_ENGINE_KWARGS: dict[str, Any] = {"max_model_len": 4096, "limit_mm_per_prompt": {"image": 1},
                                         "enable_prefix_caching": True}
OPTIONS = {"variants", "preset", "batch_size", "max_new_tokens", "temperature", "seed", "append_facts", "revision",
           "engine_kwargs", "device", "dtype"}


@dataclass(frozen=True)
class VllmSpec:
    """What a `vllm:<model>` captioner is: everything the request rows and the cache key depend on."""

    model: str
    variants: int = 5
    max_new_tokens: int = 320
    temperature: float = 0.7
    seed: int = 0
    append_facts: bool = True
    revision: Optional[str] = None
    batch_size: int = 16
    engine_kwargs: dict[str, Any] = field(default_factory=dict)


def is_vllm(spec: str) -> bool:
    return (spec or "").strip().partition(":")[0].strip().lower() == "vllm"


def parse_vllm_spec(spec: str, options: dict[str, Any]) -> VllmSpec:
    """`vllm:<hub id or folder the GPU nodes can read>` and its options, checked in one line."""
    model = (spec or "").strip().partition(":")[2].strip()
    if not model:
        raise EngineError("captioner spec 'vllm:' needs a model, e.g. vllm:Qwen/Qwen2.5-VL-7B-Instruct")
    # `engine_<argument>=value` (what the CLI's --captioner-option can say) is a vLLM engine argument.
    flat = {k[len("engine_"):]: v for k, v in options.items() if k.startswith("engine_") and k != "engine_kwargs"}
    options = {k: v for k, v in options.items() if not (k.startswith("engine_") and k != "engine_kwargs")}
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise EngineError(f"vllm captioner: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(OPTIONS))}")
    preset = get_preset(str(options.get("preset") or "rsrt"))
    engine = options.get("engine_kwargs") or {}
    if not isinstance(engine, dict):
        raise EngineError("vllm captioner: engine_kwargs must be a mapping of vLLM engine arguments")
    return VllmSpec(
        model=model, variants=int(options.get("variants") or preset.variants),
        max_new_tokens=int(options.get("max_new_tokens") or preset.max_new_tokens),
        temperature=float(options.get("temperature", 0.7)), seed=int(options.get("seed", 0)),
        append_facts=bool(options.get("append_facts", True)), revision=options.get("revision") or None,
        batch_size=int(options.get("batch_size") or 16), engine_kwargs={**engine, **flat},
    )


def request_rows(tiles: Sequence[TileImage], spec: VllmSpec) -> list[dict[str, Any]]:
    """One `ray.data.llm` row per tile and variant: chat `messages` (OpenAI format, the image as a
    JPEG data URL before the variant's wording, so vLLM's prefix cache can share the system prompt
    and the image among a tile's variants) and per-row `sampling_params`."""
    rows = []
    for i, tile in enumerate(tiles):
        url = jpeg_data_url(tile)  # once per tile
        for k in range(spec.variants):
            rows.append({
                "seq": i, "k": k,
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": [  # the image first: the variants share that prefix
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": variant_prompt(k)},
                    ]},
                ],
                "sampling_params": {"temperature": 0.0 if k == 0 else spec.temperature, "max_tokens": spec.max_new_tokens,
                                    "seed": spec.seed + k},
            })
    return rows


def variant_from_text(text: str, fallback: CaptionVariant, facts: str = "") -> CaptionVariant:
    """One generated text -> one caption variant; an unusable answer is the tile's spectral
    description of that variant (`fallback`), flagged with the reason."""
    found = parse_variants(text)
    if found:
        v = found[0]
    else:
        why = "vLLM returned no text" if not (text or "").strip() else "vLLM's answer could not be parsed"
        v = replace(fallback, fallback=why)
    return replace(v, caption=f"{v.caption} {facts}".strip()) if facts else v


def fallbacks_and_facts(tile: TileImage, spec: VllmSpec) -> tuple[list[CaptionVariant], str]:
    """Computed where the pixels are (the request task): the spectral stand-ins and the NIR facts."""
    spectral = SpectralCaptioner(variants=spec.variants)
    facts = spectral_facts(tile) if spec.append_facts and tile.has_nir else ""
    return [spectral.describe_tile(tile, k) for k in range(spec.variants)], facts


def vllm_fingerprint(spec: str, options: dict[str, Any]) -> str:
    """Run on a GPU node of the cluster: vLLM must be importable there; the cache key names the
    model, its revision (the given one, or a local folder's content hash) and vLLM's version."""
    s = parse_vllm_spec(spec, options)
    try:
        import vllm
    except ImportError as exc:
        raise EngineError(f"the vllm: captioner needs {VLLM_PACKAGES}: {exc}") from None
    rev = s.revision or (folder_revision(s.model) if os.path.isdir(s.model) else "")
    return fingerprint("vllm", s.model, rev, PROMPT_VERSION, variants=s.variants, max_tokens=s.max_new_tokens,
                       temperature=s.temperature, seed=s.seed, facts=int(s.append_facts),
                       vllm=getattr(vllm, "__version__", "?"))


def vllm_identity(spec: str, options: dict[str, Any]) -> tuple[str, int]:
    """(fingerprint, batch size): what the `ray` executor asks of a captioner on the cluster."""
    return vllm_fingerprint(spec, options), parse_vllm_spec(spec, options).batch_size


def build_vllm_processor(spec: VllmSpec, workers: int, keep: Sequence[str]) -> Any:
    """The `ray.data.llm` processor: chat template, tokenizer, vLLM engine (one per GPU worker, up to
    `workers`), detokenizer; the rows' `keep` columns come through with the `generated_text`."""
    try:
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    except ImportError as exc:
        raise EngineError(f"the vllm: captioner needs ray.data.llm (ray[data] 2.60 with {VLLM_PACKAGES}): {exc}") from None
    config = vLLMEngineProcessorConfig(
        model_source=spec.model,
        engine_kwargs={**DEFAULT_ENGINE_KWARGS, **spec.engine_kwargs},
        batch_size=max(1, spec.batch_size * spec.variants),
        concurrency=max(1, int(workers)),
        prepare_multimodal_stage={"enabled": True},
        chat_template_stage={"enabled": True},
        tokenize_stage={"enabled": True},
        detokenize_stage={"enabled": True},
    )
    cols = list(keep)
    return build_processor(config, postprocess=lambda row: {**{c: row[c] for c in cols}, "text": row.get("generated_text", "")})


def refuse_local(spec: str) -> EngineError:
    return EngineError(f"captioner {spec!r} runs on a Ray cluster only (--executor ray); on this computer use"
                       " transformers:<model>, or openai:<url>#<model> for a vLLM server")
