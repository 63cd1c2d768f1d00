"""Making the ONNX export of a sentence-transformers embedder (needs torch): export from the eager
attention, onnxruntime's BERT fusion, the check against torch on probe texts, the int8 document graph
(`ensure_int8`; which index uses it: document_graph.py), and attaching the export to a loaded torch embedder (`attach_onnx`, called by
`make_embedder`). The runtime side, torch-free, is `onnx_embedder.py`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional, Sequence

import numpy as np

from .onnx_embedder import EXPORT_FORMAT, MIN_COSINE, OnnxEmbedder, OnnxExportError, export_dir, read_meta

__all__ = ["INT8_FILE", "attach_onnx", "ensure_export", "ensure_int8", "export_onnx", "int8_options"]

log = logging.getLogger(__name__)

_MODULES = {"Transformer", "Pooling", "Normalize"}
_POOLING = ("cls", "max", "mean", "mean_sqrt_len_tokens", "lasttoken")
#: Probe texts of the export check: short, long (past the maximum length), odd characters.
_PROBES = (
    "sandy beach next to the open sea", "dense green forest", "a runway", "x",
    "海滩和大海 пляж", "Oil storage tanks near a harbour, with ships moored at the quay in the north.",
    "A tile with water and sand. water, sand, forest, fields. The north is covered by water while forest "
    "runs through the west; patches of fields and roofs appear in the east, with some roads near the edges.",
    " ".join(["rectangular crop fields separated by hedges and dirt roads"] * 60),
)


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
        if read_meta(folder) is not None:  # another process exported the same model meanwhile
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


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


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


#: The int8 document graph's file. The name carries the recipe: an index records "int8", and the
#: vectors of one recipe must never be mixed with another's (the first, opt-in recipe also quantised
#: the word embeddings and was model.int8.onnx).
INT8_FILE = "model.int8-v2.onnx"


def int8_options(graph: Any) -> dict[str, Any]:
    """quantize_dynamic's options for the int8 document graph (benchmarks/RESULTS.md, "document graph").

    Per-channel int8 weights for the fused Attention ops' QKV projections and the MatMuls; the
    word-embedding table stays fp32 (quantising it cost fidelity and bought no speed), and so do the
    FFN down-projections of the first three layers (`RECIPE_FP32`: measured one layer at a time,
    those three lose the most; keeping them lifts the worst cosine to torch from 0.987 to 0.990 on
    1,000 caption texts for ~15 % of the int8 speed-up)."""
    names = [n.name for n in graph.node if n.op_type == "MatMul"]
    return {"op_types_to_quantize": ["MatMul", "Attention"],
            "nodes_to_exclude": [n for n in names if any(k in n for k in RECIPE_FP32)]}


#: MatMuls kept fp32, by a part of their exported name (BERT-style encoders: layer.N/output/dense).
RECIPE_FP32 = ("layer.0/output/dense/", "layer.1/output/dense/", "layer.2/output/dense/")


class _NoPreprocessAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing" not in record.getMessage()


def ensure_int8(folder: str) -> str:
    """The int8 copy of the export's graph (`int8_options`), made once beside it; returns its file name.

    The document graph of new CPU indexes (document_graph.py): faster than the fp32 graph on a CPU, with
    vectors close to torch's (the bound is tests/core/test_document_graph.INT8_MIN_COSINE; figures in
    benchmarks/RESULTS.md). Queries always run the fp32 graph."""
    path = os.path.join(folder, INT8_FILE)
    if os.path.isfile(path):
        return INT8_FILE
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = os.path.join(folder, "model.onnx")
    opts = int8_options(onnx.load(src, load_external_data=False).graph)
    tmp = os.path.join(folder, f".int8-{os.getpid()}.onnx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quiet = _NoPreprocessAdvice()  # quantize_dynamic logs "consider pre-processing" on the root logger
            logging.getLogger().addFilter(quiet)
            try:
                quantize_dynamic(src, tmp, weight_type=QuantType.QInt8, per_channel=True,
                                 extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}, **opts)
            finally:
                logging.getLogger().removeFilter(quiet)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return INT8_FILE


def ensure_export(emb: Any) -> str:
    """The export folder of this torch embedder, made now if missing (needs torch)."""
    folder = export_dir(emb.fingerprint)
    meta = read_meta(folder)
    if meta is not None and meta.get("fingerprint") == emb.fingerprint:
        return folder
    return export_onnx(emb, folder)


def attach_onnx(emb: Any, document_graph: str = "fp32") -> None:
    """Make sure the ONNX export exists (for the search worker) and route documents through it:
    the int8 graph when `document_graph` is "int8" (on any device: onnxruntime on the CPU), else the
    fp32 export on a CPU (a GPU keeps torch). `emb.document_graph` says which graph it got.

    Any failure keeps the fp32 / torch path and logs why; indexing never fails because of the export
    (the job refuses an int8 index only if this run cannot give it int8 vectors).
    """
    try:
        folder = ensure_export(emb)
    except Exception as exc:  # noqa: BLE001
        log.warning("embedder %s: no ONNX export (%s); embedding stays on torch", emb.name, exc)
        return
    if document_graph == "int8":
        try:
            emb.onnx = _Documents(folder, emb.batch_size, ensure_int8(folder))
            emb.document_graph = "int8"
            return
        except Exception as exc:  # noqa: BLE001 -- the fp32 graph is always there
            log.warning("no int8 graph for documents (%s): documents use the fp32 graph", exc)
    if emb.device == "cpu":
        try:
            emb.onnx = _Documents(folder, emb.batch_size, "model.onnx")
        except Exception as exc:  # noqa: BLE001
            log.warning("embedder %s: the ONNX export does not load (%s); embedding stays on torch", emb.name, exc)


class _Documents(OnnxEmbedder):
    """The document embedder: all cores, the fp32 or the int8 graph; queries through it always run fp32.

    The int8 graph embeds one text per run: it quantises activations over the whole input tensor, so
    in a batch a text's vector would depend on its neighbours (cosine down to 0.985 between a text
    alone and the same text in a batch of 100); alone it depends on the text only, whatever the
    executor or the batch. One text is too small a matrix to split across cores, so the cores take
    texts in turn instead: one single-threaded run per text, one thread per core
    (benchmarks/RESULTS.md)."""

    def __init__(self, folder: str, batch_size: int, model_file: str) -> None:
        int8 = model_file != "model.onnx"
        super().__init__(folder, threads=1 if int8 else 0, batch_size=batch_size, model_file=model_file)
        self.model_file = model_file
        self.int8 = int8
        #: The fp32 session for queries on an int8 embedder, opened on the first query: an indexing
        #: run (CLI, Ray embed actor) embeds documents only and never pays for it.
        self._fp32: Optional[OnnxEmbedder] = None
        self._cores = _cores() if int8 else 1

    def encode_documents(self, texts: Sequence[str], batch_size: Optional[int] = None) -> np.ndarray:
        if not self.int8:
            return super().encode_documents(texts, batch_size)
        items = list(texts)
        n = min(self._cores, len(items))
        if n <= 1:
            return super().encode_documents(items, 1)
        out = np.zeros((len(items), self.dim), np.float32)
        one = super().encode_documents
        with ThreadPoolExecutor(n, thread_name_prefix="int8-documents") as pool:  # onnxruntime runs without the GIL
            for i, vecs in enumerate(pool.map(lambda part: one(part, 1), [items[k::n] for k in range(n)])):
                out[i::n] = vecs
        return out

    def encode_queries(self, texts: Sequence[str], batch_size: Optional[int] = None) -> np.ndarray:
        if not self.int8:
            return super().encode_queries(texts, batch_size)
        if self._fp32 is None:
            self._fp32 = OnnxEmbedder(self.folder, threads=0, batch_size=self.batch_size)
        return self._fp32.encode_queries(texts, batch_size)
