"""Build random-weight answer-model checkpoints offline (no hub access needed).

``build_generator_checkpoint("idefics3", folder)`` writes a SmolVLM-style Idefics3 checkpoint and
``build_generator_checkpoint("qwen2_vl", folder)`` a Qwen2-VL one: model, tokenizer (byte-level BPE
trained here in a fraction of a second), image processor and chat template, all via
``save_pretrained``, so they load through the same code path as a downloaded checkpoint.

Sizes: ``"tiny"`` (tests: a few thousand parameters, milliseconds per token), and for idefics3
``"real"`` / ``"real500m"``: the HuggingFaceTB/SmolVLM-256M-Instruct / -500M-Instruct
architectures with random weights, for latency benchmarks only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tiny_tokenizers import byte_level_bpe, train_bpe, vocab_and_merges

_VOCAB_SIZE = 320  # learned tokens besides the special ones

# The chat template shipped with HuggingFaceTB/SmolVLM-*-Instruct (chat_template.json).
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# The chat template shipped with Qwen/Qwen2-VL-*-Instruct.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# SmolVLM-style Idefics3 text (SmolLM2) and vision (SigLIP base, patch 16, 512 px tiles) sizes.
_IDEFICS3_SIZES = {
    "tiny": dict(
        text=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=8),
        vision=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                    image_size=512, patch_size=16),  # SmolVLM's 512 px tiles of 64 tokens: real prompt lengths
        scale_factor=4, longest_edge=2048, vocab_size=None,
    ),
    "real": dict(  # HuggingFaceTB/SmolVLM-256M-Instruct
        text=dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, head_dim=64),
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    image_size=512, patch_size=16),
        scale_factor=4, longest_edge=2048, vocab_size=49280,
    ),
    "real500m": dict(  # HuggingFaceTB/SmolVLM-500M-Instruct
        text=dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                  num_key_value_heads=5, head_dim=64),
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    image_size=512, patch_size=16),
        scale_factor=4, longest_edge=2048, vocab_size=49280,
    ),
}


def _padded_vocab(n_tokens: int, wanted: int | None) -> int:
    """Model vocab size: the real one when given (must hold the tokenizer), else n rounded up to 8."""
    size = wanted if wanted is not None else -(-n_tokens // 8) * 8
    if size < n_tokens:
        raise ValueError(f"vocab_size {size} is smaller than the tokenizer ({n_tokens} tokens)")
    return size


def _build_idefics3(out_dir: Path, size: str) -> None:
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        PreTrainedTokenizerFast,
    )

    spec = _IDEFICS3_SIZES[size]
    row_col = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>",
                "<global-img>", "<end_of_utterance>", *row_col]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(byte_level_bpe(), specials, _VOCAB_SIZE + len(specials)),
        bos_token="<|im_start|>", eos_token="<end_of_utterance>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>", extra_special_tokens=specials[3:],
    )
    vision = spec["vision"]
    tile = vision["image_size"]
    image_seq_len = (tile // vision["patch_size"]) ** 2 // spec["scale_factor"] ** 2
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": spec["longest_edge"]}, max_image_size={"longest_edge": tile},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=image_seq_len, chat_template=SMOLVLM_CHAT_TEMPLATE)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<image>", "<|im_start|>", "<end_of_utterance>",
                                                            "<|im_end|>")}
    text = dict(spec["text"], model_type="llama", vocab_size=_padded_vocab(len(tokenizer), spec["vocab_size"]),
                max_position_embeddings=8192, rms_norm_eps=1e-5, rope_parameters={"rope_type": "default",
                                                                                  "rope_theta": 100000.0},
                bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<end_of_utterance>"],
                pad_token_id=ids["<|im_end|>"], tie_word_embeddings=False)
    config = Idefics3Config(text_config=text, vision_config=dict(vision, model_type="idefics3_vision"),
                            scale_factor=spec["scale_factor"], image_token_id=ids["<image>"],
                            pad_token_id=ids["<|im_end|>"], tie_word_embeddings=False)
    model = Idefics3ForConditionalGeneration(config).eval()
    model.generation_config.bos_token_id = ids["<|im_start|>"]
    model.generation_config.eos_token_id = ids["<end_of_utterance>"]
    model.generation_config.pad_token_id = ids["<|im_end|>"]
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def _build_qwen2_vl(out_dir: Path) -> None:
    from transformers import Qwen2Tokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
    vocab, merges = vocab_and_merges(train_bpe(byte_level_bpe(), specials, _VOCAB_SIZE + len(specials)))
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                               extra_special_tokens=specials[1:])
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    hidden, heads = 32, 2  # head_dim 16: mrope_section must sum to head_dim / 2
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=_padded_vocab(len(tokenizer), None), hidden_size=hidden,
                         intermediate_size=64, num_hidden_layers=1, num_attention_heads=heads,
                         num_key_value_heads=1, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                          "mrope_section": [2, 3, 3]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=1, embed_dim=16, hidden_size=hidden, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out_dir)
    # Qwen2VLProcessor also wants a video processor, which needs torchvision. Save the parts a real
    # checkpoint ships instead: tokenizer, image processor, chat template and the processor class name.
    tokenizer.save_pretrained(out_dir)
    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": 28 * 28, "longest_edge": 28 * 28 * 64})
    image_processor.save_pretrained(out_dir)
    (out_dir / "chat_template.jinja").write_text(QWEN2_VL_CHAT_TEMPLATE)
    (out_dir / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}, indent=2))


def build_generator_checkpoint(family: str, out_dir: Path, size: str = "tiny") -> Path:
    """Write a random-weight answer-model checkpoint of ``family`` ("idefics3" or "qwen2_vl") to ``out_dir``.

    ``size``: "tiny" (tests), or for idefics3 "real" (SmolVLM-256M) / "real500m" (SmolVLM-500M).
    Returns ``out_dir``, loadable with ``Generator.load(str(out_dir))``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if family == "idefics3":
        if size not in _IDEFICS3_SIZES:
            raise ValueError(f"unknown idefics3 size {size!r}; choose from {sorted(_IDEFICS3_SIZES)}")
        _build_idefics3(out_dir, size)
    elif family == "qwen2_vl":
        if size != "tiny":
            raise ValueError("qwen2_vl checkpoints are only built at size 'tiny'")
        _build_qwen2_vl(out_dir)
    else:
        raise ValueError(f"unknown family {family!r}; choose 'idefics3' or 'qwen2_vl'")
    return out_dir
