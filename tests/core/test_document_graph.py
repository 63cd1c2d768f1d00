"""The document graph (fp32 / int8) an index records and every later run follows (document_graph.py).

Real models only: the packaged MiniLM through torch, its fp32 ONNX export and the int8 copy
(onnxruntime's dynamic quantisation, made once per test session in $SIS_ONNX_CACHE); real rasters,
the spectral captioner and the real store.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from plugin.core.cli import main as cli_main
from plugin.core.embedding.embedder import make_embedder
from plugin.core.embedding.onnx_embedder import MIN_COSINE
from plugin.core.embedding.onnx_export import INT8_FILE, attach_onnx
from plugin.core.errors import EngineError
from plugin.core.indexing import index_info, index_rasters
from plugin.core.indexing.cluster.ray_stages import EmbedStage
from plugin.core.indexing.document_graph import check_graph, choose_graph, recorded_graph
from plugin.core.search.searcher import cached_embedder
from plugin.core.types import RasterSource
from tests.core.test_onnx_embedder import real_queries
from tests.core.test_pipeline import FAST, SMALL, write_scene

#: The int8 document graph's worst cosine to the torch vectors, the bound the README states (measured:
#: 0.9914 on 1,000 caption texts one text per run, benchmarks/int8_fidelity.py and RESULTS.md).
INT8_MIN_COSINE = 0.99


def _stored(index_dir: str, raster_path: str) -> tuple[list[str], np.ndarray]:
    """(caption texts, stored vectors) of one raster's variants, in caption order."""
    from plugin.core.types import CaptionVariant

    conn = sqlite3.connect(os.path.join(index_dir, "index.sqlite"))
    try:
        rows = conn.execute(
            "SELECT c.one_sentence, c.feature, c.caption, e.vector FROM captions c JOIN embeddings e USING (caption_id)"
            " JOIN tiles t USING (tile_id) JOIN rasters r USING (raster_id) WHERE r.path = ? ORDER BY c.caption_id",
            (os.path.abspath(raster_path),)).fetchall()
    finally:
        conn.close()
    texts = [CaptionVariant(a, b, c).text() or "(empty)" for a, b, c, _ in rows]
    return texts, np.stack([np.frombuffer(v, np.float32) for *_, v in rows])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("graph-scenes")
    return [write_scene(d / f"scene{i}.tif", seed=i) for i in range(3)]


def test_int8_documents_stay_close_to_torch_and_queries_stay_fp32() -> None:
    torch_emb = make_embedder(None, device="cpu", backend="torch")
    emb = cached_embedder(None, "cpu", "int8")  # what an int8 index's job loads
    assert emb.document_graph == "int8" and emb.onnx.model_file == INT8_FILE
    assert emb.fingerprint == torch_emb.fingerprint  # one fingerprint: the index checks the model, not the graph
    texts = real_queries(120)
    docs = np.sum(emb.encode_documents(texts) * torch_emb.encode_documents(texts), axis=1)
    assert INT8_MIN_COSINE <= docs.min() < MIN_COSINE, docs.min()  # close to torch, not equal
    queries = np.sum(emb.encode_queries(texts) * torch_emb.encode_queries(texts), axis=1)
    assert queries.min() >= MIN_COSINE  # queries always run the fp32 graph
    # A GPU embedder (torch) follows an int8 index's record through onnxruntime on the CPU; an fp32
    # one keeps torch. (attach_onnx reads only .device: the torch model itself stays on the CPU here.)
    torch_emb.device = "cuda"
    attach_onnx(torch_emb, "fp32")
    assert torch_emb.onnx is None and torch_emb.document_graph == "fp32"
    attach_onnx(torch_emb, "int8")
    assert torch_emb.document_graph == "int8" and torch_emb.onnx.model_file == INT8_FILE
    # The fp32 query session of an int8 embedder opens on the first query, never for documents alone.
    torch_emb.encode_documents(texts[:4])
    assert torch_emb.onnx._fp32 is None
    np.testing.assert_allclose(torch_emb.encode_queries(texts[:4]), emb.encode_queries(texts[:4]), atol=1e-6)
    assert torch_emb.onnx._fp32 is not None


def test_new_cpu_index_records_int8_and_every_later_run_follows_it(tmp_path: Path, scenes: list[str], capsys) -> None:
    idx = str(tmp_path / "idx")
    rep = index_rasters(idx, [RasterSource(scenes[0])], tiling=SMALL, captioner_options=FAST, device="cpu")
    assert rep.document_graph == "int8"
    assert index_info(idx)["document_graph"] == "int8"
    graph, count = recorded_graph(idx)
    assert graph == "int8" and count == 18  # 9 tiles x 2 variants
    # The next run asks nothing: the record decides, whatever this machine would pick for a new index.
    os.environ["SIS_DOCUMENTS_INT8"] = "0"  # the deprecated alias only sets a NEW index's default
    try:
        assert choose_graph(idx, None, "local", "cpu") == "int8"
        rep = index_rasters(idx, [RasterSource(scenes[0]), RasterSource(scenes[1])], tiling=SMALL,
                            captioner_options=FAST, device="cpu")
    finally:
        del os.environ["SIS_DOCUMENTS_INT8"]
    assert rep.document_graph == "int8"
    texts, vecs = _stored(idx, scenes[1])
    int8 = cached_embedder(None, "cpu", "int8").encode_documents(texts)
    np.testing.assert_allclose(vecs, int8, atol=1e-5)  # one text per run: its vector depends on the text alone
    fp32 = cached_embedder(None, "cpu", "fp32").encode_documents(texts)
    assert np.sum(vecs * fp32, axis=1).max() < MIN_COSINE
    # A request that contradicts the record: one line, nothing changed.
    with pytest.raises(EngineError, match="applies only to a new index"):
        index_rasters(idx, [RasterSource(scenes[2])], tiling=SMALL, captioner_options=FAST, document_graph="fp32")
    capsys.readouterr()
    assert cli_main(["index", "--index", idx, "--document-graph", "fp32", "--quiet", scenes[2]]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "int8 graph" in err[0] and "--document-graph fp32" in err[0], err
    assert recorded_graph(idx) == ("int8", 36)
    # `info` shows it.
    assert cli_main(["info", "--index", idx]) == 0
    assert "document_graph: int8" in capsys.readouterr().out


def test_an_index_from_before_the_record_is_fp32_and_stays_fp32(tmp_path: Path, scenes: list[str]) -> None:
    idx = str(tmp_path / "old")
    rep = index_rasters(idx, [RasterSource(scenes[0])], tiling=SMALL, captioner_options=FAST, device="cpu",
                        document_graph="fp32")
    assert rep.document_graph == "fp32"
    conn = sqlite3.connect(os.path.join(idx, "index.sqlite"))
    conn.execute("DELETE FROM meta WHERE key = 'document_graph'")  # as every index built before the record
    conn.commit()
    conn.close()
    assert recorded_graph(idx) == ("fp32", 18) and index_info(idx)["document_graph"] == "fp32"
    rep = index_rasters(idx, [RasterSource(scenes[1])], tiling=SMALL, captioner_options=FAST, device="cpu")
    assert rep.document_graph == "fp32"  # a new CPU index would be int8; this one keeps what built it
    texts, vecs = _stored(idx, scenes[1])
    fp32 = cached_embedder(None, "cpu", "fp32").encode_documents(texts)
    assert np.sum(vecs * fp32, axis=1).min() >= MIN_COSINE
    with pytest.raises(EngineError, match="fp32 graph"):
        index_rasters(idx, [RasterSource(scenes[2])], tiling=SMALL, captioner_options=FAST, document_graph="int8")


def test_graph_names_and_the_ray_embed_stage_follow_the_record() -> None:
    assert check_graph(None) is None and check_graph(" Auto ") is None and check_graph("INT8") == "int8"
    with pytest.raises(EngineError, match="use auto, fp32 or int8"):
        check_graph("int4")
    # The Ray executors hand the index's graph to every embed actor (ray_exec: the stage's kwargs).
    stage = EmbedStage(None, "cpu", cached_embedder(None, "cpu").fingerprint, document_graph="int8")
    assert stage.embedder.document_graph == "int8"
    assert EmbedStage(None, "cpu", document_graph="fp32").embedder.document_graph == "fp32"
