"""captions-only proxy, captions-file round trip, full mode with the spectral captioner, the CLI.

Real MiniLM (the packaged model) on the generated six-scene dataset whose captions are distinct
enough that a working text side must rank most of them right.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from plugin.core.embedding.embedder import make_embedder
from plugin.core.eval.captioning import (
    caption_dataset,
    image_tile,
    read_captions_file,
    write_captions_file,
)
from plugin.core.eval.cli import main as eval_main
from plugin.core.eval.datasets import DatasetError, load_dataset
from plugin.core.eval.metrics import recall_metrics
from plugin.core.eval.runner import VectorCache, captions_only_split, run_captions_only, run_with_variants
from plugin.core.types import CaptionVariant
from tests.core.test_eval_datasets import SCENES, write_karpathy, write_precomp


@pytest.fixture(scope="module")
def embedder(minilm_path):
    return make_embedder(minilm_path, device="cpu")


def test_captions_only_split_and_metrics(tmp_path, embedder):
    ds = load_dataset(write_precomp(tmp_path))
    v_txt, v_img, q_txt, q_img = captions_only_split(ds, 2)
    assert v_txt[:2] == SCENES["lake_1.png"][1][:2] and q_txt[:3] == SCENES["lake_1.png"][1][2:]
    assert v_img.tolist() == [i for i in range(6) for _ in range(2)]
    vectors = VectorCache(embedder, tmp_path / "cache")
    res = run_captions_only(ds, vectors, ks=(1, 2), fusions=("max", "mean", "top2"))
    assert [(r.config["k"], r.config["fusion"]) for r in res] == [
        (1, "max"), (1, "mean"), (1, "top2"), (2, "max"), (2, "mean"), (2, "top2")]
    assert [(r.metrics.gallery_images, r.metrics.query_captions) for r in res] == [(6, 24)] * 3 + [(6, 18)] * 3
    # one variant per image: every fusion is the same score
    assert res[0].metrics == res[1].metrics == res[2].metrics
    # a working text side finds the right scene for most queries among 6 distinct scenes
    assert res[3].metrics.t2i_r1 >= 70.0 and res[3].metrics.i2t_r1 >= 80.0
    # the runner's numbers are the field's metric on plain cosine scores of the same vectors (k=1)
    v = embedder.encode_documents(captions_only_split(ds, 1)[0])
    q = embedder.encode_queries(captions_only_split(ds, 1)[2])
    expected = recall_metrics(v @ q.T, captions_only_split(ds, 1)[3])
    assert res[0].metrics.to_dict() == pytest.approx(expected.to_dict())
    # every distinct text was embedded once; a fresh cache object reads them back from disk
    assert vectors.embedded == len(set(ds.captions))
    again = VectorCache(embedder, tmp_path / "cache")
    res2 = run_captions_only(ds, again, ks=(2,), fusions=("top2",))
    assert again.embedded == 0 and res2[0].metrics == res[5].metrics


def test_captions_only_needs_a_query_per_image(tmp_path, embedder):
    ds = load_dataset(write_precomp(tmp_path))
    with pytest.raises(DatasetError, match="k=5 leaves no query"):
        run_captions_only(ds, VectorCache(embedder), ks=(5,))
    with pytest.raises(DatasetError, match="fusion 'best'"):
        run_captions_only(ds, VectorCache(embedder), ks=(1,), fusions=("best",))


def test_captions_file_round_trip_and_cli(tmp_path, embedder, capsys):
    ds = load_dataset(write_karpathy(tmp_path / "data", with_images=False))
    # variants written elsewhere: a field-structured first variant, a plain second one
    caps = {n: [CaptionVariant(cs[0], "feature words", cs[1]), CaptionVariant(cs[2], "", "")]
            for n, (_, cs) in SCENES.items()}
    path = tmp_path / "caps.jsonl"
    write_captions_file(path, caps, captioner_fp="elsewhere:v1")
    assert read_captions_file(path) == caps
    assert read_captions_file(path, captioner_fp="other") == {}
    res = run_with_variants(ds, read_captions_file(path), VectorCache(embedder), ("max", "mean"), max_variants=None)
    assert res[0].metrics.query_captions == 30 and res[0].config["variants_total"] == 12
    assert res[0].metrics.t2i_r1 >= 60.0
    one = run_with_variants(ds, caps, VectorCache(embedder), ("max",), max_variants=1)
    assert one[0].config["variants_total"] == 6
    # the CLI gives the same numbers and writes JSON + Markdown with the configuration
    out = tmp_path / "out" / "run"
    rc = eval_main(["--dataset", str(tmp_path / "data" / "dataset_toy.json"), "--mode", "captions-file",
                    "--captions-file", str(path), "--fusion", "max,mean", "--cache-dir", str(tmp_path / "c"),
                    "--out", str(out), "--quiet"])
    assert rc == 0 and "toy captions-file max" in capsys.readouterr().out
    doc = json.loads((tmp_path / "out" / "run.json").read_text())
    assert len(doc["results"]) == 2
    for got, want in zip(doc["results"], res):
        assert got["metrics"] == pytest.approx(want.metrics.to_dict())
    assert doc["results"][0]["config"]["embedder"] == embedder.fingerprint
    assert "mR (6-way)" in (tmp_path / "out" / "run.md").read_text()


def test_captions_file_errors(tmp_path, embedder):
    ds = load_dataset(write_karpathy(tmp_path / "data", with_images=False))
    path = tmp_path / "caps.jsonl"
    write_captions_file(path, {"lake_1.png": [CaptionVariant("water", "", "")]})
    with pytest.raises(DatasetError, match="5 of 6 images have no caption variants"):
        run_with_variants(ds, read_captions_file(path), VectorCache(embedder))
    path.write_text('{"image": "a.png", "variants": [{"one_sentence": "x"}]}\nnot json\n')
    with pytest.raises(DatasetError, match="line 2: not JSON"):
        read_captions_file(path)
    path.write_text('{"image": "a.png", "variants": [{"colour": "x"}]}\n')
    with pytest.raises(DatasetError, match="needs one_sentence, feature or caption"):
        read_captions_file(path)
    with pytest.raises(DatasetError, match="not found"):
        read_captions_file(tmp_path / "none.jsonl")


def test_full_mode_with_spectral_captioner(tmp_path, embedder):
    from plugin.core.captioners import make_captioner

    ds = load_dataset(write_karpathy(tmp_path / "data"))
    captioner = make_captioner("spectral", variants=3)
    cache = tmp_path / "cache" / "captions.jsonl"
    seen: list[tuple[int, int]] = []
    variants = caption_dataset(ds, captioner, cache, batch_size=4, progress=lambda d, t, m: seen.append((d, t)))
    assert list(variants) == ds.images and all(len(v) == 3 for v in variants.values())
    assert seen[-1] == (6, 6)
    lines = cache.read_text().splitlines()
    assert len(lines) == 6 and json.loads(lines[0])["captioner"] == captioner.fingerprint
    # a rerun reads everything back from the cache: nothing appended, same captions
    again = caption_dataset(ds, captioner, cache, batch_size=4)
    assert again == variants and cache.read_text().splitlines() == lines
    res = run_with_variants(ds, variants, VectorCache(embedder), ("max", "top2"), mode="full",
                            config={"captioner": captioner.fingerprint})
    assert [r.metrics.query_captions for r in res] == [30, 30]
    assert all(0.0 <= r.metrics.mR <= 100.0 for r in res)
    assert res[0].config["captioner"] == captioner.fingerprint


def test_full_mode_cancel_keeps_finished_batches(tmp_path):
    from plugin.core.captioners import make_captioner
    from plugin.core.errors import Canceled

    ds = load_dataset(write_karpathy(tmp_path / "data"))
    captioner = make_captioner("spectral", variants=2)
    cache = tmp_path / "captions.jsonl"
    calls = iter([False, True])
    with pytest.raises(Canceled):
        caption_dataset(ds, captioner, cache, batch_size=4, is_canceled=lambda: next(calls))
    assert len(cache.read_text().splitlines()) == 4  # the first batch is kept
    seen: list[int] = []
    done = caption_dataset(ds, captioner, cache, batch_size=4, progress=lambda d, t, m: seen.append(d))
    assert seen == [4, 6] and len(done) == 6 and len(cache.read_text().splitlines()) == 6


def test_unreadable_image_is_a_clear_error(tmp_path):
    path = write_karpathy(tmp_path / "data")
    (tmp_path / "data" / "images" / "city_4.png").write_bytes(b"this is not a png")
    with pytest.raises(DatasetError, match="cannot read image city_4.png"):
        image_tile(tmp_path / "data" / "images" / "city_4.png")
    from plugin.core.captioners import make_captioner

    with pytest.raises(DatasetError, match="cannot read image city_4.png"):
        caption_dataset(load_dataset(path), make_captioner("spectral"), None)


def test_image_tile_is_what_captioners_take(tmp_path):
    write_karpathy(tmp_path / "data")
    tile = image_tile(tmp_path / "data" / "images" / "lake_1.png", "toy")
    assert tile.rgb.shape == (32, 32, 3) and tile.rgb.dtype == np.uint8
    assert tile.raw.shape == (3, 32, 32) and tile.raw.dtype == np.float32 and tile.valid.all()
    assert tile.ref.tile_id == "lake_1.png" and tile.ref.window.width == 32 and not tile.has_nir


def test_python_m_plugin_eval(tmp_path, repo_root):
    write_precomp(tmp_path / "d")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    r = subprocess.run(
        [sys.executable, "-m", "plugin", "eval", "--dataset", str(tmp_path / "d"), "--k", "1,2", "--fusion", "all",
         "--device", "cpu", "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "r"), "--quiet"],
        cwd=repo_root, capture_output=True, text=True, timeout=300, env=env,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("captions-only") == 6 and (tmp_path / "r.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "plugin", "eval", "--dataset", str(tmp_path / "missing")],
                         cwd=repo_root, capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 1 and bad.stderr.startswith("error: dataset not found")
