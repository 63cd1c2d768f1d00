"""Which int8 document graph: each quantisation recipe's cosine to the torch vectors and its CPU speed.

The script behind RESULTS.md's "Which int8 graph" table (issue 12, third pass). For every recipe it
quantises the engine's fp32 ONNX export of the packaged MiniLM with onnxruntime's `quantize_dynamic`
(per-channel int8 weights, dynamic activations), embeds the same caption texts through it and
prints, per recipe: the worst and median cosine of its document vectors to sentence-transformers'
(torch), and its single-thread CPU time per text relative to the fp32 graph measured in the same run
(CPU time: a loaded machine disturbs it least). The chosen recipe is the engine's own
(`onnx_export.int8_options`); a row marked "engine" must match what `ensure_int8` builds.

Texts: the distinct RSITMD / RSICD test captions in `--captions` (read, never copied into the
project; `--n-real` of them, spread over the files) plus `--n-generated` three-field captions made
here from a word list with a fixed seed (the shape of what a VLM writes: one sentence, features with
positions, a paragraph). `--batch 1` embeds one text per run, as the engine does since the
one-text rule; `--batch 64` reproduces the first table.

    .venv/bin/python benchmarks/int8_fidelity.py [--captions ../shared/data/captions] [--batch 64]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

OBJECTS = ["buildings", "trees", "a river", "farmland", "a road", "a beach", "the sea", "a parking lot", "a bridge",
           "storage tanks", "a runway", "a harbour", "grassland", "a forest", "houses", "a playground", "a church"]
PLACES = ["north", "south", "east", "west", "north-east", "south-west", "centre"]


def generated_captions(n: int, seed: int = 0) -> list[str]:
    """Three-field captions with the structure the RSRT prompt asks for (deterministic)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        objs = list(rng.choice(OBJECTS, size=4, replace=False))
        where = list(rng.choice(PLACES, size=4))
        one = f"An aerial image with {objs[0]} and {objs[1]}."
        feature = ", ".join(f"{o} in the {w}" for o, w in zip(objs, where))
        caption = (f"The {where[0]} of the tile is covered by {objs[0]}, while {objs[1]} runs through the {where[1]}; "
                   f"{objs[2]} appear in the {where[2]}, with {objs[3]} near the edges.")
        out.append(f"{one} {feature}. {caption}")
    return out


def real_captions(folder: str, n: int) -> list[str]:
    texts: list[str] = []
    for name in ("rsitmd_test_caps.txt", "rsicd_test_caps.txt"):
        path = Path(folder, name)
        if path.is_file():
            texts += [t.strip() for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
    texts = list(dict.fromkeys(texts))
    return texts[:: max(1, len(texts) // n)][:n] if texts else []


def recipes(graph) -> dict[str, dict]:
    """quantize_dynamic options per recipe (the table's rows); names are BERT-style export node names."""
    from plugin.core.embedding.onnx_export import int8_options

    matmuls = [n.name for n in graph.node if n.op_type == "MatMul"]
    layers = sorted({int(m.split("layer.")[1].split("/")[0]) for m in matmuls if "layer." in m})
    last = f"layer.{layers[-1]}/" if layers else "(none)"
    ffn2 = [m for m in matmuls if "/output/dense/" in m and "attention" not in m]
    ffn1 = [m for m in matmuls if "/intermediate/dense/" in m]
    return {
        "every MatMul, Attention and the word embeddings": {"op_types_to_quantize": ["MatMul", "Attention", "Gather"]},
        "MatMul + Attention, word embeddings fp32": {"op_types_to_quantize": ["MatMul", "Attention"]},
        "MatMul only (QKV of the fused Attention fp32)": {"op_types_to_quantize": ["MatMul"]},
        "MatMul + Attention minus the last layer": {"op_types_to_quantize": ["MatMul", "Attention"],
                                                    "nodes_to_exclude": [m for m in matmuls if last in m]},
        "MatMul + Attention, reduce_range (7-bit weights)": {"op_types_to_quantize": ["MatMul", "Attention"],
                                                             "reduce_range": True},
        "MatMul + Attention minus every FFN down-projection (FFN2)": {"op_types_to_quantize": ["MatMul", "Attention"],
                                                                      "nodes_to_exclude": ffn2},
        "MatMul + Attention minus FFN2 of layers 0-2 (engine)": int8_options(graph),
        "FFN1 MatMuls only": {"op_types_to_quantize": ["MatMul"], "nodes_to_exclude": [m for m in matmuls if m not in ffn1]},
    }


def cpu_time(fn) -> tuple[float, object]:
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions", default=os.path.join(ROOT, "..", "shared", "data", "captions"))
    ap.add_argument("--n-real", type=int, default=700)
    ap.add_argument("--n-generated", type=int, default=300)
    ap.add_argument("--batch", type=int, default=1, help="texts per run (1: the engine's one-text rule)")
    ap.add_argument("--only", default="", help="run only recipes whose name contains this")
    args = ap.parse_args()

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from plugin.core.embedding.embedder import make_embedder
    from plugin.core.embedding.onnx_embedder import OnnxEmbedder
    from plugin.core.embedding.onnx_export import INT8_FILE, ensure_export, ensure_int8

    texts = real_captions(args.captions, args.n_real) + generated_captions(args.n_generated)
    print(f"{len(texts)} texts ({len(texts) - args.n_generated} real captions from {args.captions}, "
          f"{args.n_generated} generated); batch {args.batch}; onnxruntime single thread")
    torch_emb = make_embedder(None, device="cpu", backend="torch")
    want = torch_emb.encode_documents(texts)
    folder = ensure_export(torch_emb)
    src = os.path.join(folder, "model.onnx")
    graph = onnx.load(src, load_external_data=False).graph

    def measure(model_dir: str, model_file: str) -> tuple[float, np.ndarray]:
        emb = OnnxEmbedder(model_dir, threads=1, batch_size=args.batch, model_file=model_file)
        emb.encode_documents(texts[:8])  # warm-up
        return cpu_time(lambda: emb.encode_documents(texts))  # type: ignore[return-value]

    base_s, got = measure(folder, "model.onnx")
    cos = np.sum(want * got, axis=1)
    print(f"\n| graph | worst cosine | median | CPU speed vs fp32 |\n|---|---:|---:|---:|\n"
          f"| fp32 export | {cos.min():.7f} | {np.median(cos):.7f} | 1 ({len(texts) / base_s:.0f} texts per CPU-second) |")
    engine_file = ensure_int8(folder)
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("meta.json", "tokenizer.json"):
            Path(tmp, name).write_bytes(Path(folder, name).read_bytes())
        os.symlink(src, os.path.join(tmp, "model.onnx"))  # an export folder holds its fp32 graph
        for name, opts in recipes(graph).items():
            if args.only and args.only not in name:
                continue
            out = os.path.join(tmp, "q.onnx")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                logging.getLogger().setLevel(logging.ERROR)  # "consider pre-processing" on every recipe
                quantize_dynamic(src, out, weight_type=QuantType.QInt8, per_channel=True,
                                 extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT}, **opts)
            secs, got = measure(tmp, "q.onnx")
            cos = np.sum(want * got, axis=1)
            print(f"| {name} | {cos.min():.4f} | {np.median(cos):.4f} | {base_s / secs:.2f}x |", flush=True)
            if "(engine)" in name:  # the recipe this script names is the one the engine ships
                _, engine = measure(folder, engine_file)
                assert engine_file == INT8_FILE and np.allclose(engine, got, atol=1e-5), "engine graph differs"
    return 0


if __name__ == "__main__":
    sys.exit(main())
