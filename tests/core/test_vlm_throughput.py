"""Throughput levers of the transformers captioner (issue 5), proven on CPU with a tiny LLaVA.

The optimized path (all K variants fused into one generate call, greedy rows inside a sampled
batch, rows bucketed by prompt length, vision tower once per tile) must give, for greedy decoding,
exactly the text plain `model.generate` gives one tile at a time. Also: batch sizing from memory,
the row plan, the CPU-only guards, and a smoke run of benchmarks/gpu_caption_throughput.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from captioner_tiles import FOREST, WATER, fields, fill, make_tile

from plugin.core.captioners import make_captioner
from plugin.core.captioners.base import tile_image
from plugin.core.captioners.vlm_batching import (
    kv_bytes_per_token,
    plan_rows,
    resolve_cache,
    row_bytes,
    rows_from_free_memory,
)
from plugin.core.errors import EngineError

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def tiles():
    half = fill(48, 48, FOREST)
    half[:, :, :24] = fill(48, 24, WATER)
    return [make_tile(fill(40, 40, WATER), tile_id="a"), make_tile(fields(64, 64), has_nir=False, tile_id="b"),
            make_tile(half, tile_id="c"), make_tile(fields(32, 48), tile_id="d")]


def _plain_greedy(cap, tile, k: int, n: int) -> str:
    """What plain `generate` answers for one tile and variant k (no batching, no levers)."""
    inputs = cap.processor(images=[tile_image(tile)], text=[cap._prompt(k)], return_tensors="pt")
    with torch.inference_mode():
        ids = cap.model.generate(**inputs, do_sample=False, max_new_tokens=n, pad_token_id=cap._tokenizer.pad_token_id)
    return cap.processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()


@pytest.mark.parametrize("reuse_vision", [False, True])
def test_fused_batch_greedy_equals_plain_generate(llava_dir, tiles, reuse_vision):
    """Batch of 4 tiles x 3 variants in one call (padded, mixed greedy/sampled) vs batch 1 greedy."""
    cap = make_captioner(f"transformers:{llava_dir}", variants=3, max_new_tokens=8, device="cpu", batch_size=4,
                         reuse_vision=reuse_vision)
    try:
        assert cap.max_rows == 12 and cap.attn_implementation == "sdpa"
        lens = {cap._prompt_len(k) for k in range(3)}
        assert len(lens) == 3  # the variant prompts differ in length: rows are really left-padded
        fused = cap.generate_texts(tiles)
        plain = [_plain_greedy(cap, t, 0, 8) for t in tiles]
        assert [v[0] for v in fused] == plain
        assert all(p for p in plain)
        # Sampled variants are reproducible for the same chunk and not all equal to the greedy one.
        assert cap.generate_texts(tiles) == fused
        assert any(v[1] != v[0] or v[2] != v[0] for v in fused)
        # K calls (the reference path) give the same greedy answers too.
        cap.fuse_variants = False
        assert [v[0] for v in cap.generate_texts(tiles)] == plain
    finally:
        cap.close()


def test_vision_tower_runs_once_per_tile(llava_dir, tiles):
    cap = make_captioner(f"transformers:{llava_dir}", variants=3, max_new_tokens=3, device="cpu", batch_size=4,
                         reuse_vision=True)
    seen: list[int] = []
    hook = cap.model.base_model.vision_tower.register_forward_hook(lambda m, a, out: seen.append(a[0].shape[0]))
    try:
        cap.generate_texts(tiles)
        assert seen == [4]  # 4 tiles, not 12 rows
        seen.clear()
        cap.reuse_vision = False
        cap.generate_texts(tiles)
        assert seen == [12]
    finally:
        hook.remove()
        cap.close()


def test_row_plan_buckets_by_prompt_length():
    lengths = {0: 30, 1: 50, 2: 31}
    plan = plan_rows(3, 3, lengths.__getitem__, max_rows=4)
    flat = [r for chunk in plan for r in chunk]
    assert sorted(flat) == [(i, k) for i in range(3) for k in range(3)]
    assert [len(c) for c in plan] == [4, 4, 1]
    assert [k for _, k in flat] == [0, 0, 0, 2, 2, 2, 1, 1, 1]  # short prompts first, longest last
    with pytest.raises(EngineError, match="at least 1"):
        plan_rows(2, 2, lengths.__getitem__, max_rows=0)


def test_batch_size_from_free_memory():
    # LLaVA-1.5-7B text part: 32 layers, 32 KV heads of 128, bf16 -> 512 KiB per token.
    cfg = SimpleNamespace(text_config=SimpleNamespace(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32,
                                                      num_key_value_heads=32, head_dim=None))
    per_token = kv_bytes_per_token(cfg, 2)
    assert per_token == 2 * 32 * 32 * 128 * 2
    per_row = 2 * per_token * (616 + 128)
    assert rows_from_free_memory(64 * 2**30, per_row) == int(0.85 * 64 * 2**30 // per_row) == 74
    # A row's peak: its whole KV cache plus one layer's prefill activations (7B: 4096 wide, MLP 11008).
    cfg.text_config.intermediate_size = 11008
    tokens = 600 + 128
    assert row_bytes(cfg, 2, tokens) == per_token * tokens + tokens * (6 * 4096 + 3 * 11008) * 2
    # H200 after loading the 7B weights (~125 GiB free): about 245 rows of 728 tokens per call (89 GiB of KV cache).
    assert rows_from_free_memory(125 * 2**30, row_bytes(cfg, 2, tokens)) == 245
    assert rows_from_free_memory(2**20, per_row) == 1 and rows_from_free_memory(2**50, per_row) == 512
    with pytest.raises(EngineError, match="no decoder"):
        kv_bytes_per_token(SimpleNamespace(), 2)


def test_cache_choice():
    assert resolve_cache("auto", "cpu", False) == "dynamic"
    assert resolve_cache("auto", "cuda", True) == "static"
    assert resolve_cache("static", "cpu", False) == "static"


def test_static_cache_greedy_equals_dynamic(llava_dir, tiles):
    """The preallocated KV cache changes memory traffic, not answers: same greedy text as the
    dynamic cache, for fused mixed greedy/sampled rows, with the preprocessing thread on and off."""
    opts = dict(variants=2, max_new_tokens=6, device="cpu", batch_size=4, max_rows=3)
    dyn = make_captioner(f"transformers:{llava_dir}", cache="dynamic", prefetch=False, **opts)
    try:
        ref = dyn.generate_texts(tiles)
    finally:
        dyn.close()
    stat = make_captioner(f"transformers:{llava_dir}", cache="static", **opts)
    try:
        assert stat.cache == "static" and stat.prefetch
        got = stat.generate_texts(tiles)  # 8 rows in 3 calls: the 2nd and 3rd preprocessed in a thread
        assert [v[0] for v in got] == [v[0] for v in ref]
        assert all(v[0] for v in got)
    finally:
        stat.close()


def test_cpu_guards_and_bad_options(llava_dir):
    with pytest.raises(EngineError, match="compile=True .* needs a CUDA device"):
        make_captioner(f"transformers:{llava_dir}", device="cpu", compile=True)
    with pytest.raises(EngineError, match="unknown cache 'paged'"):
        make_captioner(f"transformers:{llava_dir}", device="cpu", cache="paged")
    with pytest.raises(EngineError, match="unknown attn_implementation 'fast'"):
        make_captioner(f"transformers:{llava_dir}", device="cpu", attn_implementation="fast")
    with pytest.raises(EngineError, match="at least 1"):
        make_captioner(f"transformers:{llava_dir}", device="cpu", max_rows=0)
    eager = make_captioner(f"transformers:{llava_dir}", variants=2, max_new_tokens=2, device="cpu",
                           attn_implementation="eager")
    try:
        assert eager.attn_implementation == "eager" and eager.batch_size == 2 and eager.max_rows == 4
        # The memory estimate counts every image token: 30 px / 6 px patches = 25 in place of one <image>.
        assert eager._row_tokens() == eager._prompt_len(0) + 24
    finally:
        eager.close()


def test_benchmark_smoke(tmp_path):
    """benchmarks/gpu_caption_throughput.py runs end to end on CPU with the tiniest shapes."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_caption_throughput.py"), "--tiny", "--tiles", "4",
           "--variants", "2", "--new-tokens", "4", "--e2e-tiles", "4", "--json", str(tmp_path / "r.json")]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=100)
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    r = json.loads((tmp_path / "r.json").read_text())
    for key in ("plain_b4", "plain_b64", "captioner"):
        assert r[key]["tiles_per_s"] > 0
    assert r["greedy_equal"] is True
    assert r["e2e"]["tiles"] == 4 and 0 < r["e2e"]["ratio_to_captioning"]
    assert "tiles/s" in res.stdout and "ratio" in res.stdout


def test_cli_captioner_options(tmp_path):
    """`--captioner-option KEY=VALUE` reaches the captioner typed; an option it does not take is one line."""
    import argparse

    from plugin.core.cli_args import parse_option

    assert parse_option("cache=static") == ("cache", "static")
    assert parse_option("max-rows=192") == ("max_rows", 192)
    assert parse_option("reuse_vision=true") == ("reuse_vision", True)
    assert parse_option("temperature=0.5") == ("temperature", 0.5)
    assert parse_option("batch_size=none") == ("batch_size", None)
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        parse_option("static")
    from rasters import north_up

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    res = subprocess.run(
        [sys.executable, "-m", "plugin", "index", "--index", str(tmp_path / "ix"), "--captioner-option", "cache=static",
         "--quiet", north_up(str(tmp_path))], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error")]
    assert "Traceback" not in res.stderr and len(errors) == 1, res.stderr
    assert "does not take option(s) cache" in errors[0]


def test_cpu_defaults_keep_the_reference_path(llava_dir):
    """On CPU: dynamic cache, vision per row (measured: reuse is noise there), no allocator setting."""
    cap = make_captioner(f"transformers:{llava_dir}", variants=2, max_new_tokens=2, device="cpu")
    try:
        assert cap.cache == "dynamic" and cap.reuse_vision is False and cap.compile is False
    finally:
        cap.close()
    cap = make_captioner(f"transformers:{llava_dir}", variants=2, max_new_tokens=2, device="cpu", reuse_vision="auto",
                         cache="static")
    try:
        assert cap.cache == "static" and cap.reuse_vision is False
    finally:
        cap.close()
