"""Build random-weight ColPali-family retriever checkpoints offline, as real checkpoint folders.

Each builder makes the real transformers model class from a config object and the real processor
with a tokenizer trained here in milliseconds, then saves both with ``save_pretrained``, so the
folder loads exactly like a hub checkpoint (``AutoConfig`` + model class + processor class).

``size="tiny"`` keeps each processor's real geometry (tile size, patch size, tokens per tile), so
vector counts per page match the real model, while the networks are a layer or two wide enough to
run a page in tens of milliseconds. ``size="real"`` builds the published architecture at full size
(random weights) for benchmarks; it is never built in the default test suite.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tokenizers import Tokenizer, processors
from transformers import (
    ColModernVBertConfig,
    ColModernVBertForRetrieval,
    ColModernVBertProcessor,
    ColPaliConfig,
    ColPaliForRetrieval,
    ColPaliProcessor,
    ColQwen2Config,
    ColQwen2ForRetrieval,
    ColQwen2Processor,
    GemmaTokenizer,
    Idefics3ImageProcessorPil,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2Tokenizer,
    Qwen2VLImageProcessorPil,
    SiglipImageProcessorPil,
)

from helpers.tiny_tokenizers import QWEN_VL_SPECIALS, byte_level_bpe, train_bpe, vocab_and_merges

SIZES = ("tiny", "real")
_VOCAB_SIZE = 600


def _modernbert_tokenizer(special_tokens: list[str]) -> Tokenizer:
    """A trained byte-level BPE that wraps each text in [CLS] ... [SEP], as ModernBERT's does."""
    tokenizer = train_bpe(byte_level_bpe(), special_tokens, _VOCAB_SIZE)
    cls_sep = [(token, tokenizer.token_to_id(token)) for token in ("[CLS]", "[SEP]")]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=cls_sep
    )
    return tokenizer


def _colmodernvbert(size: str) -> tuple[PreTrainedModel, ProcessorMixin]:
    """ColModernVBert: SigLIP tiles of 512 px, pixel shuffle to 64 tokens per tile, ModernBERT text."""
    specials = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "<|begin_of_text|>",
        "<end_of_utterance>",
        "<fake_token_around_image>",
        "<image>",
        "<global-img>",
    ]
    specials += [f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_modernbert_tokenizer(specials),
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        additional_special_tokens=specials[5:],
        model_input_names=["input_ids", "attention_mask"],
    )
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 2048}, max_image_size={"longest_edge": 512}, do_image_splitting=True
    )
    processor = ColModernVBertProcessor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=64)
    ids = {
        name: tokenizer.convert_tokens_to_ids(token)
        for name, token in [("pad", "[PAD]"), ("cls", "[CLS]"), ("sep", "[SEP]"), ("image", "<image>")]
    }
    text_ids = dict(
        pad_token_id=ids["pad"],
        bos_token_id=ids["cls"],
        cls_token_id=ids["cls"],
        eos_token_id=ids["sep"],
        sep_token_id=ids["sep"],
    )
    if size == "real":
        config = ColModernVBertConfig(
            vlm_config={
                "image_token_id": ids["image"],
                "text_config": {"model_type": "modernbert", **text_ids},
                "vision_config": {"model_type": "siglip_vision_model", "image_size": 512, "patch_size": 16},
            }
        )
    else:
        config = ColModernVBertConfig(
            embedding_dim=32,
            vlm_config={
                "image_token_id": ids["image"],
                "pixel_shuffle_factor": 2,
                "text_config": {
                    "model_type": "modernbert",
                    "vocab_size": len(tokenizer),
                    "hidden_size": 32,
                    "intermediate_size": 64,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 2,
                    "local_attention": 64,
                    **text_ids,
                },
                "vision_config": {
                    "model_type": "siglip_vision_model",
                    "image_size": 512,
                    "patch_size": 32,
                    "hidden_size": 32,
                    "intermediate_size": 64,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                },
            },
        )
    return ColModernVBertForRetrieval(config), processor


def _colqwen2(size: str) -> tuple[PreTrainedModel, ProcessorMixin]:
    """ColQwen2: Qwen2-VL (14 px patches merged 2x2 into one token per 28 px square)."""
    specials = QWEN_VL_SPECIALS
    vocab, merges = vocab_and_merges(train_bpe(Qwen2Tokenizer().backend_tokenizer, specials, _VOCAB_SIZE))
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, additional_special_tokens=specials[1:])
    image_processor = Qwen2VLImageProcessorPil(min_pixels=4 * 28 * 28, max_pixels=768 * 28 * 28)
    processor = ColQwen2Processor(image_processor=image_processor, tokenizer=tokenizer)
    token_ids = {
        key: tokenizer.convert_tokens_to_ids(token)
        for key, token in [
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        ]
    }
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if size == "real":  # Qwen2-VL-2B, as in vidore/colqwen2-v1.0-hf
        text = {
            "vocab_size": 151936,
            "hidden_size": 1536,
            "intermediate_size": 8960,
            "num_hidden_layers": 28,
            "num_attention_heads": 12,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        }
        vision = {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4}
        embedding_dim = 128
    else:
        text = {
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        }
        vision = {"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2}
        embedding_dim = 32
    config = ColQwen2Config(
        embedding_dim=embedding_dim,
        vlm_config={
            "model_type": "qwen2_vl",
            **token_ids,
            "text_config": {**text, "bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos},
            "vision_config": {**vision, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        },
    )
    return ColQwen2ForRetrieval(config), processor


def _colpali(size: str) -> tuple[PreTrainedModel, ProcessorMixin]:
    """ColPali: PaliGemma (SigLIP on a fixed 448 px square, Gemma text); the processor adds <loc>/<seg> tokens."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<image>"]
    vocab, merges = vocab_and_merges(train_bpe(GemmaTokenizer().backend_tokenizer, specials, _VOCAB_SIZE))
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges)
    patch_size = 14 if size == "real" else 56
    image_processor = SiglipImageProcessorPil(size={"height": 448, "width": 448})
    image_processor.image_seq_length = (448 // patch_size) ** 2
    processor = ColPaliProcessor(image_processor=image_processor, tokenizer=tokenizer)
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if size == "real":  # PaliGemma-3B at 448 px, as in vidore/colpali-v1.3-hf
        text = {
            "vocab_size": 257216,
            "hidden_size": 2048,
            "intermediate_size": 16384,
            "num_hidden_layers": 18,
            "num_attention_heads": 8,
            "num_key_value_heads": 1,
            "head_dim": 256,
        }
        vision = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16}
        embedding_dim, projection_dim = 128, 2048
    else:
        vocab_size = len(processor.tokenizer)  # only now: the processor added 1152 <loc>/<seg> tokens
        text = {
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
        }
        vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
        embedding_dim, projection_dim = 32, 32
    config = ColPaliConfig(
        embedding_dim=embedding_dim,
        vlm_config={
            "model_type": "paligemma",
            "image_token_index": processor.image_token_id,
            "vocab_size": text["vocab_size"],
            "projection_dim": projection_dim,
            "hidden_size": text["hidden_size"],
            "text_config": {"model_type": "gemma", **text, **ids},
            "vision_config": {
                "model_type": "siglip_vision_model",
                **vision,
                "image_size": 448,
                "patch_size": patch_size,
                "vision_use_head": False,
            },
        },
    )
    return ColPaliForRetrieval(config), processor


_BUILDERS: dict[str, Callable[[str], tuple[PreTrainedModel, ProcessorMixin]]] = {
    "colmodernvbert": _colmodernvbert,
    "colqwen2": _colqwen2,
    "colpali": _colpali,
}
FAMILIES = tuple(_BUILDERS)


def build_retriever_checkpoint(family: str, out_dir: Path, size: str = "tiny") -> Path:
    """Save a random-weight ``family`` retriever (model + processor) into ``out_dir``; return the folder.
    The weights are seeded, so every session gets the same checkpoint."""
    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
    import torch

    torch.manual_seed(0)  # the same weights every session: a fidelity check must not pass or fail by draw
    model, processor = _BUILDERS[family](size)
    out_dir = Path(out_dir)
    model.eval().save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
