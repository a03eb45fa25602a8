"""Retriever stage: page images and queries in, late-interaction multi-vectors out (ColPali family).

``Retriever`` is the one interface over two loaders, chosen from the checkpoint's files and config
(never its name; ``choose_loader``): transformers' native classes for the three families below, and
sentence-transformers' ``MultiVectorEncoder`` (docqa.models.multivector) for a checkpoint with a
sentence-transformers configuration or a ``*ForRetrieval`` family without a native class. This module
also owns the per-family resolution defaults, the page layout found from the processor
(``page_layout``), the refusal of code a checkpoint ships (``check_remote_code``) and the encoder
stamp an index records.

=============== ========================== ============== =========================================
family          model class                CPU / GPU edge page tokens
=============== ========================== ============== =========================================
colmodernvbert  ColModernVBertForRetrieval 1024 / 2048    512 px tiles + a global view
colqwen2        ColQwen2ForRetrieval       672 / 896      one per 28 px square (+ prompt)
colpali         ColPaliForRetrieval        448 / 448      a fixed 448 px square
=============== ========================== ============== =========================================

``image_edge`` is the one resolution knob: each page is resized so its longest edge is ``image_edge``
and the processor is set up not to go beyond it. Resolution is the biggest speed lever on a CPU, so
the CPU defaults stay low; on a GPU they go to the resolutions the models were trained for (2048 px
tiles; ColQwen2's 768-token budget). The per-page costs behind these defaults are in
benchmarks/RESULTS.md ("Figures from module docstrings").
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    ColModernVBertForRetrieval,
    ColModernVBertProcessor,
    ColPaliForRetrieval,
    ColPaliProcessor,
    ColQwen2ForRetrieval,
    ColQwen2Processor,
    PreTrainedConfig,
    PreTrainedModel,
    ProcessorMixin,
)
from transformers.utils import logging as hf_logging

from ..build import TRANSFORMERS, EncoderStamp
from ..errors import RemoteCodeError, UnsupportedModelError
from ..inputs.render import fit_within
from .checkpoints import (
    CheckpointFacts,
    check_device,
    is_gpu,
    load_error,
    read_checkpoint,
    resolve,
    short_reason,
    torch_dtype,
)
from .engines import TORCH, prepare_on_engine

SENTENCE_TRANSFORMERS = "sentence-transformers"
LOADERS = (TRANSFORMERS, SENTENCE_TRANSFORMERS)
DEFAULT_CPU_RETRIEVER = "ModernVBERT/colmodernvbert-merged"
DEFAULT_GPU_RETRIEVER = "vidore/colqwen2-v1.0-hf"

# Families without a native class: pages are fitted within this edge, the processor sizes them from there.
OTHER_CPU_IMAGE_EDGE, OTHER_GPU_IMAGE_EDGE = 672, 896
_VOLATILE_CONFIG_KEYS = frozenset({"transformers_version", "dtype", "torch_dtype"})


def _tiles_up_to_edge(processor: ProcessorMixin, image_edge: int) -> int:
    """Idefics3-style tiling: cap the resize at ``image_edge``, snapped to a whole number of tiles."""
    image_processor = processor.image_processor
    tile = image_processor.max_image_size["longest_edge"]
    edge = max(tile, round(image_edge / tile) * tile)
    image_processor.size = {"longest_edge": edge}
    return edge


def _pixels_up_to_edge(processor: ProcessorMixin, image_edge: int) -> int:
    """Qwen2-VL dynamic resolution: allow every page that fits in an ``image_edge`` square (min_pixels stays)."""
    image_processor = processor.image_processor
    size = {key: value for key, value in dict(image_processor.size).items() if value is not None}
    image_processor.size = {**size, "longest_edge": image_edge * image_edge}
    return image_edge


def _fixed_square(processor: ProcessorMixin, image_edge: int) -> int:
    """PaliGemma sees a fixed square whatever the page size; ``image_edge`` only sizes what it is given."""
    return image_edge


@dataclass(frozen=True)
class _Family:
    model_class: type[PreTrainedModel]
    processor_class: type[ProcessorMixin]
    cpu_image_edge: int
    gpu_image_edge: int
    set_image_edge: Callable[[ProcessorMixin, int], int]
    forward_kwargs: dict[str, object] = field(default_factory=dict)


_FAMILIES: dict[str, _Family] = {
    "colmodernvbert": _Family(ColModernVBertForRetrieval, ColModernVBertProcessor, 1024, 2048, _tiles_up_to_edge),
    "colqwen2": _Family(ColQwen2ForRetrieval, ColQwen2Processor, 672, 896, _pixels_up_to_edge, {"use_cache": False}),
    "colpali": _Family(ColPaliForRetrieval, ColPaliProcessor, 448, 448, _fixed_square, {"use_cache": False}),
}


def default_retriever(device: str) -> str:
    """The retriever checkpoint to use when the user names none: small on a CPU, strongest on a GPU."""
    return DEFAULT_GPU_RETRIEVER if is_gpu(device) else DEFAULT_CPU_RETRIEVER


def default_image_edge(family: str, device: str) -> int:
    """Default longest page edge in pixels for ``family`` on ``device`` (see the module docstring)."""
    if family not in _FAMILIES:
        raise UnsupportedModelError(f"unknown retriever family {family!r}; supported: {', '.join(_FAMILIES)}")
    spec = _FAMILIES[family]
    return spec.gpu_image_edge if is_gpu(device) else spec.cpu_image_edge


def _family_spec(family: str, model: str) -> _Family:
    if family not in _FAMILIES:
        raise UnsupportedModelError(
            f"{model} is not a retriever docqa can use: its model type is {family!r}, supported are "
            f"{', '.join(_FAMILIES)} (e.g. {DEFAULT_CPU_RETRIEVER} or {DEFAULT_GPU_RETRIEVER})"
        )
    return _FAMILIES[family]


def config_hash(config: PreTrainedConfig) -> str:
    """sha256 of the config's canonical JSON, without keys that change from load to load."""

    def stable(value: object) -> object:
        if isinstance(value, dict):
            return {
                key: stable(item)
                for key, item in value.items()
                if not key.startswith("_") and key not in _VOLATILE_CONFIG_KEYS
            }
        if isinstance(value, list):
            return [stable(item) for item in value]
        return value

    canonical = json.dumps(stable(json.loads(config.to_json_string(use_diff=False))), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def choose_loader(facts: CheckpointFacts, model: str, requested: str | None = None) -> str:
    """How to load a checkpoint, from its files and config (never its name): sentence-transformers
    when it carries a sentence-transformers configuration or is a retriever family docqa has no
    native class for (``*ForRetrieval`` architectures, remote code among them); else transformers."""
    if requested is not None and requested not in LOADERS:
        raise UnsupportedModelError(f"unknown retriever loader {requested!r}; use one of {', '.join(LOADERS)}")
    native = facts.model_type in _FAMILIES and not facts.remote_code
    st_able = facts.sentence_transformers or any(a.endswith("ForRetrieval") for a in facts.architectures)
    if requested == TRANSFORMERS:
        if not native:
            _family_spec(facts.model_type or "unknown", model)  # raises: no native class for it
        return TRANSFORMERS
    if requested == SENTENCE_TRANSFORMERS:
        return SENTENCE_TRANSFORMERS
    if facts.sentence_transformers or (not native and st_able):
        return SENTENCE_TRANSFORMERS
    _family_spec(facts.model_type or "unknown", model)  # a checkpoint that is no retriever: one line
    return TRANSFORMERS


def check_remote_code(facts: CheckpointFacts, model: str, trust_remote_code: bool) -> None:
    """Refuse a checkpoint that ships code of its own unless the user said to trust it."""
    if facts.remote_code and not trust_remote_code:
        raise RemoteCodeError(
            f"{model} runs code of its own ({', '.join(facts.remote_code)}); pass --trust-remote-code"
            " if you trust it (trust_remote_code=True in Python)"
        )


def page_layout(processor: Any, config: Any = None) -> str:
    """How a family's processor lays a page's image tokens out, found from the processor itself:
    "tiles" (Idefics3-style tiles named by <row_r_col_c> tokens, plus a global view), "grid" (one
    dynamic grid reported as image_grid_thw, merged ``merge_size`` x ``merge_size``), "square" (a
    fixed square image, one run of n x n tokens), or "" when none of these holds (grounding then
    says it cannot draw this family)."""
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None or getattr(processor, "image_token_id", None) is None:
        return ""
    if getattr(image_processor, "merge_size", None) and "image_grid_thw" in getattr(
        image_processor, "model_input_names", ()
    ):
        return "grid"
    tokenizer = getattr(processor, "tokenizer", None)
    if (
        getattr(image_processor, "do_image_splitting", False)
        and tokenizer is not None
        and tokenizer.convert_tokens_to_ids("<row_1_col_1>") not in (None, tokenizer.unk_token_id)
    ):
        return "tiles"
    size = getattr(image_processor, "size", None) or {}
    if size.get("height") and size.get("width") and getattr(processor, "image_seq_length", None):
        side = round(int(processor.image_seq_length) ** 0.5)
        return "square" if side * side == int(processor.image_seq_length) else ""
    return ""


def _set_image_edge(family: str, processor: ProcessorMixin | None, image_edge: int) -> int:
    """Apply the resolution knob where the family's processor has one; other families see pages
    fitted within ``image_edge`` and keep their processor's own sizing."""
    if family in _FAMILIES and processor is not None:
        return _FAMILIES[family].set_image_edge(processor, image_edge)
    return image_edge


class Retriever:
    """A loaded late-interaction retriever: encodes pages and queries to L2-normalised multi-vectors.

    One interface whatever loaded it (``stamp.loader``): the native transformers classes, or a
    sentence-transformers ``MultiVectorEncoder`` (:mod:`docqa.models.multivector`). Safe to share
    between threads: forward passes take turns (one model instance serves a whole server;
    concurrent callers queue rather than load a second copy).
    """

    def __init__(self, model: Any, processor: ProcessorMixin | None, stamp: EncoderStamp) -> None:
        self._model = model  # the *ForRetrieval model, or the MultiVectorEncoder
        self.processor: Any = processor  # exposed for callers that map vectors back to image regions
        self._forward_kwargs = _FAMILIES[stamp.family].forward_kwargs if stamp.family in _FAMILIES else {}
        self.stamp = stamp
        self._lock = threading.Lock()

    @property
    def _st(self) -> bool:
        return self.stamp.loader == SENTENCE_TRANSFORMERS

    @classmethod
    def load(
        cls,
        model: str,
        device: str | None = None,
        dtype: str | None = None,
        image_edge: int | None = None,
        engine: str | None = None,
        loader: str | None = None,
        trust_remote_code: bool = False,
    ) -> Retriever:
        """Load a retriever from a local checkpoint folder or a hub id (cache first; fails fast offline).

        ``device`` defaults to :func:`~docqa.models.checkpoints.default_device`, ``dtype`` to float32 on CPU and bfloat16 on
        CUDA, ``image_edge`` to :func:`default_image_edge` for the checkpoint's family. For
        colmodernvbert ``image_edge`` is snapped to a whole number of tiles (512 px for the real
        model); the stamp records the value actually used. ``loader`` (None: chosen from the
        checkpoint's files, see :func:`choose_loader`) forces "transformers" or "sentence-transformers".
        A checkpoint with code of its own needs ``trust_remote_code=True`` (RemoteCodeError otherwise).
        """
        device = check_device(device)
        hf_logging.disable_progress_bar()  # docqa draws its own progress; keep stderr readable
        dtype_ = torch_dtype(dtype, device)
        source, local_files_only = resolve(model, "retriever", "--model")
        facts = read_checkpoint(source, model, local_files_only)
        check_remote_code(facts, model, trust_remote_code)
        chosen = choose_loader(facts, model, loader)
        try:
            config = AutoConfig.from_pretrained(
                source, local_files_only=local_files_only, trust_remote_code=trust_remote_code
            )
        except Exception as error:
            raise load_error("retriever", model, short_reason(error), "--model") from error
        family = config.model_type
        if chosen == TRANSFORMERS:
            spec = _family_spec(family, model)
            try:
                network: Any = spec.model_class.from_pretrained(source, dtype=dtype_, local_files_only=local_files_only)
                processor = spec.processor_class.from_pretrained(source, local_files_only=local_files_only)
            except Exception as error:
                raise load_error("retriever", model, short_reason(error), "--model") from error
            network.to(device).eval()
            runs: Any = network
        else:
            from . import multivector

            runs = multivector.load_encoder(source, model, facts, device, dtype_, local_files_only, trust_remote_code)
            network, processor = multivector.backbone(runs), multivector.retrieval_processor(runs)
        default_edge = (
            default_image_edge(family, device)
            if family in _FAMILIES
            else (OTHER_GPU_IMAGE_EDGE if is_gpu(device) else OTHER_CPU_IMAGE_EDGE)
        )
        edge = _set_image_edge(family, processor, image_edge or default_edge)
        if network is None:  # an encoder whose first module holds no transformers model: torch runs it
            runner, precision = prepare_on_engine(
                TORCH if engine is None else engine,
                device,
                "retriever",
                family,
                lambda chosen_engine: str(dtype_).removeprefix("torch."),
            )
        else:
            runner, precision = prepare_on_engine(
                engine,
                device,
                "retriever",
                family,
                lambda chosen_engine: chosen_engine.prepare_retriever(network, family, processor, source, edge),
            )
        dim = getattr(config, "embedding_dim", None)
        if dim is None and chosen == SENTENCE_TRANSFORMERS:
            dim = runs.get_embedding_dimension()
        if dim is None:
            raise UnsupportedModelError(f"{model}: its config names no embedding dimension")
        stamp = EncoderStamp(
            model=source,
            family=family,
            config_hash=config_hash(config),
            dtype=str(dtype_).removeprefix("torch."),
            image_edge=edge,
            dim=int(dim),
            engine=runner.name,
            precision=precision,
            loader=chosen,
            revision=facts.revision,
            trust_remote_code=bool(trust_remote_code),
            layout=page_layout(processor, config),
        )
        return cls(runs, processor, stamp)

    def encode_pages(self, images: list[Image.Image]) -> list[np.ndarray]:
        """One float32 ``(n_vectors_i, dim)`` array per page image, in one batched forward pass."""
        if not images:
            return []
        return self.encode_batch(self.preprocess_pages(images))

    def preprocess_pages(self, images: list[Image.Image]) -> dict[str, Any]:
        """The model inputs for a batch of page images (CPU work that can run off the model's thread)."""
        pages = [fit_within(image, self.stamp.image_edge) for image in images]
        if self._st:
            from . import multivector

            inputs = dict(multivector.prepare(self._model, pages, "document"))
        else:
            inputs = dict(self.processor.process_images(pages))
        if "pixel_attention_mask" in inputs:  # int64 from the processor, 8x the bytes of the bool the model tests
            inputs["pixel_attention_mask"] = inputs["pixel_attention_mask"].bool()
        return inputs

    def encode_batch(self, batch: dict[str, Any]) -> list[np.ndarray]:
        """Forward a batch made by :meth:`preprocess_pages`: one float32 array per page."""
        with self._lock:
            return self._embed(batch, "document")

    def encode_page_with_inputs(self, image: Image.Image) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
        """One page's ``(n_tokens, dim)`` vectors together with the processor inputs they came from.

        Every token is kept (one page, no padding), so row ``i`` of the vectors is token ``i`` of
        ``inputs["input_ids"][0]``: what grounding needs to know which rows are image patches and
        how the processor laid them out (tiles, merged grid, fixed square).
        """
        page = fit_within(image, self.stamp.image_edge)
        with self._lock:
            if self._st:
                from . import multivector

                inputs = multivector.prepare(self._model, [page], "document")
                return multivector.forward(self._model, dict(inputs), "document", keep_padding=True)[0], inputs
            inputs = self.processor.process_images([page])
            return self._embed(inputs, "document")[0], inputs

    def encode_queries(self, queries: list[str]) -> list[np.ndarray]:
        """One float32 ``(n_tokens_i, dim)`` array per query, in one batched forward pass."""
        if not queries:
            return []
        with self._lock:
            if self._st:
                from . import multivector

                return self._embed(multivector.prepare(self._model, list(queries), "query"), "query")
            return self._embed(self.processor.process_queries(list(queries)), "query")

    def score(self, query: np.ndarray, pages: list[np.ndarray]) -> np.ndarray:
        """Reference MaxSim of one query against each page (the processor's ``score_retrieval``, or
        the encoder's ``similarity`` for the sentence-transformers loader).

        Pages are scored one at a time: ``score_retrieval`` zero-pads a batch of pages, which lifts a
        query token whose best dot product is negative to 0 on every page shorter than the longest.
        """
        query_tensor = torch.from_numpy(query)
        if self._st:
            return np.array(
                [float(self._model.similarity([query_tensor], [torch.from_numpy(page)])[0, 0]) for page in pages],
                dtype=np.float32,
            )
        scores = [
            float(self.processor.score_retrieval([query_tensor], [torch.from_numpy(page)])[0, 0]) for page in pages
        ]
        return np.array(scores, dtype=np.float32)

    def _embed(self, batch: dict[str, Any], side: str) -> list[np.ndarray]:
        """Forward ``batch``; keep each row's vectors where the attention mask is set."""
        if self._st:
            from . import multivector

            return multivector.forward(self._model, dict(batch), side)
        inputs = {name: self._to_model(tensor) for name, tensor in batch.items() if name != "labels"}
        with torch.inference_mode():
            embeddings = self._model(**inputs, **self._forward_kwargs).embeddings
        keep = batch["attention_mask"].bool()
        return [row[mask].float().cpu().numpy() for row, mask in zip(embeddings.cpu(), keep)]

    def _to_model(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_floating_point():
            return tensor.to(device=self._model.device, dtype=self._model.dtype)
        return tensor.to(self._model.device)
