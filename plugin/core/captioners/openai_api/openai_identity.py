"""What an OpenAI-compatible server says about the model it serves: part of the caption cache key.

The `openai` captioner's fingerprint names the model and what the server reports about it, never
the server's URL: a pool of servers behind a load balancer, a moved server or a new port keep the
cache; a server that now serves another build of the same model name does not.
- vLLM: `GET /v1/models` lists each served name with its `root` (the weights it loaded, e.g. the
  Hugging Face id or folder) and `parent` (a LoRA's base).
- Ollama: `/v1/models` only lists names; its native `GET /api/tags` gives each model's `digest`
  (the content hash of the weights), which changes when a tag is pulled again as another build.
Fields that change with every start (`created`) or that are settings (`max_model_len`) are left out.
"""

from __future__ import annotations

import json
from typing import Any, Optional

#: Fields of a `/models` entry that identify the weights (in this order in the key).
MODEL_FIELDS = ("root", "parent", "revision", "digest")


def _json(body: Optional[bytes]) -> Any:
    if not body:
        return None
    try:
        return json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None


def _entries(data: Any, key: str) -> list[dict[str, Any]]:
    items = data.get(key) if isinstance(data, dict) else None
    return [e for e in items if isinstance(e, dict)] if isinstance(items, list) else []


def models_identity(body: Optional[bytes], model: str) -> str:
    """From a `GET /models` answer: `root=...;parent=...` of the entry named `model` ("" if none)."""
    for entry in _entries(_json(body), "data"):
        if str(entry.get("id", "")) == model:
            return ";".join(f"{k}={entry[k]}" for k in MODEL_FIELDS if isinstance(entry.get(k), str) and entry[k])
    return ""


def _ollama_names(model: str) -> set[str]:
    return {model, model + ":latest"} if ":" not in model else {model}


def ollama_identity(body: Optional[bytes], model: str) -> str:
    """From an Ollama `GET /api/tags` answer: `digest=<first 16 hex>` of `model` ("" if not there)."""
    names = _ollama_names(model)
    for entry in _entries(_json(body), "models"):
        if {str(entry.get("name", "")), str(entry.get("model", ""))} & names:
            digest = str(entry.get("digest") or "").split(":")[-1]
            if digest:
                return f"digest={digest[:16]}"
    return ""


def native_root(base_url: str) -> Optional[str]:
    """`http://host:11434/v1` -> `http://host:11434`: where Ollama's native API lives (None if the
    base URL does not end with /v1, so no native API is guessed)."""
    base = base_url.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else None
