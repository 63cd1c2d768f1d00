"""The transformers captioner end to end on tiny random-weight VLMs built and saved in the test.

Real processor, real chat template, from_pretrained(local_files_only=True), real generate with
left padding. Outputs are gibberish; they must still come back as K non-empty variants per tile.
"""

from __future__ import annotations

import os

import pytest
import torch
from captioner_tiles import FOREST, WATER, fields, fill, make_tile
from tiny_vlm import build_tiny_git

from plugin.core.captioners import make_captioner
from plugin.core.errors import CaptionerError, ModelUnavailableError

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def llava(llava_dir):
    cap = make_captioner(f"transformers:{llava_dir}", variants=2, max_new_tokens=6, device="cpu", batch_size=2)
    yield cap
    cap.close()


@pytest.fixture(scope="module")
def tiles():
    half = fill(48, 48, FOREST)
    half[:, :, :24] = fill(48, 24, WATER)
    return [make_tile(fill(40, 40, WATER), tile_id="a"), make_tile(fields(64, 64), has_nir=False, tile_id="b"),
            make_tile(half, tile_id="c")]


def test_tiny_llava_end_to_end(llava, tiles):
    assert llava.chat and llava.model_type == "llava"
    assert llava.model.dtype == torch.float32 and llava.device == "cpu"
    assert llava._tokenizer.padding_side == "left"
    out = llava.caption(tiles)
    assert len(out) == 3
    for variants in out:
        assert len(variants) == 2
        assert all(v.text().strip() for v in variants)
    # NIR tiles get the spectral facts appended; the RGB-only tile does not.
    assert "Near-infrared measurements" in out[0][0].caption
    assert "Near-infrared" not in out[1][0].caption
    # Deterministic: greedy variant 0 and seeded sampling for the others.
    assert llava.caption(tiles) == out


def test_batching_does_not_change_greedy_answers(llava_dir, llava, tiles):
    one = make_captioner(f"transformers:{llava_dir}", variants=1, max_new_tokens=6, device="cpu", batch_size=1)
    try:
        assert [v[0] for v in one.caption(tiles)] == [v[0] for v in llava.caption(tiles)]
    finally:
        one.close()


def test_fingerprint(llava_dir, llava):
    fp = llava.fingerprint
    assert fp.startswith("transformers|") and "rev=local-" in fp and "prompt=rsrt-1" in fp
    assert "max_new_tokens=6" in fp and "variants=2" in fp
    other = make_captioner(f"transformers:{llava_dir}", variants=2, max_new_tokens=7, device="cpu")
    again = make_captioner(f"transformers:{llava_dir}", variants=2, max_new_tokens=6, device="cpu", batch_size=1)
    try:
        assert other.fingerprint != fp
        assert again.fingerprint == fp  # batch size and device are not part of the cache key
    finally:
        other.close()
        again.close()


def test_cuda_oom_halves_the_batch(llava, tiles, monkeypatch):
    real = llava.model.generate
    seen = []

    def generate(**kwargs):
        n = kwargs["input_ids"].shape[0]
        seen.append(n)
        if n > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(**kwargs)

    monkeypatch.setattr(llava.model, "generate", generate)
    monkeypatch.setattr(llava, "batch_size", 4)
    monkeypatch.setattr(llava, "max_rows", 8)
    out = llava.caption(tiles)
    assert len(out) == 3 and all(len(v) == 2 for v in out)
    # 3 tiles x 2 variants fused into one call of 6 rows, then halved to 4, 2, 1 rows per call.
    assert seen[:4] == [6, 4, 2, 1] and llava.batch_size == 1 and llava.max_rows == 1
    monkeypatch.setattr(llava, "batch_size", 1)

    def always(**kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(llava.model, "generate", always)
    with pytest.raises(CaptionerError, match="out of GPU memory even with batch size 1"):
        llava.caption(tiles[:1])


def test_missing_model_folder_and_offline_hub_id(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelUnavailableError, match="no_such_model"):
        make_captioner(f"transformers:{missing}")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(ModelUnavailableError, match="example-org/not-downloaded-vlm"):
        make_captioner("transformers:example-org/not-downloaded-vlm")
    empty = tmp_path / "empty_model"
    empty.mkdir()
    with pytest.raises(ModelUnavailableError, match="empty_model"):
        make_captioner(f"transformers:{empty}")


def test_plain_captioner_without_chat_template(tmp_path, tiles):
    """GIT/BLIP-style models: image only, variants from seeded sampling, text parsed as free text."""
    folder = build_tiny_git(tmp_path / "tiny_git")
    cap = make_captioner(f"transformers:{folder}", variants=3, max_new_tokens=5, device="cpu")
    try:
        assert not cap.chat and type(cap.model).__name__ == "GitForCausalLM"
        assert "prompt=plain-caption" in cap.fingerprint
        out = cap.caption(tiles[:2])
        assert [len(v) for v in out] == [3, 3]
        assert all(v.one_sentence and v.caption for variants in out for v in variants)
        assert len({v.one_sentence for v in out[1]}) > 1  # sampled variants differ
        assert cap.caption(tiles[:2]) == out
    finally:
        cap.close()
