"""Builders of tiny random-weight VLMs saved to a folder, for tests that run real transformers code.

Each builder writes a complete model folder (config, safetensors weights, processor with its own
tokenizer trained here on a few sentences, and -- for chat models -- a chat template), so tests
load it exactly as a downloaded model: `from_pretrained(folder, local_files_only=True)`.
Outputs are gibberish; the point is that every code path (processor, chat template, batching with
left padding, generate, decode, parsing) is the real one. A few MB and about a second each.
"""

from __future__ import annotations

from pathlib import Path

_CORPUS = [
    "a satellite image of water, forest, fields, sand, beach, town, buildings, roads and rivers.",
    '{"one_sentence": "open ocean", "feature": "sandy beach in the north", "caption": "farmland with fields"}',
    "describe this remote sensing image. answer with one json object and nothing else.",
    "north south east west centre north-east north-west south-east south-west user assistant system",
    "marsh with channels, dense vegetation, bare soil, clouds, shadow, coastline, harbour, airport",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def _bpe_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer trained on `_CORPUS`, with <s>, </s>, <pad>, <unk> and <image>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<unk>", "<image>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    return fast


def build_tiny_llava(folder: str | Path, *, image_size: int = 30, patch_size: int = 6, seed: int = 0) -> Path:
    """A tiny LLaVA (CLIP vision tower + Llama text model) with a LlavaProcessor and chat template."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = _bpe_tokenizer()
    image_token_id = tok.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=image_size, patch_size=patch_size, projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_id,
        vision_feature_select_strategy="default", vision_feature_layer=-1, projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tok, chat_template=CHAT_TEMPLATE, patch_size=patch_size,
        num_additional_image_tokens=1, vision_feature_select_strategy="default", image_token="<image>",
    )
    processor.save_pretrained(folder)
    return folder


def _wordpiece_tokenizer():
    """A BERT WordPiece tokenizer over the corpus words and single characters (what GIT and BLIP use)."""
    from transformers import BertTokenizerFast

    words = sorted({w.strip('.,:;"{}') for line in _CORPUS for w in line.lower().split()} - {""})
    chars = sorted({c for line in _CORPUS for c in line.lower() if not c.isspace()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars] + words
    seen: set[str] = set()
    vocab = [t for t in vocab if not (t in seen or seen.add(t))]
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)


def build_tiny_git(folder: str | Path, *, image_size: int = 30, patch_size: int = 6, seed: int = 0) -> Path:
    """A tiny GIT captioner (CLIP-style vision encoder + BERT-style decoder), no chat template."""
    import torch
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM, GitProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = _wordpiece_tokenizer()
    config = GitConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "image_size": image_size, "patch_size": patch_size},
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=128, pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
    )
    torch.manual_seed(seed)
    model = GitForCausalLM(config).eval()
    with torch.no_grad():
        # Random weights mostly emit special tokens, which decode to nothing; push them down so the
        # tiny model writes (gibberish) words and the text path is exercised, not only the fallback.
        for tid in (tok.pad_token_id, tok.cls_token_id, tok.mask_token_id, tok.unk_token_id, tok.sep_token_id):
            model.output.bias[tid] = -20.0
    model.generation_config.bos_token_id = tok.cls_token_id
    model.generation_config.eos_token_id = tok.sep_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(folder)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
    )
    GitProcessor(image_processor=image_processor, tokenizer=tok).save_pretrained(folder)
    return folder
