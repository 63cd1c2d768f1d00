"""Captioners: images in, K structured caption variants per tile out.

`make_captioner(spec)` picks the backend from the spec string through a registry
(`CAPTIONER_KINDS`: each kind registers its builder, usage and whether it has a server to check):
`spectral` (offline physics, the default), `transformers:<hub id or local folder>` (any
image-text-to-text VLM), `openai:<base_url>#<model>` (an OpenAI-compatible server) or
`python:<module>:<factory>` (a captioner of your own). The heavy
backends are imported only when asked for, so the spectral path never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..errors import EngineError
from ..types import CancelFn, Captioner
from .prompts import get_preset
from .spectral import SpectralCaptioner, spectral_facts

__all__ = ["CAPTIONER_KINDS", "CaptionerKind", "bind_captioner", "make_captioner", "preflight_captioner",
           "register_captioner", "spectral_facts", "SpectralCaptioner"]


@dataclass(frozen=True)
class CaptionerKind:
    """One kind of captioner spec (`<name>:<target>`): how to build it and what the preflight checks."""

    name: str
    #: how the spec is written, for error messages ("openai:<base_url>#<model>")
    usage: str
    #: build(spec, target, common, options): `common` holds variants, preset, device, dtype, batch_size,
    #: api_key and max_new_tokens; `options` the backend's own keywords (checked by the builder)
    build: Callable[[str, str, dict[str, Any], dict[str, Any]], Captioner]
    #: a server to reach: `preflight_captioner` checks it before any model loads
    needs_server: bool = False


#: The registry: each kind registers itself below; `make_captioner` and the preflight only look it up.
CAPTIONER_KINDS: dict[str, CaptionerKind] = {}


def register_captioner(kind: CaptionerKind) -> None:
    """Add (or replace) a kind of captioner spec."""
    CAPTIONER_KINDS[kind.name] = kind


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
    name, _, target = spec.partition(":")
    kind = CAPTIONER_KINDS.get(name.strip().lower())
    if variants is not None and int(variants) < 1:
        raise EngineError(f"variants must be at least 1, got {variants}")
    get_preset(preset)  # an unknown preset is an error for every backend, not only the VLM ones
    if kind is None:
        shown = [k.usage for k in CAPTIONER_KINDS.values() if k.name != "vllm"]
        raise EngineError(f"unknown captioner {spec!r}; use {', '.join(shown[:-1])} or {shown[-1]}")
    common = {"variants": variants, "preset": preset, "device": device, "dtype": dtype, "batch_size": batch_size,
              "api_key": api_key, "max_new_tokens": max_new_tokens}
    return kind.build(spec, target, common, options)


def _spectral(spec: str, target: str, common: dict[str, Any], options: dict[str, Any]) -> Captioner:
    _check_options("spectral", options, set())
    if target:
        raise EngineError(f"captioner spec {spec!r}: 'spectral' takes no model")
    return SpectralCaptioner(variants=common["variants"], batch_size=common["batch_size"])


def _transformers(spec: str, target: str, common: dict[str, Any], options: dict[str, Any]) -> Captioner:
    if not target.strip():
        raise EngineError("captioner spec 'transformers:' needs a model, e.g. transformers:llava-hf/llava-1.5-7b-hf")
    from .transformers_vlm import TransformersCaptioner

    _check_options("transformers", options, _keywords(TransformersCaptioner))
    return TransformersCaptioner(
        target.strip(), variants=common["variants"], preset=common["preset"], device=common["device"],
        dtype=common["dtype"], batch_size=common["batch_size"], max_new_tokens=common["max_new_tokens"], **options,
    )


def _openai(spec: str, target: str, common: dict[str, Any], options: dict[str, Any]) -> Captioner:
    base_url, sep, model = target.rpartition("#")
    if not sep or not base_url.strip() or not model.strip():
        raise EngineError(f"captioner spec {spec!r}: expected openai:<base_url>#<model>, e.g. openai:http://localhost:11434/v1#llava")
    from .openai_api.openai_compat import OpenAICaptioner

    _check_options("openai", options, _keywords(OpenAICaptioner))
    return OpenAICaptioner(
        base_url.strip(), model.strip(), variants=common["variants"], preset=common["preset"], api_key=common["api_key"],
        batch_size=common["batch_size"], max_new_tokens=common["max_new_tokens"], **options,
    )


def _vllm(spec: str, target: str, common: dict[str, Any], options: dict[str, Any]) -> Captioner:
    from .vllm_ray import refuse_local

    raise refuse_local(spec)  # the Ray executor runs it through ray.data.llm (ray_vllm.py)


def _python(spec: str, target: str, common: dict[str, Any], options: dict[str, Any]) -> Captioner:
    return _from_factory(spec, target, variants=common["variants"], batch_size=common["batch_size"],
                         device=common["device"], **options)


for _kind in (
    CaptionerKind("spectral", "spectral", _spectral),
    CaptionerKind("transformers", "transformers:<model>", _transformers),
    CaptionerKind("openai", "openai:<base_url>#<model>", _openai, needs_server=True),
    CaptionerKind("vllm", "vllm:<model> (Ray executor only)", _vllm),
    CaptionerKind("python", "python:<module>:<factory>", _python),
):
    register_captioner(_kind)


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
    kind = CAPTIONER_KINDS.get((spec or "spectral").strip().partition(":")[0].strip().lower())
    if kind is None or not kind.needs_server:
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
