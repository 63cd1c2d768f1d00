"""The embedder: packaged MiniLM, prompts, fingerprints, errors; and a real-text search end to end."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plugin.core.embedding.embedder import _folder_digest, default_embedder_path, make_embedder, resolve_device
from plugin.core.errors import ModelUnavailableError
from plugin.core.store.store import SearchIndex
from plugin.core.types import CaptionVariant
from tests.core.index_helpers import FakeInfo, tile

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def minilm():
    return make_embedder(None, device="cpu")


def _tiny_st(folder: Path, prompts: dict[str, str], seed: int = 0) -> str:
    """A random-weight 1-layer BERT saved as a sentence-transformers model with these prompts."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(default_embedder_path(), local_files_only=True)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(folder / "hf")
    tok.save_pretrained(folder / "hf")
    t = Transformer(str(folder / "hf"), max_seq_length=64)
    m = SentenceTransformer(modules=[t, Pooling(32, "mean")], prompts=prompts, device="cpu")
    m.save(str(folder / "st"))
    return str(folder / "st")


def test_default_model_encodes_normalised_and_matches_raw_encode(minilm) -> None:
    from sentence_transformers import SentenceTransformer

    assert os.path.isdir(default_embedder_path()) and minilm.dim == 384
    texts = ["a sandy beach next to the sea", "dense green forest", "海滩和大海 пляж", "x " * 2000]
    docs = minilm.encode_documents(texts)
    assert docs.dtype == np.float32 and docs.shape == (4, 384) and docs.flags["C_CONTIGUOUS"]
    assert np.allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-5)
    raw = SentenceTransformer(default_embedder_path(), device="cpu", local_files_only=True).encode(texts)
    raw = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    assert np.allclose(docs, raw, atol=1e-5)
    assert np.allclose(minilm.encode_queries(texts[:1]), docs[:1], atol=1e-6), "MiniLM defines no prompts"
    assert minilm.encode_documents([]).shape == (0, 384)
    assert resolve_device("auto") in ("cuda", "mps", "cpu") and resolve_device("cpu") == "cpu"


def test_fingerprint_is_stable_relocatable_and_specific(minilm, tmp_path: Path) -> None:
    fp = minilm.fingerprint
    assert "/" + "work" not in fp and default_embedder_path() not in fp and "all-MiniLM-L6-v2" in fp and "dim=384" in fp
    code = "from plugin.core.embedding.embedder import make_embedder; print(make_embedder(device='cpu').fingerprint)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.stdout.strip().splitlines()[-1] == fp, out.stderr
    # The same model copied elsewhere (a moved venv) hashes the same: only contents count.
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(default_embedder_path(), moved)
    assert _folder_digest(str(moved)) == _folder_digest(default_embedder_path()) == fp.split("@")[1].split(":")[0]


def test_prompts_are_used_and_change_the_fingerprint(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    with_p = _tiny_st(tmp_path / "p", {"query": "query: ", "document": "passage: "})
    without = _tiny_st(tmp_path / "n", {"query": "", "document": ""})
    e = make_embedder(with_p, device="cpu")
    raw = SentenceTransformer(with_p, device="cpu", local_files_only=True)
    t = ["salt marsh with tidal channels"]
    q, d = e.encode_queries(t), e.encode_documents(t)
    assert e.dim == 32 and e.query_prompt == "query: " and e.document_prompt == "passage: "
    assert np.allclose(q, raw.encode(t, prompt="query: ", normalize_embeddings=True), atol=1e-5)
    assert np.allclose(d, raw.encode(t, prompt="passage: ", normalize_embeddings=True), atol=1e-5)
    assert not np.allclose(q, d, atol=1e-3)
    n = make_embedder(without, device="cpu")
    assert n.query_prompt is None and np.allclose(n.encode_queries(t), n.encode_documents(t))
    assert e.fingerprint != n.fingerprint
    other = make_embedder(_tiny_st(tmp_path / "o", {"query": "query: ", "document": "passage: "}, seed=1), device="cpu")
    assert other.fingerprint != e.fingerprint, "same folder name and config, different weights"
    assert make_embedder(f"sentence-transformers:{with_p}", device="cpu").fingerprint == e.fingerprint


def test_unavailable_models_name_the_model(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    (empty / "config.json").write_text("{broken")
    with pytest.raises(ModelUnavailableError, match="not-a-model"):
        make_embedder(str(empty), device="cpu")
    with pytest.raises(ModelUnavailableError, match="nobody/no-such-embedder-xyz"):
        make_embedder("nobody/no-such-embedder-xyz", device="cpu")


def test_real_captions_rank_the_right_tile(minilm, tmp_path: Path) -> None:
    info = FakeInfo("/data/scene.tif", "rs", "scene")
    texts = {
        0: ["Open sea.", "deep blue water everywhere", "The tile shows open ocean water with small waves."],
        1: ["A sandy beach along the coast.", "bright sand, shoreline", "A wide sandy beach meets the sea in the west."],
        2: ["Farmland.", "rectangular crop fields", "Agricultural fields in a regular grid with a dirt road."],
        3: ["A small town.", "buildings, streets", "Dense houses and streets of a town with a church."],
    }
    items = []
    for i, vs in texts.items():
        variants = [CaptionVariant(s, "", "") for s in vs]
        items.append((tile(info, i * 64, 0), variants, minilm.encode_documents([v.text() for v in variants])))
    with SearchIndex.open(str(tmp_path / "idx"), create=True, embedder_fingerprint=minilm.fingerprint,
                          dim=minilm.dim) as idx:
        idx.upsert_raster(info, "cap", {})
        idx.add_tiles("rs", "cap", items)
        for query, want in (("sandy beach", 64), ("crop fields", 128), ("houses in a village", 192), ("ocean", 0)):
            hit = idx.search(minilm.encode_queries([query])[0], top=1)[0]
            assert hit.window.col_off == want, (query, hit.caption)
