"""Torch-free embedding: an ONNX export of a sentence-transformers model, run by onnxruntime + tokenizers.

Why: importing torch and sentence-transformers costs 5-10 s on a small CPU, for a search worker that
embeds one sentence per query. The model is exported once -- when an indexing job loads it, or at
the first search of an index built before this existed -- into the engine's cache, in a folder
keyed by the embedder fingerprint, together with its tokenizer and the pooling, normalisation,
prompts and maximum length of its sentence-transformers config. An export is kept only after it
reproduced the torch vectors on probe texts (cosine >= `MIN_COSINE`); a model whose modules are not
reproduced here (Dense layers, prompt-excluding pooling, ...) stays on torch with a logged reason.

This module imports neither torch nor sentence-transformers except inside `export_onnx`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from typing import Any, Optional, Sequence

import numpy as np

from .errors import EngineError

__all__ = ["MIN_COSINE", "OnnxEmbedder", "OnnxExportError", "attach_onnx", "backend_choice", "cache_root",
           "ensure_export", "export_dir", "export_onnx", "query_embedder"]

log = logging.getLogger(__name__)

#: Bump when the export's files or their meaning change: old exports are then made anew.
EXPORT_FORMAT = 2
#: The export must agree with the torch path at least this well on every probe text.
MIN_COSINE = 0.9999
_MODULES = {"Transformer", "Pooling", "Normalize"}
_POOLING = ("cls", "max", "mean", "mean_sqrt_len_tokens", "lasttoken")
_BACKENDS = ("auto", "torch", "onnx")
#: Probe texts of the export check: short, long (past the maximum length), odd characters.
_PROBES = (
    "sandy beach next to the open sea", "dense green forest", "a runway", "x",
    "海滩和大海 пляж", "Oil storage tanks near a harbour, with ships moored at the quay in the north.",
    "A tile with water and sand. water, sand, forest, fields. The north is covered by water while forest "
    "runs through the west; patches of fields and roofs appear in the east, with some roads near the edges.",
    " ".join(["rectangular crop fields separated by hedges and dirt roads"] * 60),
)


class OnnxExportError(EngineError):
    """This model cannot be embedded through the ONNX path (the reason is in the message)."""


def backend_choice(backend: Optional[str] = None) -> str:
    """'auto' (ONNX where it works), 'torch' (never ONNX) or 'onnx'; default from $SIS_EMBEDDER_BACKEND."""
    value = (backend or os.environ.get("SIS_EMBEDDER_BACKEND") or "auto").strip().lower()
    if value not in _BACKENDS:
        raise EngineError(f"embedder backend {value!r}: use one of {', '.join(_BACKENDS)}")
    return value


def cache_root() -> str:
    """$SIS_ONNX_CACHE, else <XDG cache>/semantic_imagery_search/onnx."""
    explicit = os.environ.get("SIS_ONNX_CACHE")
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "semantic_imagery_search", "onnx")


def export_dir(fingerprint: str) -> str:
    """Where the export of the model with this embedder fingerprint lives (one folder per fingerprint)."""
    key = hashlib.sha256(f"{fingerprint}|format={EXPORT_FORMAT}".encode()).hexdigest()[:20]
    return os.path.join(cache_root(), key)


def _read_meta(folder: str) -> Optional[dict[str, Any]]:
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

    def __init__(self, folder: str, threads: int = 1, batch_size: int = 64, spin: bool = False) -> None:
        meta = _read_meta(folder)
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
        self._session = ort.InferenceSession(os.path.join(folder, "model.onnx"), opts, providers=["CPUExecutionProvider"])
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


def _describe(st_model: Any) -> dict[str, Any]:
    """The export's meta from a loaded SentenceTransformer, or OnnxExportError naming what is missing."""
    mods = list(st_model.children())
    kinds = [type(m).__name__ for m in mods]
    unknown = [k for k in kinds if k not in _MODULES]
    if unknown or not kinds or kinds[0] != "Transformer" or "Pooling" not in kinds:
        raise OnnxExportError(f"modules {kinds} (only Transformer + Pooling [+ Normalize] are reproduced)")
    trans, pooling = mods[0], mods[kinds.index("Pooling")]
    if not getattr(pooling, "include_prompt", True):
        raise OnnxExportError("pooling excludes the prompt tokens (include_prompt=False)")
    modes = pooling.pooling_mode
    modes = [modes] if isinstance(modes, str) else list(modes)
    if any(m not in _POOLING for m in modes):
        raise OnnxExportError(f"pooling mode {modes} (supported: {', '.join(_POOLING)})")
    tok = trans.tokenizer
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise OnnxExportError("the model has no fast (tokenizers) tokenizer")
    if getattr(tok, "padding_side", "right") != "right":
        raise OnnxExportError("the tokenizer pads on the left")
    max_length = st_model.max_seq_length or getattr(tok, "model_max_length", 512)
    return {
        "modes": modes, "backend": backend, "tokenizer": tok,
        "max_length": int(min(int(max_length), 1 << 16)), "do_lower_case": bool(getattr(trans, "do_lower_case", False)),
        "auto_model": trans.auto_model, "input_names": [n for n in tok.model_input_names
                                                         if n in ("input_ids", "attention_mask", "token_type_ids")],
    }


def export_onnx(emb: Any, folder: str) -> str:
    """Export the torch embedder `emb` (a loaded `SentenceTransformerEmbedder`) into `folder` and check it.

    Written into a temporary sibling and renamed, so a crash never leaves a half export behind.
    Raises OnnxExportError with the reason when this model cannot be reproduced.
    """
    import torch

    st_model = emb.model
    if getattr(emb, "device", "cpu") != "cpu":  # export from a CPU copy: the file is device-free anyway
        from sentence_transformers import SentenceTransformer

        st_model = SentenceTransformer(emb.spec, device="cpu", local_files_only=True)
    d = _describe(st_model)
    names = d["input_names"]
    model = d["auto_model"].eval()

    class _Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: Any) -> Any:
            out = self.model(**dict(zip(names, args)))
            return out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state

    sample = d["tokenizer"](list(_PROBES[:2]), padding=True, return_tensors="pt")
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    prev_attn = getattr(model.config, "_attn_implementation", None)
    try:
        # Exported from the eager attention: onnxruntime's transformer optimizer fuses that pattern
        # (one Attention op per layer), not SDPA's. The torch model gets its own attention back.
        _set_attn(model, "eager")
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    _Hidden(), tuple(sample[n] for n in names), os.path.join(tmp, "model.onnx"),
                    input_names=names, output_names=["last_hidden_state"],
                    dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]},
                    opset_version=17, dynamo=False,
                )
        finally:
            _set_attn(model, prev_attn)
        d["backend"].save(os.path.join(tmp, "tokenizer.json"))
        tok = d["tokenizer"]
        meta = {
            "format": EXPORT_FORMAT, "fingerprint": emb.fingerprint, "name": emb.name, "dim": int(emb.dim),
            "query_prompt": emb.query_prompt, "document_prompt": emb.document_prompt, "pooling": d["modes"],
            "normalize": True, "max_length": d["max_length"], "do_lower_case": d["do_lower_case"],
            "pad_id": int(tok.pad_token_id or 0), "pad_token": str(tok.pad_token or "[PAD]"),
        }
        # The index stores unit vectors whatever the model's own Normalize says (the torch path asks
        # sentence-transformers for normalize_embeddings=True), so the export always normalises too.
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1)
        plain = os.path.join(tmp, "model.plain.onnx")
        fused = _fuse(tmp, plain, model.config)
        try:
            _check_against_torch(emb, tmp)
        except OnnxExportError as exc:
            if not fused:
                raise
            log.info("the fused graph disagrees with torch (%s): keeping the plain export", exc)
            os.replace(plain, os.path.join(tmp, "model.onnx"))
            _check_against_torch(emb, tmp)
        if os.path.exists(plain):
            os.remove(plain)
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        if _read_meta(folder) is not None:  # another process exported the same model meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
            return folder
        shutil.rmtree(folder, ignore_errors=True)  # a broken or older-format export
        os.replace(tmp, folder)
    except OnnxExportError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:  # noqa: BLE001 -- any exporter failure means "stay on torch", with the reason
        shutil.rmtree(tmp, ignore_errors=True)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise OnnxExportError(f"torch.onnx.export failed: {first}") from None
    return folder


#: transformers model types whose exported graph onnxruntime's BERT optimizer fuses.
_FUSABLE = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert", "electra": "bert"}


def _set_attn(model: Any, impl: Optional[str]) -> None:
    if not impl:
        return
    try:
        setter = getattr(model, "set_attn_implementation", None)
        if setter is not None:
            setter(impl)
        else:
            model.config._attn_implementation = impl
    except Exception as exc:  # noqa: BLE001 -- an unfused export is still a correct export
        log.info("attention implementation %r not settable: %s", impl, exc)


def _fuse(folder: str, plain: str, config: Any) -> bool:
    """Replace folder/model.onnx by onnxruntime's fused graph (Attention, SkipLayerNorm, BiasGelu:
    ~1.1-1.2x on CPU), keeping the plain graph at `plain`; False when the model type is not fused."""
    kind = _FUSABLE.get(str(getattr(config, "model_type", "")))
    if kind is None:
        return False
    path = os.path.join(folder, "model.onnx")
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt = optimize_model(path, model_type=kind, num_heads=int(getattr(config, "num_attention_heads", 0) or 0),
                                 hidden_size=int(getattr(config, "hidden_size", 0) or 0))
            os.replace(path, plain)
            opt.save_model_to_file(path)
    except Exception as exc:  # noqa: BLE001
        log.info("graph fusion skipped (%s): the plain export is used", exc)
        if os.path.exists(plain) and not os.path.exists(path):
            os.replace(plain, path)
        return False
    return True


def _check_against_torch(emb: Any, folder: str) -> None:
    """Both prompt kinds of the probe texts through torch and through the export: every cosine >= MIN_COSINE."""
    onnx = OnnxEmbedder(folder, threads=1)
    probes = list(_PROBES)
    for kind, prompt in (("queries", emb.query_prompt), ("documents", emb.document_prompt)):
        want = emb._encode(probes, prompt, 16)  # the torch path, whatever encode_documents is routed to
        got = onnx._encode(probes, prompt, 16)
        worst = float(np.min(np.sum(want * got, axis=1)))
        if not worst >= MIN_COSINE:
            raise OnnxExportError(f"the export disagrees with torch on {kind} (cosine {worst:.6f} < {MIN_COSINE})")


def ensure_export(emb: Any) -> str:
    """The export folder of this torch embedder, made now if missing (needs torch)."""
    folder = export_dir(emb.fingerprint)
    meta = _read_meta(folder)
    if meta is not None and meta.get("fingerprint") == emb.fingerprint:
        return folder
    return export_onnx(emb, folder)


def attach_onnx(emb: Any) -> None:
    """Make sure the ONNX export exists (for the search worker) and, on CPU, embed documents through it.

    Any failure keeps the torch path and logs why; indexing never fails because of the export.
    """
    try:
        folder = ensure_export(emb)
        if emb.device == "cpu":
            emb.onnx = OnnxEmbedder(folder, threads=0, batch_size=emb.batch_size)
    except Exception as exc:  # noqa: BLE001
        log.warning("embedder %s: no ONNX export (%s); embedding stays on torch", emb.name, exc)


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
    meta = _read_meta(folder)
    if meta is None or meta.get("fingerprint") != index_fingerprint:
        log.warning("no ONNX export of %s yet: this search loads torch once and makes it", index_fingerprint)
        return None
    try:
        return OnnxEmbedder(folder, threads=1)
    except Exception as exc:  # noqa: BLE001
        log.warning("the ONNX export in %s does not load (%s): queries go through torch", folder, exc)
        return None
