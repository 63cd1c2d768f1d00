"""The `vllm:` captioner without vLLM: the request rows `ray.data.llm` gets, the parsing of its
generated texts back into K variants per tile (rows in any order, as the engine finishes them), and
the one-line refusals (on this computer; vLLM missing on the cluster). The GPU run itself is for a
machine with one (README, "vLLM on the cluster")."""

from __future__ import annotations

import base64
import json
import pickle
import random

import numpy as np
import pytest
from captioner_tiles import FOREST, WATER, fill, make_tile

from plugin.core.captioners import make_captioner
from plugin.core.captioners.prompts import SYSTEM, variant_prompt
from plugin.core.captioners.vllm_ray import parse_vllm_spec, request_rows, vllm_fingerprint
from plugin.core.errors import EngineError
from plugin.core.indexing.cluster.ray_vllm import KEEP, VllmAssembler, VllmEmbedStage, vllm_requests
from plugin.core.search.searcher import cached_embedder
from tests.core.ray_cluster import as_numpy_batch as _as_numpy  # noqa: E402

ANSWER = {"one_sentence": "A coast with forest.", "feature": "water in the west; trees in the east",
          "caption": "Dark water meets a dense wood."}


def _tiles():
    half = fill(32, 32, FOREST)
    half[:, :, :16] = fill(32, 16, WATER)
    return [make_tile(half, tile_id="a"), make_tile(fill(24, 24, WATER), has_nir=False, tile_id="b")]


def test_request_rows_one_per_tile_and_variant_variant_0_greedy() -> None:
    spec = parse_vllm_spec("vllm:Qwen/Qwen2.5-VL-7B-Instruct", {"variants": 3, "max_new_tokens": 99, "seed": 7,
                                                              "engine_max_model_len": 8192})
    assert spec.engine_kwargs == {"max_model_len": 8192}  # --captioner-option engine_max_model_len=8192
    rows = request_rows(_tiles(), spec)
    assert [(r["seq"], r["k"]) for r in rows] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    for r in rows:
        system, user = r["messages"]
        assert system == {"role": "system", "content": SYSTEM} and user["role"] == "user"
        image, text = user["content"]
        assert text == {"type": "text", "text": variant_prompt(r["k"])}
        url = image["image_url"]["url"]
        assert image["type"] == "image_url" and url.startswith("data:image/jpeg;base64,")
        assert base64.b64decode(url.split(",", 1)[1])[:3] == b"\xff\xd8\xff"
        sp = r["sampling_params"]
        assert sp["max_tokens"] == 99 and sp["seed"] == 7 + r["k"]
        assert sp["temperature"] == (0.0 if r["k"] == 0 else 0.7)
    # One image per tile, first in each of its variants' rows (a prefix vLLM's cache can share).
    assert len({r["messages"][1]["content"][0]["image_url"]["url"] for r in rows}) == 2


def test_generated_texts_come_back_as_variants_in_order(minilm_path) -> None:
    """Chunks -> request rows -> (what the processor returns: the kept columns and a text, shuffled)
    -> parsed, embedded variants -> the chunks again, with their empty and failed tiles."""
    spec = parse_vllm_spec("vllm:m", {"variants": 3})
    tiles = _tiles()
    lost = tiles[1].ref
    chunks = _as_numpy({"cid": [0, 1], "rid": ["r0", "r0"], "tiles": [pickle.dumps(tiles), pickle.dumps([])],
                        "empty": [pickle.dumps([]), pickle.dumps([lost])],
                        "failed": [pickle.dumps([(tiles[0].ref, "pixels 0,0 cannot be read")]), pickle.dumps([])]})
    rows = vllm_requests(chunks, spec=spec)
    assert len(rows["cid"]) == 6 + 1  # 2 tiles x 3 variants, and the carrier of the chunk with no tile
    assert rows["k"][-1] == -1 and rows["sampling_params"][-1]["max_tokens"] == 1
    answers = []
    for i in range(len(rows["cid"])):
        k, seq = rows["k"][i], rows["seq"][i]
        text = json.dumps({**ANSWER, "caption": f"{ANSWER['caption']} seq {seq} k {k}"})
        if (seq, k) == (0, 1):
            text = ""  # no answer: that variant's spectral description, flagged
        if (seq, k) == (1, 2):
            text = "  \n"
        answers.append({**{c: rows[c][i] for c in KEEP}, "text": "OK" if k < 0 else text})
    random.Random(3).shuffle(answers)  # the engine finishes rows in any order
    stage = VllmEmbedStage(minilm_path, "cpu")
    asm = VllmAssembler(stage.embedder.dim)
    got = []
    for part in (answers[:4], answers[4:]):
        got += asm(stage(_as_numpy({c: [a[c] for a in part] for c in part[0]})))
    assert [len(c.refs) for c in got] == [2, 0] and not asm.buf
    first, carrier = got
    assert [r.tile_id for r in first.refs] == ["a", "b"]
    assert [len(v) for v in first.variants] == [3, 3]
    assert first.failed == [(tiles[0].ref, "pixels 0,0 cannot be read")] and carrier.empty == [lost]
    a, b = first.variants
    assert a[0].one_sentence == ANSWER["one_sentence"] and a[0].caption.startswith(f"{ANSWER['caption']} seq 0 k 0")
    assert a[1].fallback == b[2].fallback == "vLLM returned no text" and not a[0].fallback
    assert a[1].one_sentence and a[1].one_sentence != ANSWER["one_sentence"]  # the spectral description
    assert a[2].caption.startswith(f"{ANSWER['caption']} seq 0 k 2") and b[1].caption == f"{ANSWER['caption']} seq 1 k 1"
    assert "Near-infrared" in a[0].caption and "Near-infrared" not in b[0].caption  # facts for the NIR tile
    emb = cached_embedder(minilm_path, "cpu")
    for variants, vecs in zip(first.variants, first.vecs):
        assert vecs.shape == (3, emb.dim)
        np.testing.assert_allclose(vecs, emb.encode_documents([v.text() for v in variants]), atol=1e-5)


def test_one_line_refusals() -> None:
    with pytest.raises(EngineError) as e:
        make_captioner("vllm:Qwen/Qwen2.5-VL-7B-Instruct")
    assert "Ray cluster only" in str(e.value) and "--executor ray" in str(e.value) and "\n" not in str(e.value)
    # Where vLLM is not installed (here), building its fingerprint (on a GPU node) names the package.
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(EngineError) as e:
            vllm_fingerprint("vllm:Qwen/Qwen2.5-VL-7B-Instruct", {})
        assert "No module named 'vllm'" in str(e.value) and "ray[llm]" in str(e.value) and "\n" not in str(e.value)
    for spec, opts, words in (("vllm:", {}, "needs a model"), ("vllm:m", {"colour": 1}, "unknown option(s) colour"),
                              ("vllm:m", {"engine_kwargs": "x"}, "engine_kwargs must be a mapping")):
        with pytest.raises(EngineError, match=words.replace("(", r"\(").replace(")", r"\)")):
            parse_vllm_spec(spec, opts)
