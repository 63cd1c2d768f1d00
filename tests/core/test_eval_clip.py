"""The zero-shot CLIP baseline with a tiny random-weight CLIP built, saved and reloaded here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from plugin.core.errors import ModelUnavailableError
from plugin.core.eval.cli import main as eval_main
from plugin.core.eval.clip_baseline import ClipBaseline, run_clip
from plugin.core.eval.datasets import load_dataset
from plugin.core.eval.metrics import recall_metrics
from tests.core.test_eval_datasets import SCENES, write_karpathy


def build_tiny_clip(folder: Path) -> Path:
    """A CLIPModel (1 layer, width 32, 32 px images) with a byte-level BPE tokenizer of 514 tokens."""
    import torch
    from tokenizers import pre_tokenizers
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer

    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    eos = vocab["<|endoftext|>"]
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, eos_token_id=eos,
                         bos_token_id=vocab["<|startoftext|>"], pad_token_id=eos),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def test_clip_baseline_end_to_end(tmp_path, tiny_clip):
    ds = load_dataset(write_karpathy(tmp_path / "data"))
    clip = ClipBaseline(str(tiny_clip), device="cpu", batch_size=4)
    txt = clip.encode_texts(ds.captions)
    assert txt.shape == (30, 16)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, rtol=1e-5)
    # batching does not change the features
    np.testing.assert_allclose(clip.encode_texts(ds.captions[:3]), txt[:3], atol=1e-5)
    res = run_clip(ds, clip)
    m = res.metrics
    assert (m.gallery_images, m.query_captions) == (6, 30)
    assert res.mode == "clip" and res.config["model"] == str(tiny_clip)
    # the result is the field's metric on the model's own cosine matrix
    from plugin.core.eval.captioning import read_image_rgb

    img = clip.encode_images([read_image_rgb(p) for p in ds.require_images()])
    expected = recall_metrics(img @ txt.T, ds.caption_image)
    assert m.to_dict() == pytest.approx(expected.to_dict())
    # only 6 images: every caption's image is in its top 10 whatever the weights
    assert m.t2i_r10 == 100.0
    assert 0.0 <= m.i2t_r1 <= m.i2t_r5 <= m.i2t_r10 <= 100.0


def test_clip_mode_from_the_command_line(tmp_path, tiny_clip, capsys):
    data = write_karpathy(tmp_path / "data")
    out = tmp_path / "res" / "clip"
    rc = eval_main(["--dataset", str(data), "--mode", "clip", "--clip-model", str(tiny_clip), "--device", "cpu",
                    "--out", str(out), "--quiet"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "toy clip" in table and "mR (6-way)" in table
    assert (out.parent / "clip.json").is_file() and (out.parent / "clip.md").is_file()
    assert len(SCENES) == 6


def test_clip_model_that_cannot_be_loaded(tmp_path):
    with pytest.raises(ModelUnavailableError, match="cannot be loaded"):
        ClipBaseline("nobody/no-such-clip-model-xyz")
    with pytest.raises(ModelUnavailableError, match="cannot be loaded"):
        ClipBaseline(str(tmp_path))  # an empty folder
