"""Every VLM family the README names, end to end through the real `transformers` captioner (issue 16).

Each family is a tiny random-weight model built from its real config, model and processor classes,
saved to a folder like a hub download and loaded back by `make_captioner("transformers:<folder>")`.
On real Sentinel-2 and NEON tiles with K=3 fused variants it must: prompt every row with the RSRT
instructions and exactly one image, parse the (noise) answers into the three fields or fall back to
the spectral description, store them, give batch-1 greedy answers equal to batch-N ones (and with
the vision tower reused), and keep the caption cache key across reloads. Non-VLMs and models that
need remote code are refused in one line.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from tiny_vlm_families import FAMILIES, bpe_tokenizer
from transformers.utils import is_torchvision_available

from plugin.core.captioners import make_captioner
from plugin.core.captioners.parsing import parse_variants
from plugin.core.captioners.prompts import SYSTEM, variant_prompt
from plugin.core.captioners.spectral import spectral_facts
from plugin.core.captioners.vlm_families import NO_STATIC_CACHE, TESTED, cache_for
from plugin.core.errors import EngineError, ModelUnavailableError
from plugin.core.rasters.raster import open_raster, sentinel2_vrt
from plugin.core.rasters.tiling import TilingParams, plan_tiles, read_tile
from plugin.core.store.store import SearchIndex
from plugin.core.types import BandMap, CaptionVariant

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("one_torch_thread")]

K = 3
PLAIN = {"git", "blip"}  # captioners without a chat template: image only, no prompt
VIDEO_CAPABLE = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "smolvlm"}  # processors with a video part
#: families whose vision tower runs once per tile with reuse_vision (vlm_batching.reusable_vision); the README says so
REUSES_VISION = {"llava"}


@pytest.fixture(scope="module")
def real_tiles(s2_dir: Path, neon_tif: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list, list]:
    """Two Sentinel-2 tiles (ocean, farmland; R,G,B,NIR) and one NEON 10 cm RGB tile, with their rasters."""
    s2 = open_raster(sentinel2_vrt(str(s2_dir), str(tmp_path_factory.mktemp("s2") / "s2.vrt")), BandMap(1, 2, 3, 4))
    refs = {(r.window.col_off, r.window.row_off): r for r in plan_tiles(s2, TilingParams(tile_size=128))}
    neon = open_raster(str(neon_tif))
    tiles = [read_tile(s2, refs[(1664, 1024)]), read_tile(s2, refs[(256, 256)]),
             read_tile(neon, plan_tiles(neon, TilingParams(tile_size=200))[0], out_size=100)]
    assert [t.has_nir for t in tiles] == [True, True, False]
    return tiles, [s2, neon]


def _load(folder: Path, **options):
    return make_captioner(f"transformers:{folder}", variants=K, max_new_tokens=6, device="cpu", **options)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def fam(request, tmp_path_factory):
    name = request.param
    build, marker = FAMILIES[name]
    folder = build(tmp_path_factory.mktemp(name))
    cap = _load(folder, batch_size=3)
    yield SimpleNamespace(name=name, folder=folder, marker=marker, cap=cap)
    cap.close()


def _record_generate(cap, monkeypatch) -> list[dict]:
    calls: list[dict] = []
    real = cap.model.generate

    def generate(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(cap.model, "generate", generate)
    return calls


def _images_in_row(ids: list[int], cap, marker) -> int:
    """Images in one prompt row: marker tokens, or runs of the image token (LLaVA families)."""
    if marker is not None:
        return ids.count(cap._tokenizer.convert_tokens_to_ids(marker))
    cfg = cap.model.config
    image_id = getattr(cfg, "image_token_id", None) or cfg.image_token_index
    return sum(1 for i, t in enumerate(ids) if t == image_id and (i == 0 or ids[i - 1] != image_id))


def test_family_loads_and_every_row_sees_the_rsrt_prompt_and_one_image(fam, real_tiles, monkeypatch):
    tiles, _ = real_tiles
    cap = fam.cap
    assert fam.name in TESTED and cap.model_type == fam.name
    assert cap.chat == (fam.name not in PLAIN) and cap.device == "cpu"
    if fam.name in VIDEO_CAPABLE and not is_torchvision_available():  # loaded for images only
        assert cap.processor.video_processor is None
    calls = _record_generate(cap, monkeypatch)
    out = cap.caption(tiles)
    assert len(calls) == 1  # 3 tiles x 3 variants fused into one generate call
    inputs = calls[0]
    rows = K * len(tiles)
    if "image_grid_thw" in inputs:  # Qwen: patches of all images flattened, one grid per image
        assert inputs["image_grid_thw"].shape[0] == rows
    else:
        assert inputs["pixel_values"].shape[0] == rows
    if "image_sizes" in inputs:  # LLaVA-NeXT anyres: one size per image
        assert inputs["image_sizes"].shape[0] == rows
    if fam.name in PLAIN:
        assert "input_ids" not in inputs and "prompt=plain-caption" in cap.fingerprint
    else:
        assert inputs["input_ids"].shape[0] == rows and "prompt=rsrt-" in cap.fingerprint
        pad = cap._tokenizer.pad_token_id
        assert inputs["input_ids"][:, 0].tolist().count(pad) > 0  # left padding: prompts differ in length
        for row in inputs["input_ids"].tolist():
            text = cap._tokenizer.decode(row, skip_special_tokens=False)
            assert SYSTEM in text and any(variant_prompt(k) in text for k in range(K)), text[:300]
            assert _images_in_row(row, cap, fam.marker) == 1
    assert [len(v) for v in out] == [K] * len(tiles)


def _blank_first_row(cap, monkeypatch) -> None:
    """The first row of every generate call answers nothing (all pad tokens): the fallback path."""
    real = cap.model.generate

    def generate(**kwargs):
        ids = real(**kwargs).clone()
        start = kwargs["input_ids"].shape[1] if cap.chat else 0
        ids[0, start:] = cap._tokenizer.pad_token_id
        return ids

    monkeypatch.setattr(cap.model, "generate", generate)


def test_answers_become_three_field_variants_and_are_stored(fam, real_tiles, tmp_path, monkeypatch):
    """Noise answers parse as free text, an empty one falls back to the spectral description; NIR facts appended."""
    tiles, rasters = real_tiles
    cap = fam.cap
    _blank_first_row(cap, monkeypatch)
    raw = cap.generate_texts(tiles)
    out = cap.caption(tiles)
    paths = {"parsed": 0, "fallback": 0}
    for tile, answers, variants in zip(tiles, raw, out):
        facts = spectral_facts(tile) if tile.has_nir else ""
        for k, (answer, v) in enumerate(zip(answers, variants)):
            assert isinstance(v, CaptionVariant) and v.one_sentence and v.caption
            parsed = parse_variants(answer)
            base = parsed[0] if parsed else cap._fallback.describe_tile(tile, k)
            paths["parsed" if parsed else "fallback"] += 1
            assert v == CaptionVariant(base.one_sentence, base.feature, f"{base.caption} {facts}".strip())
            assert ("Near-infrared measurements" in v.caption) == tile.has_nir
    assert paths["fallback"] >= 1 and sum(paths.values()) == K * len(tiles), (paths, raw)
    idx = SearchIndex.open(str(tmp_path / "idx"), create=True, embedder_fingerprint="test", dim=8)
    try:
        for info in rasters:
            idx.upsert_raster(info, cap.fingerprint, {})
            items = [(t.ref, v, np.random.default_rng(0).random((K, 8))) for t, v in zip(tiles, out)
                     if t.ref.raster_id == info.raster_id]
            idx.add_tiles(info.raster_id, cap.fingerprint, items)
        stored = idx.cached_variants([t.ref.tile_id for t in tiles], cap.fingerprint)
        # A tile with a fallback variant is stored flagged and is not a cache hit (the next update
        # asks the VLM again); every other tile reads back exactly as captioned.
        fell_back = {t.ref.tile_id for t, vs in zip(tiles, out) if any(v.fallback for v in vs)}
        assert fell_back and set(stored) == {t.ref.tile_id for t in tiles} - fell_back
        assert [stored[t.ref.tile_id] for t in tiles if t.ref.tile_id in stored] == \
            [vs for t, vs in zip(tiles, out) if t.ref.tile_id not in fell_back]
    finally:
        idx.close()


def test_three_different_tiles_get_three_different_answers(fam, real_tiles):
    """The tiny models see the image (tests/core/tiny_vlm_families.sharpen): without that, the row
    comparisons below would pass even if a batch gave a row another tile's image."""
    tiles, _ = real_tiles
    greedy = [v[0] for v in fam.cap.generate_texts(tiles)]
    assert len(set(greedy)) == len(tiles), greedy


def test_batch_one_equals_batch_n_and_the_cache_key_survives_a_reload(fam, real_tiles):
    tiles, _ = real_tiles
    one = _load(fam.folder, batch_size=1, max_rows=1)
    try:
        assert one.fingerprint == fam.cap.fingerprint
        assert one.generate_texts(tiles) == fam.cap.generate_texts(tiles)  # every variant row, not only the greedy one
    finally:
        one.close()


def test_vision_reuse_is_taken_where_the_family_allows_it_and_gives_the_same_answers(fam, real_tiles, monkeypatch):
    tiles, _ = real_tiles
    cap = fam.cap
    plain = cap.generate_texts(tiles)
    base = cap.model.base_model
    encoded: list[int] = []
    if hasattr(base, "get_image_features"):
        real = base.get_image_features

        @functools.wraps(real)  # generate reads the signature
        def count(*args, **kwargs):
            grid = kwargs.get("image_grid_thw")  # Qwen: patches of all images flattened, one grid row per image
            pv = kwargs.get("pixel_values", args[0] if args else None)
            encoded.append(int(grid.shape[0]) if grid is not None else int(pv.shape[0]))
            return real(*args, **kwargs)

        monkeypatch.setattr(base, "get_image_features", count)
    cap.reuse_vision = True
    try:
        reused = cap.generate_texts(tiles)
    finally:
        cap.reuse_vision = False
    assert reused == plain
    if fam.name in REUSES_VISION:  # the vision tower ran once per tile, not once per variant row
        assert sum(encoded) == len(tiles), encoded
    elif fam.name not in PLAIN:  # the plain path: every row's image goes through the tower inside generate
        assert sum(encoded) >= K * len(tiles), encoded


def test_static_kv_cache_gives_the_same_answers_or_is_refused(fam, real_tiles):
    """The static KV cache (the CUDA default) on every family; GIT/BLIP decode with the dynamic one."""
    tiles, _ = real_tiles
    if fam.name in NO_STATIC_CACHE:
        with pytest.raises(EngineError, match=rf"\({fam.name}\) cannot decode with a static KV cache"):
            _load(fam.folder, cache="static")
        assert cache_for("m", fam.name, "static", asked=False) == "dynamic"  # what cache='auto' on CUDA becomes
        return
    static = _load(fam.folder, batch_size=3, cache="static")
    try:
        assert static.cache == "static" and fam.cap.cache == "dynamic"
        assert static.generate_texts(tiles) == fam.cap.generate_texts(tiles)  # every variant row
    finally:
        static.close()


# -- refusals ---------------------------------------------------------------------------------
def _text_lm(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = bpe_tokenizer([], bos="<s>", eos="</s>", pad="<pad>")
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _image_classifier(folder: Path) -> Path:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    ViTForImageClassification(ViTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        image_size=16, patch_size=8, num_labels=3)).save_pretrained(folder)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


def _remote_code(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "acme_vlm", "architectures": ["AcmeVLMForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_acme.AcmeConfig", "AutoModelForCausalLM": "modeling_acme.AcmeVLM"},
    }))
    return folder


@pytest.mark.parametrize("make, message", [
    (_text_lm, r"is a text-only language model \(LlamaForCausalLM\): it cannot see images"),
    (_image_classifier, r"\(ViTForImageClassification\) is not an image-to-text model"),
    (_remote_code, r"needs trust_remote_code: its model code is not part of transformers"),
])
def test_non_vlms_and_remote_code_models_are_refused_in_one_line(tmp_path, make, message):
    folder = make(tmp_path / "model")
    with pytest.raises(ModelUnavailableError, match=message) as err:
        make_captioner(f"transformers:{folder}", device="cpu")
    assert "\n" not in str(err.value) and "'" + str(folder) + "'" in str(err.value)


def test_a_vlm_folder_without_its_image_processor_is_refused(llava_dir, tmp_path):
    import shutil

    folder = tmp_path / "no_image_processor"
    shutil.copytree(llava_dir, folder)
    for name in ("processor_config.json", "preprocessor_config.json"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(ModelUnavailableError, match=r"\(llava\) has no image processor"):
        make_captioner(f"transformers:{folder}", device="cpu")
