"""Tiny random-weight models of every VLM family the README names, saved as a hub folder would be.

Each builder uses the family's real config, model and processor classes (only the sizes are
tiny), a byte-level BPE tokenizer trained here with the family's special tokens, and a chat
template of our own written in the family's real format (turn markers, image placeholders, a
default system turn where the real template has one). The folder is then loaded back through
`make_captioner("transformers:<folder>")`, exactly the path a user's hub id takes.

`FAMILIES` maps a family name to (builder, image marker token): the marker occurs once per image
in a row's prompt, which is how tests count images per row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from tiny_vlm import _CORPUS, build_tiny_git, build_tiny_llava

_QWEN_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]

# Chat templates in each family's real format (shortened; the content loop is the same idea).
_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}IMAGE"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
)
VICUNA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    + _CONTENT.replace("IMAGE", "<image>\n") + "\n{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST] "
    + _CONTENT.replace("IMAGE", "<image>\n") + " [/INST]{% else %}" + _CONTENT.replace("IMAGE", "")
    + "{{ eos_token }}{% endif %}{% endfor %}"
)
QWEN_TEMPLATE = (  # Qwen2-VL / Qwen2.5-VL add a default system turn when there is none
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    + _CONTENT.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>")
    + "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN3_TEMPLATE = QWEN_TEMPLATE.replace(
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}", "")
IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    + _CONTENT.replace("IMAGE", "<image>") + "<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
GEMMA3_TEMPLATE = (  # Gemma 3 has no system role: a system message is folded into the first user turn
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{% if message['role'] == 'assistant' %}model{% else %}{{ message['role'] }}{% endif %}\n"
    + _CONTENT.replace("IMAGE", "<start_of_image>") + "<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def bpe_tokenizer(specials: list[str], *, bos: str, eos: str, pad: str, vocab_size: int = 360, **named: str) -> Any:
    """A byte-level BPE tokenizer trained on the tiny corpus with `specials` as single tokens.

    `named` adds named special tokens (image_token, boi_token, ...) the family's processor reads.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    ordered = list(dict.fromkeys(["<pad>", "<unk>", bos, eos, pad, *specials]))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=ordered,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, unk_token="<unk>",
                                   extra_special_tokens=named)


def _llama(tok: Any, **over: Any) -> dict:
    cfg = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    cfg.update(over)
    return cfg


def _save(folder: Path, model: Any, processor: Any, tok: Any) -> Path:
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


class _Parts:
    """A processor saved the way hub repositories of video-capable families are: its parts side by side.

    (transformers cannot build those processors without torchvision, nor save one without its
    video processor; a hub folder is just these files.)
    """

    def __init__(self, cls_name: str, image_processor: Any, tokenizer: Any, chat_template: str, *, legacy: bool = False,
                 **options: Any) -> None:
        self.cls_name, self.image_processor, self.tokenizer = cls_name, image_processor, tokenizer
        self.chat_template, self.options, self.legacy = chat_template, options, legacy

    def save_pretrained(self, folder: Path) -> None:
        import json

        self.image_processor.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        if self.legacy:  # the 2024 layout (Qwen2-VL's hub repos): chat_template.json, no processor_config.json
            (folder / "chat_template.json").write_text(json.dumps({"chat_template": self.chat_template}))
            return
        (folder / "chat_template.jinja").write_text(self.chat_template)
        (folder / "processor_config.json").write_text(json.dumps({"processor_class": self.cls_name, **self.options}))


def _start(folder: str | Path, seed: int) -> Path:
    import torch

    torch.manual_seed(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def build_tiny_llava_next(folder: str | Path, *, seed: int = 0) -> Path:
    """LLaVA-NeXT: CLIP tower, anyres tiling over a grid of pinpoints (per-image token counts)."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
    )

    folder = _start(folder, seed)
    tok = bpe_tokenizer(["<image>"], bos="<s>", eos="</s>", pad="<pad>", image_token="<image>")
    pins = [[30, 60], [60, 30], [60, 60]]
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              image_size=30, patch_size=6, projection_dim=32)
    config = LlavaNextConfig(vision_config=vision, text_config=LlamaConfig(**_llama(tok)), image_grid_pinpoints=pins,
                             image_token_index=tok.convert_tokens_to_ids("<image>"),
                             vision_feature_select_strategy="default", vision_feature_layer=-1)
    model = LlavaNextForConditionalGeneration(config).eval()
    ip = LlavaNextImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30},
                                 image_grid_pinpoints=pins)
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tok, chat_template=MISTRAL_TEMPLATE, patch_size=6,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1,
                              image_token="<image>")
    return _save(folder, model, proc, tok)


def _qwen_vision_sizes() -> dict:
    return dict(patch_size=4, temporal_patch_size=2, spatial_merge_size=2)


def _qwen_image_processor(cls_name: str = "Qwen2VLImageProcessor", patch: int = 4) -> Any:
    import transformers

    cls = getattr(transformers, cls_name)
    factor = patch * 2
    return cls(patch_size=patch, temporal_patch_size=2, merge_size=2,
               size={"shortest_edge": (2 * factor) ** 2, "longest_edge": (4 * factor) ** 2})


def build_tiny_qwen2_vl(folder: str | Path, *, seed: int = 0, v25: bool = False) -> Path:
    """Qwen2-VL (or Qwen2.5-VL): dynamic resolution, `image_grid_thw`, M-RoPE, a default system turn."""
    import transformers

    folder = _start(folder, seed)
    tok = bpe_tokenizer(_QWEN_TOKENS, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>")
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in (("image_token_id", "<|image_pad|>"),
           ("video_token_id", "<|video_pad|>"), ("vision_start_token_id", "<|vision_start|>"),
           ("vision_end_token_id", "<|vision_end|>"))}
    text = _llama(tok, rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0})
    if v25:
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, window_size=16,
                      fullatt_block_indexes=[1], **_qwen_vision_sizes())
        cfg_cls, model_cls, proc_cls = "Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"
    else:
        vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, **_qwen_vision_sizes())
        cfg_cls, model_cls, proc_cls = "Qwen2VLConfig", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"
    config = getattr(transformers, cfg_cls)(text_config=text, vision_config=vision, **ids)
    model = getattr(transformers, model_cls)(config).eval()
    proc = _Parts(proc_cls, _qwen_image_processor(), tok, QWEN_TEMPLATE, legacy=not v25)
    return _save(folder, model, proc, tok)


def build_tiny_qwen3_vl(folder: str | Path, *, seed: int = 0) -> Path:
    """Qwen3-VL: DeepStack vision features, interleaved M-RoPE, no default system turn."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    folder = _start(folder, seed)
    tok = bpe_tokenizer(_QWEN_TOKENS, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>")
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in (("image_token_id", "<|image_pad|>"),
           ("video_token_id", "<|video_pad|>"), ("vision_start_token_id", "<|vision_start|>"),
           ("vision_end_token_id", "<|vision_end|>"))}
    text = _llama(tok, head_dim=8, rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2],
                                                    "mrope_interleaved": True, "rope_theta": 10000.0})
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32,
                  num_position_embeddings=64, deepstack_visual_indexes=[0], patch_size=4, temporal_patch_size=2,
                  spatial_merge_size=2)
    config = Qwen3VLConfig(text_config=text, vision_config=vision, **ids)
    model = Qwen3VLForConditionalGeneration(config).eval()
    proc = _Parts("Qwen3VLProcessor", _qwen_image_processor(), tok, QWEN3_TEMPLATE)
    return _save(folder, model, proc, tok)


def build_tiny_idefics3(folder: str | Path, *, seed: int = 0, smolvlm: bool = False) -> Path:
    """Idefics3 (SmolVLM's architecture) or SmolVLM2: SigLIP tower, pixel shuffle, image splitting."""
    import transformers

    folder = _start(folder, seed)
    grid = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tok = bpe_tokenizer(["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>", *grid],
                        bos="<|im_start|>", eos="<end_of_utterance>", pad="<pad>", vocab_size=420)
    image_size, patch = 16, 4
    seq = (image_size // patch) ** 2 // 4
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=image_size, patch_size=patch)
    prefix = "SmolVLM" if smolvlm else "Idefics3"
    config = getattr(transformers, f"{prefix}Config")(
        vision_config=vision, text_config=_llama(tok), image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=2, pad_token_id=tok.pad_token_id)
    model = getattr(transformers, f"{prefix}ForConditionalGeneration")(config).eval()
    ip = getattr(transformers, f"{prefix}ImageProcessor")(
        do_image_splitting=True, size={"longest_edge": 2 * image_size}, max_image_size={"longest_edge": image_size})
    proc: Any = _Parts(f"{prefix}Processor", ip, tok, IDEFICS3_TEMPLATE, image_seq_len=seq)
    if not smolvlm:  # Idefics3's processor has no video part: build it for real
        proc = transformers.Idefics3Processor(image_processor=ip, tokenizer=tok, image_seq_len=seq,
                                              chat_template=IDEFICS3_TEMPLATE)
    return _save(folder, model, proc, tok)


def build_tiny_gemma3(folder: str | Path, *, seed: int = 0) -> Path:
    """Gemma 3: SigLIP tower with average pooling to a fixed token count, no system role, a sliding-window
    layer and a global one (the real model's 5:1 pattern, shortened; a window alone would hide the image)."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor

    folder = _start(folder, seed)
    tok = bpe_tokenizer(["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"],
                        bos="<bos>", eos="<eos>", pad="<pad>", image_token="<image_soft_token>",
                        boi_token="<start_of_image>", eoi_token="<end_of_image>")
    text = _llama(tok, head_dim=8, sliding_window=64, query_pre_attn_scalar=8, layer_types=["sliding_attention", "full_attention"])
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=16,
                  patch_size=4)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                          image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
                          boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
                          eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"))
    model = Gemma3ForConditionalGeneration(config).eval()
    # Gemma 3 initialises its image projection to zeros (pretrained weights replace it): a tiny random
    # model would then never see the image, and no test could tell one tile from another.
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.5)
    ip = Gemma3ImageProcessor(size={"height": 16, "width": 16})
    proc = Gemma3Processor(image_processor=ip, tokenizer=tok, chat_template=GEMMA3_TEMPLATE, image_seq_length=4)
    return _save(folder, model, proc, tok)


def build_tiny_blip(folder: str | Path, *, seed: int = 0) -> Path:
    """BLIP captioning (ViT encoder + BERT decoder with cross-attention), no chat template."""
    from tiny_vlm import _wordpiece_tokenizer
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = _start(folder, seed)
    tok = _wordpiece_tokenizer()
    config = BlipConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, encoder_hidden_size=32, max_position_embeddings=128,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id,
                         eos_token_id=tok.sep_token_id),
        # BLIP's vision config initialises with std 1e-10 (pretrained weights replace it): every image
        # would give the same features. 0.02 is the text side's default.
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=30, patch_size=6, initializer_range=0.02),
        projection_dim=32,
    )
    model = BlipForConditionalGeneration(config).eval()
    model.generation_config.bos_token_id = tok.cls_token_id
    proc = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 30, "width": 30}), tokenizer=tok)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.sep_token_id
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return folder


def sharpen(folder: Path, gain: float, names: tuple[str, ...] = ("",)) -> Path:
    """Multiply the saved weight matrices whose names contain one of `names` by `gain`.

    Random weights at the usual init (std 0.02) make a model whose greedy answer is decided by the long
    RSRT prompt: the few image tokens barely move the logits, so three different tiles get one answer and
    a test could not tell whether a row was given its own tile. Larger weights make the answer depend on
    the image (the family test asserts three tiles give three answers).
    """
    from safetensors.torch import load_file, save_file

    path = Path(folder) / "model.safetensors"
    tensors = load_file(str(path))
    for name, t in tensors.items():
        if t.dim() >= 2 and t.is_floating_point() and any(k in name for k in names):
            tensors[name] = t * gain
    save_file(tensors, str(path), metadata={"format": "pt"})
    return Path(folder)


def _sharp(build: Callable[..., Path], gain: float = 8.0, names: tuple[str, ...] = ("",), **options: Any) -> Callable[..., Path]:
    return lambda folder: sharpen(build(folder, **options), gain, names)


#: family -> (builder, marker token counted once per image in a row's prompt; None: no chat prompt)
FAMILIES: dict[str, tuple[Callable[..., Path], Any]] = {
    "llava": (_sharp(build_tiny_llava), None),
    "llava_next": (_sharp(build_tiny_llava_next), None),
    "qwen2_vl": (_sharp(build_tiny_qwen2_vl), "<|vision_start|>"),
    "qwen2_5_vl": (_sharp(build_tiny_qwen2_vl, v25=True), "<|vision_start|>"),
    "qwen3_vl": (_sharp(build_tiny_qwen3_vl), "<|vision_start|>"),
    "idefics3": (_sharp(build_tiny_idefics3), "<global-img>"),
    "smolvlm": (_sharp(build_tiny_idefics3, smolvlm=True), "<global-img>"),
    "gemma3": (build_tiny_gemma3, "<start_of_image>"),  # its image projection is initialised in the builder
    "git": (_sharp(build_tiny_git), None),
    "blip": (_sharp(build_tiny_blip, names=("crossattention",)), None),  # its decoder sees the image only there
}
