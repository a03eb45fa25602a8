"""Byte-level BPE tokenizers trained offline in milliseconds, for the tiny test checkpoints."""

from __future__ import annotations

import json

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CORPUS = [
    "The quarterly report shows revenue of 4.2 million dollars, up 12 percent from last year.",
    "Figure 3 shows the distribution of response times across all regions.",
    "Invoice number 2041 is due on 14 March 2024; the total amount is 1,250.00 EUR.",
    "What is the maximum operating temperature of the pump described on page 4?",
    "Table 2: annual energy consumption (MWh) by building, 2019-2023.",
    "Answer the question using only the pages shown. Cite each page as [report.pdf, page 4].",
    "If the pages do not contain the answer, say that it was not found in the pages.",
    "Describe the image. Question: Query: which chart compares costs and benefits?",
    "0123456789 ,.;:!?()[]{}<>-_/\\'\"@#$%&*+= abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]

# The special tokens of Qwen2-VL's tokenizer (and its successors'): text, then vision markers.
QWEN_VL_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def byte_level_bpe() -> Tokenizer:
    """An untrained BPE with byte-level pre-tokenizer and decoder."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_bpe(tokenizer: Tokenizer, special_tokens: list[str], vocab_size: int) -> Tokenizer:
    """Train `tokenizer`'s pipeline on CORPUS (deterministic); returns it."""
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer=trainer)
    return tokenizer


def vocab_and_merges(tokenizer: Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab and merges (as tuples, which transformers' BPE tokenizer classes require)."""
    state = json.loads(tokenizer.to_str())["model"]
    return state["vocab"], [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in state["merges"]]
