"""The torch-free query path: ONNX export of the embedder, same vectors and fingerprint, fallback to torch.

Real models only: the packaged MiniLM (exported once per test session into $SIS_ONNX_CACHE, set by
tests/conftest.py) and tiny random-weight sentence-transformers models built in temp folders.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plugin.core.embedding.embedder import default_embedder_path, make_embedder, model_identity
from plugin.core.embedding.onnx_embedder import MIN_COSINE, OnnxEmbedder, backend_choice, export_dir, query_embedder
from plugin.core.embedding.onnx_export import ensure_export
from plugin.core.store.store import SearchIndex
from plugin.core.types import CaptionVariant
from tests.core.index_helpers import FakeInfo, tile

ROOT = Path(__file__).resolve().parents[2]
#: Human-written remote-sensing captions used as queries (RSITMD test split), shared beside the repository.
CAPTION_FILES = [p / "shared" / "data" / "captions" / "rsitmd_test_caps.txt" for p in (ROOT.parent, ROOT.parent.parent)]
FALLBACK_QUERIES = [
    "sandy beach next to the open sea", "oil storage tanks near a harbour", "dense green forest",
    "a river crossing farmland", "an airport runway with planes", "residential houses with gardens",
    "a stadium surrounded by parking lots", "snow covered mountains", "bare soil and dry fields",
    "a bridge over a wide river", "ships moored in a port", "a lake surrounded by trees",
]


def real_queries(n: int = 300) -> list[str]:
    for path in CAPTION_FILES:
        if path.is_file():
            lines = [t.strip() for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
            return lines[:: max(1, len(lines) // n)][:n]
    return FALLBACK_QUERIES * 2


@pytest.fixture(scope="module")
def minilm_torch():
    """The packaged MiniLM on the torch path only (documents and queries through sentence-transformers)."""
    return make_embedder(None, device="cpu", backend="torch")


def _tiny_st(folder: Path, prompts: dict[str, str], dense: bool = False, pooling: str = "mean") -> str:
    """A random-weight 1-layer BERT saved as a sentence-transformers model (optionally with a Dense layer)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(default_embedder_path(), local_files_only=True)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(folder / "hf")
    tok.save_pretrained(folder / "hf")
    mods = [Transformer(str(folder / "hf"), max_seq_length=48), Pooling(32, pooling)]
    if dense:
        mods.append(Dense(32, 16))
    SentenceTransformer(modules=mods, prompts=prompts, device="cpu").save(str(folder / "st"))
    return str(folder / "st")


def test_onnx_matches_torch_on_real_queries_with_the_same_fingerprint(minilm_torch) -> None:
    folder = ensure_export(minilm_torch)
    onnx = OnnxEmbedder(folder, threads=1)
    assert onnx.fingerprint == minilm_torch.fingerprint and onnx.dim == 384
    assert minilm_torch.fingerprint.startswith(model_identity(default_embedder_path()))
    queries = real_queries(300)
    assert len(queries) >= 24
    want = minilm_torch.encode_queries(queries)
    got = onnx.encode_queries(queries)
    cos = np.sum(want * got, axis=1)
    assert got.dtype == np.float32 and got.shape == want.shape and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert cos.min() >= MIN_COSINE, (cos.min(), queries[int(cos.argmin())])
    # Documents (longer, batched, padded) agree too, and truncation at 256 tokens matches.
    docs = [" ".join(queries[i:i + 6]) for i in range(0, 60, 6)] + ["harbour " * 400]
    assert np.sum(minilm_torch.encode_documents(docs) * onnx.encode_documents(docs, batch_size=4), axis=1).min() >= MIN_COSINE
    assert onnx.encode_queries([]).shape == (0, 384)


def test_default_embedder_embeds_documents_through_onnx(minilm_torch) -> None:
    emb = make_embedder(None, device="cpu")
    assert emb.onnx is not None and emb.fingerprint == minilm_torch.fingerprint
    texts = ["A tile with water and sand. The north is covered by water.", "dense forest", "x"]
    assert np.sum(emb.encode_documents(texts) * minilm_torch.encode_documents(texts), axis=1).min() >= MIN_COSINE
    # Document batches use every core without busy-waiting threads (they starved on a shared CPU).
    opts = emb.onnx._session.get_session_options()
    assert opts.intra_op_num_threads == 0 and opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_prompts_and_pooling_are_reproduced(tmp_path: Path) -> None:
    spec = _tiny_st(tmp_path / "p", {"query": "query: ", "document": "passage: "})
    torch_emb = make_embedder(spec, device="cpu", backend="torch")
    onnx = OnnxEmbedder(ensure_export(torch_emb))
    assert (onnx.query_prompt, onnx.document_prompt) == ("query: ", "passage: ")
    t = ["salt marsh with tidal channels", "a quarry"]
    q, d = onnx.encode_queries(t), onnx.encode_documents(t)
    assert np.sum(q * torch_emb.encode_queries(t), axis=1).min() >= MIN_COSINE
    assert np.sum(d * torch_emb.encode_documents(t), axis=1).min() >= MIN_COSINE
    assert not np.allclose(q, d, atol=1e-3), "the two prompts give different vectors"


@pytest.mark.parametrize("modes", [("cls",), ("max",), ("mean_sqrt_len_tokens",), ("lasttoken",), ("mean", "max")])
def test_numpy_pooling_equals_sentence_transformers_pooling(modes) -> None:
    import torch
    from sentence_transformers.sentence_transformer.modules import Pooling

    from plugin.core.embedding.onnx_embedder import _pool

    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 7, 8)).astype(np.float32)
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3, [1] + [0] * 6], dtype=np.int64)  # right padding
    pooling = Pooling(8, list(modes) if len(modes) > 1 else modes[0])
    want = pooling({"token_embeddings": torch.from_numpy(hidden), "attention_mask": torch.from_numpy(mask)})
    assert np.allclose(_pool(hidden, mask, modes), want["sentence_embedding"].numpy(), atol=1e-5)


def test_unsupported_model_falls_back_to_torch_with_a_logged_reason(tmp_path: Path, caplog) -> None:
    spec = _tiny_st(tmp_path / "d", {}, dense=True)
    with caplog.at_level(logging.WARNING, logger="plugin.core.embedding.onnx_export"):
        emb = make_embedder(spec, device="cpu")
    assert emb.onnx is None and emb.dim == 16
    assert any("no ONNX export" in r.getMessage() and "Dense" in r.getMessage() for r in caplog.records)
    assert not os.path.exists(export_dir(emb.fingerprint))
    # The search side: no export -> None (the Searcher then uses torch), reason logged.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="plugin.core.embedding.onnx_embedder"):
        assert query_embedder(model_identity(spec), emb.fingerprint) is None
    assert any("no ONNX export" in r.getMessage() for r in caplog.records)
    assert emb.encode_queries(["a beach"]).shape == (1, 16)


def test_broken_or_foreign_exports_are_not_used(tmp_path: Path, caplog, monkeypatch) -> None:
    spec = _tiny_st(tmp_path / "b", {})
    emb = make_embedder(spec, device="cpu")
    assert emb.onnx is not None
    assert isinstance(query_embedder(model_identity(spec), emb.fingerprint), OnnxEmbedder)
    assert query_embedder(model_identity(spec), emb.fingerprint.replace("dim=32", "dim=33")) is None, "unknown fingerprint"
    assert query_embedder(model_identity(default_embedder_path()), emb.fingerprint) is None, "index built with another model"
    monkeypatch.setenv("SIS_EMBEDDER_BACKEND", "torch")
    assert backend_choice() == "torch" and query_embedder(model_identity(spec), emb.fingerprint) is None
    monkeypatch.delenv("SIS_EMBEDDER_BACKEND")
    onnx_file = Path(export_dir(emb.fingerprint)) / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING, logger="plugin.core.embedding.onnx_embedder"):
        assert query_embedder(model_identity(spec), emb.fingerprint) is None
    assert any("does not load" in r.getMessage() for r in caplog.records)
    with pytest.raises(Exception, match="backend"):
        backend_choice("tensorflow")


SEARCH_IN_FRESH_PROCESS = r"""
import io, json, sys
from plugin.core.worker.worker import Worker
out = io.StringIO()
req = {"id": "1", "cmd": "search", "args": {"index_dir": sys.argv[1], "query": "sandy beach by the sea", "top": 2}}
Worker(out).serve(io.StringIO(json.dumps(req) + "\n"))
replies = [json.loads(line) for line in out.getvalue().splitlines()]
heavy = sorted(m for m in ("torch", "sentence_transformers", "transformers") if m in sys.modules)
print(json.dumps({"replies": replies, "heavy": heavy}))
"""


def test_search_worker_imports_neither_torch_nor_sentence_transformers(tmp_path: Path) -> None:
    emb = make_embedder(None, device="cpu")
    info = FakeInfo("/data/scene.tif", "rs", "scene")
    texts = {0: "Open sea with small waves.", 1: "A wide sandy beach along the coast.", 2: "Crop fields in a grid."}
    items = [(tile(info, i * 64, 0), [CaptionVariant(t, "", "")], emb.encode_documents([t])) for i, t in texts.items()]
    idx_dir = str(tmp_path / "idx")
    with SearchIndex.open(idx_dir, create=True, embedder_fingerprint=emb.fingerprint, dim=emb.dim) as idx:
        idx.upsert_raster(info, "cap", {})
        idx.add_tiles("rs", "cap", items)
    out = subprocess.run([sys.executable, "-c", SEARCH_IN_FRESH_PROCESS, idx_dir], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["heavy"] == [], f"the search path imported {res['heavy']}"
    (reply,) = [r for r in res["replies"] if r.get("id") == "1" and r["event"] != "progress"]
    assert reply["event"] == "result", reply
    assert [h["window"]["col_off"] for h in reply["result"]][0] == 64, "the beach tile ranks first"
