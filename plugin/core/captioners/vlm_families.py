"""What differs between VLM families, for the `transformers` captioner (issue 16).

Each family loads, prompts and batches a little differently; the captioner asks this module
instead of testing model types itself:

* `check_config` reads the model's config before anything heavy loads and refuses, in one
  line, what cannot caption: models whose code is not in transformers (`trust_remote_code`),
  text-only language models, image classifiers and other non image-to-text models;
* `load_processor` loads the family's processor; without torchvision (the engine environment
  does not install it) transformers cannot build the processors that also carry a video processor
  (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, SmolVLM2), so those are built from their parts through public
  APIs only (AutoImageProcessor, AutoTokenizer, the chat template file, the processor's constructor);
* `images_arg` shapes the image list the processor wants (one list per prompt for the
  Idefics/SmolVLM/Mllama/Gemma 3 processors, a flat list for the others);
* `pad_kwargs` and `cache_for` keep `generate` options away from the families they break (BLIP
  sets its own pad token; GIT and BLIP cannot decode with the static KV cache that is the CUDA
  default).

`TESTED` lists the model types the tiny-model matrix (tests/core/test_vlm_families.py) runs end
to end; other image-text-to-text types load with a warning that they are untested.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any, Optional

from ..errors import EngineError, ModelUnavailableError, first_line

log = logging.getLogger(__name__)

#: model_type -> the family's name in messages; proven by tests/core/test_vlm_families.py.
TESTED = {
    "llava": "LLaVA-1.5", "llava_next": "LLaVA-NeXT", "qwen2_vl": "Qwen2-VL", "qwen2_5_vl": "Qwen2.5-VL",
    "qwen3_vl": "Qwen3-VL", "idefics3": "Idefics3 / SmolVLM", "smolvlm": "SmolVLM2", "gemma3": "Gemma 3",
    "git": "GIT", "blip": "BLIP",
}

#: Processors of these model types want one list of images per prompt.
NESTED_IMAGES = {"idefics", "idefics2", "idefics3", "smolvlm", "mllama", "gemma3"}

#: Models whose own `generate` passes the pad token to the text decoder (a second one is a TypeError).
OWN_PAD_TOKEN = {"blip"}

#: Decoders that break on a static KV cache (GIT's image-prefix attention mask, BLIP's cross-attention
#: decoder): they always decode with the dynamic cache.
NO_STATIC_CACHE = {"git", "blip"}

_SUGGEST = "e.g. transformers:llava-hf/llava-1.5-7b-hf or transformers:Qwen/Qwen2.5-VL-3B-Instruct"


def _vlm_types() -> set[str]:
    """Model types transformers can run as image(+text)-to-text models."""
    from transformers.models.auto import modeling_auto as m

    names: set[str] = set()
    for attr in ("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES"):
        names |= set(getattr(m, attr, {}) or {})
    return names


def _first_line(exc: BaseException) -> str:
    return first_line(exc)


def check_config(name: str, source: str, kw: dict[str, Any]) -> Any:
    """The model's config, or ModelUnavailableError saying in one line why it cannot caption.

    `kw` are the from_pretrained keywords (local_files_only, trust_remote_code=False, revision).
    OSError (no such model / not downloaded) is left to the caller, which words it per case.
    """
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(source, **kw)
    except ValueError as exc:
        msg = str(exc)
        if "trust_remote_code" in msg or "does not recognize this architecture" in msg:
            raise ModelUnavailableError(
                f"captioner model {name!r} needs trust_remote_code: its model code is not part of transformers "
                f"{transformers.__version__} and this plugin never runs a model repository's code; "
                f"choose a supported model ({_SUGGEST})"
            ) from None
        raise ModelUnavailableError(f"captioner model {name!r} has an unreadable config: {_first_line(exc)}") from None
    model_type = str(getattr(config, "model_type", "") or "")
    arch = ", ".join(getattr(config, "architectures", None) or []) or model_type
    if model_type in _vlm_types():
        if model_type not in TESTED:
            log.warning("captioner model %s: family %s loads but is not in the tested matrix", name, model_type)
        return config
    if getattr(config, "vision_config", None) is None and _is_causal_lm(model_type):
        raise ModelUnavailableError(
            f"captioner model {name!r} is a text-only language model ({arch}): it cannot see images; "
            f"choose an image-text-to-text model ({_SUGGEST})"
        )
    raise ModelUnavailableError(
        f"captioner model {name!r} ({arch}) is not an image-to-text model transformers "
        f"{transformers.__version__} can caption with; choose an image-text-to-text model ({_SUGGEST})"
    )


def _is_causal_lm(model_type: str) -> bool:
    from transformers.models.auto import modeling_auto as m

    return model_type in getattr(m, "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", {})


def _processor_class(model_type: str) -> Any:
    import transformers
    from transformers.models.auto import processing_auto

    cls_name = processing_auto.PROCESSOR_MAPPING_NAMES.get(model_type)
    return getattr(transformers, cls_name, None) if isinstance(cls_name, str) else None


def _images_only(cls: Any) -> Any:
    """`cls` accepting None as its video processor (transformers builds video processors only with torchvision).

    Only the public constructor and the public `check_argument_for_proper_class` hook are involved.
    """

    class ImagesOnly(cls):  # type: ignore[misc, valid-type]
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument is None and argument_name == "video_processor":
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    ImagesOnly.__name__ = ImagesOnly.__qualname__ = cls.__name__
    return ImagesOnly


def _repo_file(source: str, filename: str, kw: dict[str, Any]) -> Optional[str]:
    """The text of `filename` in a model folder or hub repository (the local cache when offline), or None."""
    if os.path.isdir(source):
        path = os.path.join(source, filename)
        return Path(path).read_text(encoding="utf-8") if os.path.isfile(path) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        path = hf_hub_download(source, filename, revision=kw.get("revision"), cache_dir=kw.get("cache_dir"),
                               local_files_only=bool(kw.get("local_files_only")), token=kw.get("token"))
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return None
    return Path(path).read_text(encoding="utf-8")


def _images_only_processor(cls: Any, source: str, kw: dict[str, Any]) -> Any:
    """The family's processor built from its parts: image processor, tokenizer, chat template and the
    options of processor_config.json that its constructor takes; no video processor."""
    import transformers

    image_processor = transformers.AutoImageProcessor.from_pretrained(source, **kw)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, **kw)
    options = json.loads(_repo_file(source, "processor_config.json", kw) or "{}")
    template = (_repo_file(source, "chat_template.jinja", kw)
                or json.loads(_repo_file(source, "chat_template.json", kw) or "{}").get("chat_template")
                or options.get("chat_template") or getattr(tokenizer, "chat_template", None))
    takes = set(inspect.signature(cls.__init__).parameters) - {"self", "image_processor", "tokenizer", "video_processor",
                                                               "chat_template", "args", "kwargs"}
    extra = {k: v for k, v in options.items() if k in takes}
    return _images_only(cls)(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                             chat_template=template, **extra)


def chat_prompt(processor: Any, messages: list[dict[str, Any]]) -> str:
    """The prompt text of `messages` through the processor's chat template.

    An images-only processor (no video processor) renders the template through its tokenizer:
    SmolVLM's own `apply_chat_template` reads video settings first.
    """
    template = getattr(processor, "chat_template", None)
    tokenizer = getattr(processor, "tokenizer", None)
    if getattr(processor, "video_processor", False) is None and template and tokenizer is not None:
        return str(tokenizer.apply_chat_template(messages, chat_template=template, add_generation_prompt=True, tokenize=False))
    return str(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))


def load_processor(name: str, source: str, config: Any, kw: dict[str, Any]) -> Any:
    """The family's processor (AutoProcessor), images-only where a missing torchvision would break it."""
    import transformers
    from transformers.utils import is_torchvision_available

    model_type = str(getattr(config, "model_type", "") or "")
    cls = _processor_class(model_type)
    try:
        if cls is not None and not is_torchvision_available() and "video_processor" in cls.get_attributes():
            processor = _images_only_processor(cls, source, kw)
        else:
            processor = transformers.AutoProcessor.from_pretrained(source, **kw)
    except OSError as exc:
        if "image processor" not in str(exc) and "preprocessor_config" not in str(exc):
            raise
        processor = None
    if getattr(processor, "image_processor", None) is None:
        raise ModelUnavailableError(
            f"captioner model {name!r} ({model_type}) has no image processor in its folder "
            f"(preprocessor_config.json): it cannot take images"
        )
    return processor


def images_arg(model_type: str, images: list[Any]) -> Any:
    """The `images=` argument of the processor for one image per prompt."""
    return [[im] for im in images] if model_type in NESTED_IMAGES else images


def pad_kwargs(model_type: str, tokenizer: Any) -> dict[str, Any]:
    """`pad_token_id` for `generate` (batches are padded), unless the model sets it itself."""
    if model_type in OWN_PAD_TOKEN or tokenizer is None or getattr(tokenizer, "pad_token_id", None) is None:
        return {}
    return {"pad_token_id": tokenizer.pad_token_id}


def cache_for(name: str, model_type: str, cache: str, *, asked: bool) -> str:
    """The KV cache the family can decode with: `cache`, or 'dynamic' where a static one breaks it.

    `asked` is True when the user chose the static cache (cache='static' or compile=True): that
    is refused in one line rather than silently changed.
    """
    if cache != "static" or model_type not in NO_STATIC_CACHE:
        return cache
    if asked:
        raise EngineError(
            f"captioner model {name!r} ({model_type}) cannot decode with a static KV cache (cache='static' or "
            "compile=True); use cache='dynamic'"
        )
    return "dynamic"
