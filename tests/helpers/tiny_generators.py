"""Build random-weight answer-model checkpoints offline (no hub access needed).

``build_generator_checkpoint(family, folder)`` writes a checkpoint of one of ``FAMILIES``: SmolVLM
v1 (``"idefics3"``), SmolVLM2 (``"smolvlm"``), Qwen2-VL, Qwen2.5-VL or Qwen3-VL: model, tokenizer
(byte-level BPE trained here in a fraction of a second), image processor and chat template, all via
``save_pretrained``, so they load through the same code path as a downloaded checkpoint.

Sizes: ``"tiny"`` (tests: a few thousand parameters, milliseconds per token), and for idefics3
``"real"`` / ``"real500m"``: the HuggingFaceTB/SmolVLM-256M-Instruct / -500M-Instruct
architectures with random weights, for latency benchmarks only.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# SmolVLM2's template: SmolVLM's, taking string contents and <video> too (transformers' own copy).
from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE as SMOLVLM2_CHAT_TEMPLATE

from helpers.tiny_tokenizers import QWEN_VL_SPECIALS, byte_level_bpe, train_bpe, vocab_and_merges

_VOCAB_SIZE = 320  # learned tokens besides the special ones

# The chat template shipped with HuggingFaceTB/SmolVLM-*-Instruct (chat_template.json).
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# The chat template shipped with Qwen/Qwen2-VL-*-Instruct (Qwen2.5-VL's and Qwen3-VL's take the same messages).
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
_SIGLIP_BASE_512 = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=512, patch_size=16
)
_IDEFICS3_SIZES = {
    "tiny": dict(
        text=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
        ),
        # SmolVLM's 512 px tiles of 64 tokens: real prompt lengths
        vision=dict(_SIGLIP_BASE_512, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        vocab_size=None,
    ),
    "real": dict(  # HuggingFaceTB/SmolVLM-256M-Instruct
        text=dict(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            head_dim=64,
        ),
        vision=_SIGLIP_BASE_512,
        vocab_size=49280,
    ),
    "real500m": dict(  # HuggingFaceTB/SmolVLM-500M-Instruct
        text=dict(
            hidden_size=960,
            intermediate_size=2560,
            num_hidden_layers=32,
            num_attention_heads=15,
            num_key_value_heads=5,
            head_dim=64,
        ),
        vision=_SIGLIP_BASE_512,
        vocab_size=49280,
    ),
}
_IDEFICS3_SCALE_FACTOR = 4  # pixel shuffle: 32x32 patches of a 512 px tile -> 64 tokens
_IDEFICS3_LONGEST_EDGE = 2048


def _padded_vocab(n_tokens: int, wanted: int | None) -> int:
    """Model vocab size: the real one when given (must hold the tokenizer), else n rounded up to 8."""
    size = wanted if wanted is not None else -(-n_tokens // 8) * 8
    if size < n_tokens:
        raise ValueError(f"vocab_size {size} is smaller than the tokenizer ({n_tokens} tokens)")
    return size


def _build_idefics3(out_dir: Path, size: str, smolvlm: bool = False) -> None:
    """SmolVLM v1 (Idefics3 classes), or with ``smolvlm`` SmolVLM2's own classes (model type
    "smolvlm"; its processor also takes video, which docqa never sends)."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        PreTrainedTokenizerFast,
    )

    spec = _IDEFICS3_SIZES[size]
    row_col = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<fake_token_around_image>",
        "<image>",
        "<global-img>",
        "<end_of_utterance>",
        *row_col,
    ]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(byte_level_bpe(), specials, _VOCAB_SIZE + len(specials)),
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        extra_special_tokens=specials[3:],
    )
    vision = spec["vision"]
    tile = vision["image_size"]
    image_seq_len = (tile // vision["patch_size"]) ** 2 // _IDEFICS3_SCALE_FACTOR**2
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": _IDEFICS3_LONGEST_EDGE},
        max_image_size={"longest_edge": tile},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
        chat_template=SMOLVLM_CHAT_TEMPLATE,
    )
    ids = {
        t: tokenizer.convert_tokens_to_ids(t) for t in ("<image>", "<|im_start|>", "<end_of_utterance>", "<|im_end|>")
    }
    text = dict(
        spec["text"],
        model_type="llama",
        vocab_size=_padded_vocab(len(tokenizer), spec["vocab_size"]),
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        bos_token_id=ids["<|im_start|>"],
        eos_token_id=ids["<end_of_utterance>"],
        pad_token_id=ids["<|im_end|>"],
        tie_word_embeddings=False,
    )
    config_class, model_class, vision_type = (Idefics3Config, Idefics3ForConditionalGeneration, "idefics3_vision")
    if smolvlm:
        from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

        config_class, model_class, vision_type = SmolVLMConfig, SmolVLMForConditionalGeneration, "smolvlm_vision"
    config = config_class(
        text_config=text,
        vision_config=dict(vision, model_type=vision_type),
        scale_factor=_IDEFICS3_SCALE_FACTOR,
        image_token_id=ids["<image>"],
        pad_token_id=ids["<|im_end|>"],
        tie_word_embeddings=False,
    )
    model = model_class(config).eval()
    model.generation_config.bos_token_id = ids["<|im_start|>"]
    model.generation_config.eos_token_id = ids["<end_of_utterance>"]
    model.generation_config.pad_token_id = ids["<|im_end|>"]
    model.save_pretrained(out_dir)
    if smolvlm:  # SmolVLMProcessor wants a video processor (torchvision): save the parts, as for Qwen2-VL
        tokenizer.save_pretrained(out_dir)
        from transformers import SmolVLMImageProcessorPil

        SmolVLMImageProcessorPil(
            **{key: getattr(image_processor, key) for key in ("size", "max_image_size", "image_mean", "image_std")}
        ).save_pretrained(out_dir)
        (out_dir / "chat_template.jinja").write_text(SMOLVLM2_CHAT_TEMPLATE)
        (out_dir / "processor_config.json").write_text(
            json.dumps({"processor_class": "SmolVLMProcessor", "image_seq_len": image_seq_len}, indent=2)
        )
        return
    processor.save_pretrained(out_dir)


# Each Qwen-VL generation: its config class, its tiny vision tower (``hidden_size`` is Qwen2-VL's
# merger output and the later ones' vision width; ``_QWEN_VISION`` is what those two share), and
# what its text model and rope add to the shared settings. Qwen2-VL: 14 px patches; Qwen2.5-VL:
# windowed vision attention; Qwen3-VL: 16 px patches, learned position embeddings, deepstack
# features, interleaved M-RoPE.
_QWEN_HIDDEN, _QWEN_HEADS = 32, 2  # head_dim 16: mrope_section [2, 3, 3] must sum to head_dim / 2
_QWEN_VISION = dict(depth=2, hidden_size=_QWEN_HIDDEN, intermediate_size=64, num_heads=2, out_hidden_size=_QWEN_HIDDEN)
_QWEN_VL: dict[str, dict] = {
    "qwen2_vl": dict(
        config="Qwen2VLConfig",
        vision=dict(depth=1, embed_dim=16, hidden_size=_QWEN_HIDDEN, num_heads=2, mlp_ratio=2, patch_size=14),
    ),
    "qwen2_5_vl": dict(
        config="Qwen2_5_VLConfig",
        vision=dict(_QWEN_VISION, patch_size=14, window_size=56, fullatt_block_indexes=[1]),
    ),
    "qwen3_vl": dict(
        config="Qwen3VLConfig",
        vision=dict(_QWEN_VISION, patch_size=16, num_position_embeddings=256, deepstack_visual_indexes=[0]),
        text=dict(head_dim=_QWEN_HIDDEN // _QWEN_HEADS),
        rope=dict(mrope_interleaved=True),
    ),
}
QWEN_VL_FAMILIES = tuple(_QWEN_VL)
FAMILIES = ("idefics3", "smolvlm", *QWEN_VL_FAMILIES)


def _build_qwen_vl(out_dir: Path, family: str) -> None:
    """Any Qwen-VL generation in ``_QWEN_VL``; the model and processor classes are the ones
    transformers maps its config class to, as for a downloaded checkpoint."""
    import transformers
    from transformers import AutoModelForImageTextToText, Qwen2Tokenizer, Qwen2VLImageProcessorPil
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    spec = _QWEN_VL[family]
    config_class = getattr(transformers, spec["config"])
    specials = QWEN_VL_SPECIALS
    vocab, merges = vocab_and_merges(train_bpe(byte_level_bpe(), specials, _VOCAB_SIZE + len(specials)))
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>", extra_special_tokens=specials[1:]
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3], **spec.get("rope", {})}
    config = config_class(
        text_config=dict(
            vocab_size=_padded_vocab(len(tokenizer), None),
            hidden_size=_QWEN_HIDDEN,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=_QWEN_HEADS,
            num_key_value_heads=1,
            max_position_embeddings=4096,
            rope_parameters=rope,
            **spec.get("text", {}),
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(spec["vision"], spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    model = AutoModelForImageTextToText.from_config(config).eval()
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out_dir)
    # The processor also wants a video processor, which needs torchvision. Save the parts a real
    # checkpoint ships instead: tokenizer, image processor, chat template and the processor class name.
    tokenizer.save_pretrained(out_dir)
    patch = spec["vision"]["patch_size"]
    unit = 2 * patch  # one merged token per unit x unit square
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": unit * unit, "longest_edge": unit * unit * 64}, patch_size=patch, merge_size=2
    )
    image_processor.save_pretrained(out_dir)
    (out_dir / "chat_template.jinja").write_text(QWEN2_VL_CHAT_TEMPLATE)
    processor_class = PROCESSOR_MAPPING[config_class].__name__
    (out_dir / "processor_config.json").write_text(json.dumps({"processor_class": processor_class}, indent=2))


def build_generator_checkpoint(family: str, out_dir: Path, size: str = "tiny") -> Path:
    """Write a random-weight answer-model checkpoint of ``family`` (one of ``FAMILIES``) to ``out_dir``.

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
    elif family == "smolvlm":
        if size != "tiny":
            raise ValueError("smolvlm checkpoints are only built at size 'tiny'")
        _build_idefics3(out_dir, size, smolvlm=True)
    elif family in QWEN_VL_FAMILIES:
        if size != "tiny":
            raise ValueError(f"{family} checkpoints are only built at size 'tiny'")
        _build_qwen_vl(out_dir, family)
    else:
        raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
    return out_dir
