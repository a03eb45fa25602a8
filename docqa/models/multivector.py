"""The sentence-transformers loader: any ``MultiVectorEncoder`` checkpoint behind docqa's Retriever.

Used for checkpoints that carry a sentence-transformers configuration (``modules.json`` /
``config_sentence_transformers.json``) and for retriever families docqa has no native class for
(remote-code families among them, once ``--trust-remote-code`` is given). Pages go through the
encoder's document side and queries through its query side, with the prompts the checkpoint
defines, exactly as ``encode_document`` / ``encode_query`` would run them; the batch is split the
same way (prepare on the preprocessing thread, forward on the model's), so the pipeline overlaps
them as it does for the native loader.

One incompatibility is bridged here: ColModernVBert's processor (transformers 5.24) returns only
pixel values when called with images alone and no query augmentation when called with text alone,
where sentence-transformers 6.3 calls it that way; its ``process_images`` / ``process_queries`` do
what the model was trained on. The processor is probed at load time and, only where its plain call
differs from those methods, called through them (``_route_retrieval_calls``).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ModelLoadError
from .checkpoints import CheckpointFacts, load_error, short_reason

_PROBE_TEXT = "probe"


def load_encoder(
    source: str,
    model: str,
    facts: CheckpointFacts,
    device: str,
    dtype: torch.dtype,
    local_files_only: bool,
    trust_remote_code: bool,
) -> Any:
    """The ``MultiVectorEncoder`` of ``source`` on ``device`` in ``dtype`` (a one-line ModelLoadError if not)."""
    try:
        from sentence_transformers import MultiVectorEncoder
    except ImportError as error:
        raise ModelLoadError(
            f"cannot load retriever {model!r}: it needs sentence-transformers"
            " (pip install 'sentence-transformers>=6.2')"
        ) from error
    try:
        encoder = MultiVectorEncoder(
            source,
            device=device,
            local_files_only=local_files_only,
            trust_remote_code=trust_remote_code,
            model_kwargs={"dtype": dtype},
        )
    except Exception as error:
        raise load_error("retriever", model, short_reason(error), "--model") from error
    encoder.eval()
    processor = retrieval_processor(encoder)
    if processor is not None:
        _route_retrieval_calls(processor)
    return encoder


def backbone(encoder: Any) -> torch.nn.Module | None:
    """The transformers model inside the encoder's first module (what an engine can convert)."""
    first = encoder[0] if len(encoder) else None
    return getattr(first, "model", None)


def retrieval_processor(encoder: Any) -> Any:
    first = encoder[0] if len(encoder) else None
    return getattr(first, "processor", None)


def prompt(encoder: Any, side: str) -> str | None:
    """The prompt the checkpoint defines for ``side`` ("query" | "document"), as encode_query /
    encode_document pick it (documents: the first of "document", "passage", "corpus")."""
    names = ("query",) if side == "query" else ("document", "passage", "corpus")
    for name in names:
        if name in encoder.prompts:
            return encoder.prompts[name] or None
    return None


def prepare(encoder: Any, inputs: list[Any], side: str) -> dict[str, Any]:
    """The encoder's features for ``inputs`` (pages or query strings) on ``side``: CPU work only."""
    return encoder.preprocess(inputs, prompt=prompt(encoder, side), task=side)


def forward(encoder: Any, features: dict[str, Any], side: str, keep_padding: bool = False) -> list[np.ndarray]:
    """Forward prepared features: one float32 array per input, rows where the scoring mask is set
    (``keep_padding``: every token row, for grounding a single page)."""
    from sentence_transformers.util import batch_to_device

    if encoder.token_pooling is not None or encoder.truncate_dim is not None:
        raise ModelLoadError(
            "this sentence-transformers checkpoint pools or truncates its vectors;"
            " docqa does not run such checkpoints yet"
        )
    device = next(encoder.parameters()).device
    with torch.inference_mode():
        output = encoder(batch_to_device(features, device), task=side)
    embeddings = output["token_embeddings"]
    if keep_padding:
        return [row.float().cpu().numpy() for row in embeddings]
    masks = output["attention_mask"].bool()
    return [row[mask].float().cpu().numpy() for row, mask in zip(embeddings, masks)]


def _route_retrieval_calls(processor: Any) -> None:
    """Call ``processor`` through its ``process_images`` / ``process_queries`` where its plain call
    differs from them (see the module docstring); leaves every other processor as it is."""
    if not (hasattr(processor, "process_images") and hasattr(processor, "process_queries")):
        return
    page = Image.new("RGB", (64, 64), "white")
    images_differ = "input_ids" not in processor(images=[page])
    plain = processor(text=[_PROBE_TEXT])["input_ids"]
    queries = processor.process_queries([_PROBE_TEXT])["input_ids"]
    text_differs = not torch.equal(torch.as_tensor(plain), torch.as_tensor(queries))
    if not (images_differ or text_differs):
        return
    base = type(processor)
    inside = threading.local()  # process_images / process_queries call the processor themselves

    def call(self: Any, images: Any = None, text: Any = None, **kwargs: Any) -> Any:
        method = None
        if not getattr(inside, "active", False):
            if images is not None and text is None and images_differ:
                method, given = base.process_images, images
            elif text is not None and images is None and text_differs:
                method, given = base.process_queries, text
        if method is None:
            return base.__call__(self, images=images, text=text, **kwargs)
        inside.active = True
        try:
            return method(self, given, **_flat(kwargs))
        finally:
            inside.active = False

    processor.__class__ = type(base.__name__, (base,), {"__call__": call, "__module__": base.__module__})


def _flat(kwargs: dict[str, Any]) -> dict[str, Any]:
    """sentence-transformers passes per-modality dicts (text_kwargs=..., images_kwargs=...); the
    retrieval methods take them as they are, minus empty ones."""
    return {key: value for key, value in kwargs.items() if value not in (None, {})}
