"""Torch-free embedding: an ONNX export of a sentence-transformers model, run by onnxruntime + tokenizers.

Why: importing torch and sentence-transformers costs 5-10 s on a small CPU, for a search worker that
embeds one sentence per query. The model is exported once -- when an indexing job loads it, or at
the first search of an index built before this existed -- into the engine's cache, in a folder
keyed by the embedder fingerprint, together with its tokenizer and the pooling, normalisation,
prompts and maximum length of its sentence-transformers config. An export is kept only after it
reproduced the torch vectors on probe texts (cosine >= `MIN_COSINE`); a model whose modules are not
reproduced here (Dense layers, prompt-excluding pooling, ...) stays on torch with a logged reason.

This module (the runtime side: the search worker's) imports neither torch nor sentence-transformers;
making and checking exports is `onnx_export.py`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import EngineError

__all__ = ["EXPORT_FORMAT", "MIN_COSINE", "OnnxEmbedder", "OnnxExportError", "backend_choice", "cache_root", "export_dir",
           "query_embedder", "read_meta"]

log = logging.getLogger(__name__)

#: Bump when the export's files or their meaning change: old exports are then made anew.
EXPORT_FORMAT = 2
#: The export must agree with the torch path at least this well on every probe text.
MIN_COSINE = 0.9999
_BACKENDS = ("auto", "torch", "onnx")


class OnnxExportError(EngineError):
    """This model cannot be embedded through the ONNX path (the reason is in the message)."""


def backend_choice(backend: Optional[str] = None) -> str:
    """'auto' (ONNX where it works), 'torch' (never ONNX) or 'onnx'; default from $SIS_EMBEDDER_BACKEND."""
    value = (backend or os.environ.get("SIS_EMBEDDER_BACKEND") or "auto").strip().lower()
    if value not in _BACKENDS:
        raise EngineError(f"embedder backend {value!r}: use one of {', '.join(_BACKENDS)}")
    return value


def cache_root() -> str:
    """$SIS_ONNX_CACHE, else <XDG cache>/semantic_imagery_search/onnx (the set-up dialog names it too)."""
    from ..env.engine_commands import onnx_cache_root

    return onnx_cache_root()


def export_dir(fingerprint: str) -> str:
    """Where the export of the model with this embedder fingerprint lives (one folder per fingerprint)."""
    key = hashlib.sha256(f"{fingerprint}|format={EXPORT_FORMAT}".encode()).hexdigest()[:20]
    return os.path.join(cache_root(), key)


def read_meta(folder: str) -> Optional[dict[str, Any]]:
    try:
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        return None
    if not all(os.path.isfile(os.path.join(folder, n)) for n in ("model.onnx", "tokenizer.json")):
        return None
    return meta


class OnnxEmbedder:
    """The `Embedder` protocol over an export folder: same vectors and fingerprint as the torch path.

    `threads` = onnxruntime intra-op threads (0 = one per core, for document batches; 1 for queries,
    which are a handful of tokens and only lose to thread wake-ups on a busy machine). `spin`:
    whether idle intra-op threads busy-wait for work (onnxruntime's own default); off here: on a
    shared CPU a spinning thread waits at every operator for a sibling that was descheduled, and
    burns the CPU that the captioner and reader threads beside it need (benchmarks/RESULTS.md:
    1.80x torch's throughput without spinning, 0.96x with it, same run, load 7 on 2 cores).
    """

    device = "cpu"

    def __init__(self, folder: str, threads: int = 1, batch_size: int = 64, spin: bool = False,
                 model_file: str = "model.onnx") -> None:
        meta = read_meta(folder)
        if meta is None:
            raise OnnxExportError(f"no usable ONNX export in {folder}")
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise OnnxExportError(f"onnxruntime / tokenizers not importable ({exc})") from None
        self.folder = folder
        self.fingerprint: str = meta["fingerprint"]
        self.name: str = meta["name"]
        self.dim = int(meta["dim"])
        self.query_prompt: Optional[str] = meta.get("query_prompt") or None
        self.document_prompt: Optional[str] = meta.get("document_prompt") or None
        self.batch_size = int(batch_size)
        self._pooling: list[str] = list(meta["pooling"])
        self._normalize, self._lower = bool(meta["normalize"]), bool(meta.get("do_lower_case"))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        self._spin = bool(spin)
        if not self._spin:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(os.path.join(folder, model_file), opts, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        self._tok.enable_truncation(int(meta["max_length"]))
        self._tok.enable_padding(pad_id=int(meta["pad_id"]), pad_token=str(meta["pad_token"]))

    def _encode(self, texts: Sequence[str], prompt: Optional[str], batch_size: Optional[int]) -> np.ndarray:
        items = [(prompt or "") + str(t) for t in texts]
        if self._lower:
            items = [t.lower() for t in items]
        out = np.zeros((len(items), self.dim), np.float32)
        if not items:
            return out
        order = np.argsort([-len(t) for t in items], kind="stable")  # similar lengths share a batch: less padding
        step = max(1, int(batch_size or self.batch_size))
        for start in range(0, len(items), step):
            idx = order[start:start + step]
            enc = self._tok.encode_batch([items[i] for i in idx])
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feed["token_type_ids"] = np.array([e.type_ids for e in enc], dtype=np.int64)
            hidden = self._session.run(None, {k: v for k, v in feed.items() if k in self._inputs})[0]
            out[idx] = _pool(np.asarray(hidden, np.float32), mask, self._pooling)
        if self._normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def encode_documents(self, texts: Sequence[str], batch_size: Optional[int] = None) -> np.ndarray:
        """Caption texts -> (N, dim) unit vectors, with the model's document prompt if it has one."""
        return self._encode(texts, self.document_prompt, batch_size)

    def encode_queries(self, texts: Sequence[str], batch_size: Optional[int] = None) -> np.ndarray:
        """Query texts -> (N, dim) unit vectors, with the model's query prompt if it has one."""
        return self._encode(texts, self.query_prompt, batch_size)

    def __repr__(self) -> str:
        return f"OnnxEmbedder({self.fingerprint!r})"


def _pool(hidden: np.ndarray, mask: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """sentence-transformers' Pooling on right-padded batches, in numpy (modes concatenated in order)."""
    m = mask[..., None].astype(np.float32)
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(hidden[:, 0])
        elif mode == "max":
            parts.append(np.where(m > 0, hidden, -np.inf).max(axis=1))
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            total = (hidden * m).sum(axis=1)
            count = np.maximum(m.sum(axis=1), 1e-9)
            parts.append(total / (count if mode == "mean" else np.sqrt(count)))
        elif mode == "lasttoken":
            last = np.maximum(mask.sum(axis=1) - 1, 0)
            parts.append(hidden[np.arange(hidden.shape[0]), last])
        else:  # pragma: no cover -- refused at export time
            raise OnnxExportError(f"pooling mode {mode!r} is not supported")
    return np.concatenate(parts, axis=-1).astype(np.float32)

def query_embedder(identity: str, index_fingerprint: Optional[str]) -> Optional[OnnxEmbedder]:
    """The torch-free query embedder for an index, or None with the reason logged.

    `identity` is `embedder.model_identity(spec)` of the model the caller asks for (files only, no
    torch); the index's fingerprint must start with it and picks the export. None means the caller
    loads the torch embedder, which also makes the export for next time.
    """
    if backend_choice() == "torch":
        return None
    if not index_fingerprint:
        log.info("no index fingerprint to pick an ONNX export by: queries go through torch")
        return None
    if not index_fingerprint.startswith(identity):
        log.info("the index was built with %s, not %s: queries go through torch", index_fingerprint, identity)
        return None
    folder = export_dir(index_fingerprint)
    meta = read_meta(folder)
    if meta is None or meta.get("fingerprint") != index_fingerprint:
        log.warning("no ONNX export of %s yet: this search loads torch once and makes it", index_fingerprint)
        return None
    try:
        return OnnxEmbedder(folder, threads=1)
    except Exception as exc:  # noqa: BLE001
        log.warning("the ONNX export in %s does not load (%s): queries go through torch", folder, exc)
        return None
