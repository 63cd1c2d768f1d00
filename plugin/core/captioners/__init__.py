"""Captioners: images in, K structured caption variants per tile out.

`make_captioner(spec)` picks the backend from the spec string:
`spectral` (offline physics, the default), `transformers:<hub id or local folder>` (any
image-text-to-text VLM), `openai:<base_url>#<model>` (an OpenAI-compatible server) or
`python:<module>:<factory>` (a captioner of your own). The heavy
backends are imported only when asked for, so the spectral path never imports torch.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..errors import EngineError
from ..types import CancelFn, Captioner
from .prompts import get_preset
from .spectral import SpectralCaptioner, spectral_facts

__all__ = ["bind_captioner", "make_captioner", "preflight_captioner", "spectral_facts", "SpectralCaptioner"]


def make_captioner(
    spec: str = "spectral",
    *,
    variants: Optional[int] = None,
    preset: str = "rsrt",
    device: str = "auto",
    dtype: str = "auto",
    batch_size: Optional[int] = None,
    api_key: Optional[str] = None,
    max_new_tokens: Optional[int] = None,
    **options: Any,
) -> Captioner:
    """Build the captioner named by `spec`; bad specs raise an EngineError saying what is accepted."""
    spec = (spec or "spectral").strip()
    kind, _, target = spec.partition(":")
    kind = kind.strip().lower()
    if variants is not None and int(variants) < 1:
        raise EngineError(f"variants must be at least 1, got {variants}")
    get_preset(preset)  # an unknown preset is an error for every backend, not only the VLM ones
    if kind == "spectral":
        _check_options("spectral", options, set())
        if target:
            raise EngineError(f"captioner spec {spec!r}: 'spectral' takes no model")
        return SpectralCaptioner(variants=variants, batch_size=batch_size)
    if kind == "transformers":
        if not target.strip():
            raise EngineError("captioner spec 'transformers:' needs a model, e.g. transformers:llava-hf/llava-1.5-7b-hf")
        from .transformers_vlm import TransformersCaptioner

        _check_options("transformers", options, _keywords(TransformersCaptioner))
        return TransformersCaptioner(
            target.strip(), variants=variants, preset=preset, device=device, dtype=dtype, batch_size=batch_size,
            max_new_tokens=max_new_tokens, **options,
        )
    if kind == "openai":
        base_url, sep, model = target.rpartition("#")
        if not sep or not base_url.strip() or not model.strip():
            raise EngineError(f"captioner spec {spec!r}: expected openai:<base_url>#<model>, e.g. openai:http://localhost:11434/v1#llava")
        from .openai_api.openai_compat import OpenAICaptioner

        _check_options("openai", options, _keywords(OpenAICaptioner))
        return OpenAICaptioner(
            base_url.strip(), model.strip(), variants=variants, preset=preset, api_key=api_key,
            batch_size=batch_size, max_new_tokens=max_new_tokens, **options,
        )
    if kind == "vllm":
        from .vllm_ray import refuse_local

        raise refuse_local(spec)  # the Ray executor runs it through ray.data.llm (ray_vllm.py)
    if kind == "python":
        return _from_factory(spec, target, variants=variants, batch_size=batch_size, device=device, **options)
    raise EngineError(f"unknown captioner {spec!r}; use spectral, transformers:<model>, openai:<base_url>#<model>"
                      " or python:<module>:<factory>")


def _from_factory(spec: str, target: str, **kwargs: Any) -> Captioner:
    """`python:<module>:<factory>`: a captioner of your own (a site model, a stand-in with a fixed
    latency for scaling benchmarks); the factory gets variants, batch_size, device and the options.
    On a cluster the module must be importable on every node."""
    import importlib

    module, _, attr = target.strip().rpartition(":")
    if not module or not attr:
        raise EngineError(f"captioner spec {spec!r}: expected python:<module>:<factory>")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise EngineError(f"captioner spec {spec!r}: {exc}") from None
    cap = factory(**kwargs)
    if not getattr(cap, "fingerprint", None) or not callable(getattr(cap, "caption", None)):
        raise EngineError(f"captioner spec {spec!r}: the factory must return an object with fingerprint and caption()")
    return cap


def preflight_captioner(spec: str, options: dict[str, Any], status: Callable[[str], None], is_canceled: CancelFn) -> None:
    """Cheap checks before any model loads: an `openai:` server that is down, refuses the key or
    never answers fails here in seconds (with progress "waiting for the captioner server ...")."""
    kind = (spec or "spectral").strip().partition(":")[0].strip().lower()
    if kind != "openai":
        return
    cap = make_captioner(spec, **options)
    status("checking the captioner server")
    try:
        bind_captioner(cap, status, is_canceled)
        cap.check_server()  # type: ignore[attr-defined]
    finally:
        cap.close()  # type: ignore[attr-defined]


def bind_captioner(cap: Any, status: Callable[[str], None], is_canceled: CancelFn) -> None:
    """Hand a captioner that waits on a server the job's status line and cancel flag."""
    bind = getattr(cap, "bind", None)
    if bind is not None:
        bind(status, is_canceled)


_COMMON = {"variants", "preset", "device", "dtype", "batch_size", "api_key", "max_new_tokens"}


def _keywords(cls: Any) -> set[str]:
    import inspect

    return {p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind == p.KEYWORD_ONLY} - _COMMON


def _check_options(kind: str, options: dict[str, Any], accepted: set[str]) -> None:
    """Unknown options are a user error (a typo would otherwise be silently ignored or a TypeError)."""
    unknown = sorted(set(options) - accepted)
    if unknown:
        known = ", ".join(sorted(accepted)) or "none beyond the common ones"
        raise EngineError(f"captioner {kind!r} does not take option(s) {', '.join(unknown)}; extra options it takes: {known}")
