"""The answer model: loading a checkpoint, its processor (and the workarounds some processors
need), the context budget, and streaming generation.

No retrieval happens here: the caller hands over the pages (``PageImage``) to answer from. The
prompt (docqa.answer.prompt) shows each page as an image preceded by its label
``[report.pdf, page 4]`` and asks for an answer grounded only in those pages, cited the same way
(docqa.answer.citations finds the citations). ``Generator`` wraps any transformers
image-text-to-text checkpoint whose processor has a chat template (SmolVLM/Idefics3, SmolVLM2,
Qwen2-VL, Qwen2.5-VL, Qwen3-VL, ...) and streams the answer as it is generated. A processor that also
takes video is loaded from its tokenizer and image processor alone (``_load_images_only_processor``):
its video processor needs torchvision, and docqa sends no video.

CPU default: SmolVLM-500M-Instruct (SmolVLM-256M-Instruct answers faster at lower quality: pass it
as ``--answer-model``); GPU default: Qwen2.5-VL-3B-Instruct. Pages are downscaled to
``max_image_edge`` (1024 px) because prefill grows with the number of 512 px tiles SmolVLM cuts a
page into. The latency figures behind these choices are in benchmarks/RESULTS.md ("Answer latency").
"""

from __future__ import annotations

import copy
import inspect
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from PIL import Image
from transformers.utils import logging as hf_logging

from ..answer.citations import find_citations
from ..answer.prompt import Answer, Conversation, PageImage, StreamTimes, build_messages
from ..errors import ModelLoadError, UnsupportedModelError
from ..inputs.render import fit_within
from .checkpoints import check_device, load_error, resolve, short_reason, torch_dtype
from .engines import prepare_on_engine

DEFAULT_CPU_ANSWER_MODEL = "HuggingFaceTB/SmolVLM-500M-Instruct"
DEFAULT_GPU_ANSWER_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
DEFAULT_MAX_IMAGE_EDGE = 1024
_STOP_WAIT_S = 0.5  # how long a stopped stream waits for generation to end at a token boundary
_BUDGET_QUESTION = "x " * 128  # the room a question gets when the context is budgeted (128 tokens or so)

_IDEFICS3_TYPES = {"idefics3", "smolvlm"}


def default_answer_model(device: str) -> str:
    """The answer model docqa uses when none is named: a small one on CPU, a stronger one on GPU."""
    return DEFAULT_GPU_ANSWER_MODEL if device.startswith("cuda") else DEFAULT_CPU_ANSWER_MODEL


class _NoVideoProcessor:
    """Stands where an images-only processor's video processor would be.

    Some processors read video settings in ``apply_chat_template`` whatever the conversation holds
    (SmolVLM2's reads ``video_processor.num_frames`` and ``.fps`` as frame-sampling defaults). None is
    what a processor sees when a user passes no such setting: no frames are sampled. Called with a
    video, it refuses: docqa sends page images only.
    """

    num_frames = None
    fps = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise UnsupportedModelError("docqa loads answer models for page images only; it sends no video")


def _load_images_only_processor(processor_class: Any, model: str, local_only: bool) -> Any:
    """Load ``processor_class`` without its video processor (which needs torchvision; docqa sends no video).

    transformers derives a processor's parts from its ``__init__`` signature, so a subclass whose
    ``__init__`` takes no ``video_processor`` is built from the tokenizer and image processor alone;
    the other saved settings (chat template, image_seq_len, ...) are passed on unchanged. Its
    ``video_processor`` is a ``_NoVideoProcessor``.
    """
    from transformers import AutoImageProcessor, AutoTokenizer

    def __init__(
        self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any
    ) -> None:
        processor_class.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    images_only = type(processor_class.__name__, (processor_class,), {"__init__": __init__})
    saved, _ = processor_class.get_processor_dict(model, local_files_only=local_only)
    params = inspect.signature(processor_class.__init__).parameters
    settings = {
        k: v
        for k, v in saved.items()
        if k in params and k not in ("self", "image_processor", "tokenizer", "video_processor")
    }
    processor = images_only(
        AutoImageProcessor.from_pretrained(model, local_files_only=local_only),
        AutoTokenizer.from_pretrained(model, local_files_only=local_only),
        **settings,
    )
    processor.video_processor = _NoVideoProcessor()
    return processor


class _TokenStreamer:
    """A generate() streamer that hands out new text after every token (not only at word ends).

    The full generated sequence is re-decoded each step and only the new suffix is queued, held
    back while it ends in an incomplete UTF-8 character; leading whitespace is dropped. The time
    from ``begin()`` (generate() called) to the first new token is the prefill, written to ``times``:
    generate() runs the vision encoder before it pushes the prompt, so the prompt's arrival is not
    where the prefill starts.
    """

    def __init__(self, tokenizer: Any, times: StreamTimes) -> None:
        self.tokenizer = tokenizer
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.ids: list[int] = []
        self.sent = 0
        self.prompt_seen = False
        self.started = time.perf_counter()
        self.times = times

    def begin(self) -> None:
        """Called just before generate(): the prefill starts here."""
        self.started = time.perf_counter()

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first pushes the prompt
            self.prompt_seen = True
            return
        if not self.ids:
            self.times.prefill_s = time.perf_counter() - self.started
        self.ids.extend(value.reshape(-1).tolist())
        self._flush(final=False)

    def end(self) -> None:
        self._flush(final=True)
        self.queue.put(None)

    def _flush(self, final: bool) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()
        if not final and text.endswith("\ufffd"):
            return
        if len(text) > self.sent:
            self.queue.put(text[self.sent :])
            self.sent = len(text)


@dataclass(frozen=True)
class ContextBudget:
    """How an answer model's context is spent: ``positions`` tokens in all (None: no known limit),
    ``prompt_tokens`` for the instructions and a question, ``page_tokens`` per page image at the
    largest size the generator sends (a square of ``max_image_edge``: the most tiles or patches)."""

    positions: int | None
    prompt_tokens: int
    page_tokens: int

    def pages_that_fit(self, max_new_tokens: int) -> int | None:
        """How many page images fit next to the prompt and an answer of ``max_new_tokens``."""
        if self.positions is None:
            return None
        return max(self.positions - self.prompt_tokens - max_new_tokens, 0) // self.page_tokens


class Generator:
    """A vision-language model that answers questions from page images, with streaming."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        model_id: str,
        max_image_edge: int,
        engine: str = "torch",
        precision: str = "float32",
    ) -> None:
        self.model = model
        self.processor = processor
        self.model_id = model_id
        self.max_image_edge = max_image_edge
        self._budget: ContextBudget | None = None
        self.engine = engine  # what runs the model (docqa.models.engines)
        self.precision = precision

    @classmethod
    def load(
        cls,
        model: str | os.PathLike,
        device: str | None = None,
        dtype: str | None = None,
        max_image_edge: int = DEFAULT_MAX_IMAGE_EDGE,
        engine: str | None = None,
    ) -> Generator:
        """Load an image-text-to-text checkpoint (hub id or folder) for answering.

        ``engine`` ("torch" | "openvino") defaults to the fast engine on a CPU where it runs the model.

        Raises ModelLoadError (naming the model, the reason and the fix) when it cannot be found or
        loaded, UnsupportedModelError when it is not an image-text-to-text model with a chat template.
        Hub ids are looked up in the local cache first; the network is tried only when reachable.
        """
        from transformers import AutoConfig

        if max_image_edge < 1:
            raise ValueError(f"max_image_edge must be a positive number of pixels, got {max_image_edge}")
        model = str(model)
        device = check_device(device)
        hf_logging.disable_progress_bar()  # docqa prints its own output; keep stderr readable
        dtype_ = torch_dtype(dtype, device)
        source, local_only = resolve(model, "answer model", "--answer-model")
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=local_only)
            net, processor = cls._load_parts(source, config, dtype_, local_only)
            net = net.to(device).eval()
        except ModelLoadError:
            raise
        except (OSError, ValueError, ImportError, KeyError, RuntimeError, TypeError, AssertionError) as exc:
            raise load_error("answer model", model, short_reason(exc), "--answer-model") from exc
        if config.model_type in _IDEFICS3_TYPES:  # the processor would otherwise upscale to 2048 px
            processor.image_processor.size = {"longest_edge": max_image_edge}
        runner, precision = prepare_on_engine(
            engine,
            device,
            "answer model",
            config.model_type,
            lambda chosen: chosen.prepare_generator(net, processor, source),
        )
        return cls(net, processor, model, max_image_edge, runner.name, precision)

    @staticmethod
    def _load_parts(model: str, config: Any, torch_dtype: Any, local_only: bool) -> tuple[Any, Any]:
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING
        from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

        if type(config) not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
            raise UnsupportedModelError(
                f"Answer model {model!r} is a {config.model_type!r} checkpoint, not an image-text-to-text "
                f"model. Fix: pass --answer-model with a vision-language chat model such as "
                f"{DEFAULT_CPU_ANSWER_MODEL}."
            )
        processor_class: Any = PROCESSOR_MAPPING.get(type(config), None)
        if processor_class is not None and "video_processor" in processor_class.get_attributes():
            processor = _load_images_only_processor(processor_class, model, local_only)
        else:
            processor = AutoProcessor.from_pretrained(model, local_files_only=local_only)
        if not getattr(processor, "chat_template", None):
            raise UnsupportedModelError(
                f"Answer model {model!r} has no chat template in its processor, so docqa cannot prompt it. "
                f"Fix: pass --answer-model with an instruction-tuned (chat) checkpoint."
            )
        net = AutoModelForImageTextToText.from_pretrained(model, dtype=torch_dtype, local_files_only=local_only)
        return net, processor

    def prepare(self, conversation: Conversation | None, question: str, pages: list[PageImage]) -> dict[str, Any]:
        """Model inputs (tensors on the model's device) for the prompt of ``question`` over ``pages``."""
        import torch

        messages = build_messages(conversation, question, pages)
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        images = [
            fit_within(part["image"], self.max_image_edge)
            for message in messages
            for part in message["content"]
            if part["type"] == "image"
        ]
        inputs = self.processor(text=[prompt], images=images or None, return_tensors="pt")
        device, dtype = self.model.device, self.model.dtype
        return {
            key: value.to(device, dtype) if value.is_floating_point() else value.to(device)
            for key, value in inputs.items()
            if isinstance(value, torch.Tensor)
        }

    def context_budget(self) -> ContextBudget:
        """Measure, once, what the prompt and one page image cost in tokens (a blank page; ~0.1 s)."""
        if self._budget is None:
            page = PageImage("page.pdf", 1, None, Image.new("RGB", (self.max_image_edge,) * 2, "white"))
            lengths = [self.prepare(None, _BUDGET_QUESTION, pages)["input_ids"].shape[1] for pages in ([], [page])]
            config = self.model.config
            positions = getattr(getattr(config, "text_config", config), "max_position_embeddings", None)
            self._budget = ContextBudget(positions, lengths[0], lengths[1] - lengths[0])
        return self._budget

    def _generation_config(self, max_new_tokens: int) -> Any:
        config = copy.deepcopy(self.model.generation_config)
        config.update(do_sample=False, temperature=None, top_p=None, top_k=None, max_new_tokens=max_new_tokens)
        if config.pad_token_id is None:
            config.pad_token_id = self.processor.tokenizer.pad_token_id or self.processor.tokenizer.eos_token_id
        return config

    def stream(
        self,
        conversation: Conversation,
        question: str,
        pages: list[PageImage],
        max_new_tokens: int = 256,
        times: StreamTimes | None = None,
    ) -> Iterator[str]:
        """Yield the answer's text pieces as they are generated (greedy decoding).

        Older page images may be dropped from ``conversation`` first (see ``Conversation.notes``).
        ``times``, when given, is filled in with the preparation and prefill times as they end.
        When generation finishes, the turn is appended to ``conversation``; if the caller stops
        iterating early (or is interrupted), generation is told to stop and no turn is recorded.
        A prefill under way then still runs to its end in the background thread.
        """
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                import torch

                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        times = times if times is not None else StreamTimes()
        started = time.perf_counter()
        conversation.make_room(pages)
        inputs = self.prepare(conversation, question, pages)
        times.prepare_s = time.perf_counter() - started
        streamer = _TokenStreamer(self.processor.tokenizer, times)
        stop = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                streamer.begin()
                self.model.generate(
                    **inputs,
                    generation_config=self._generation_config(max_new_tokens),
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_Stop()]),
                )
            except BaseException as exc:  # handed to the consumer thread below
                errors.append(exc)
                streamer.queue.put(None)

        thread = threading.Thread(target=run, name="docqa-generate", daemon=True)
        thread.start()
        pieces: list[str] = []
        finished = False
        try:
            while (piece := streamer.queue.get()) is not None:
                pieces.append(piece)
                yield piece
            finished = True
        finally:
            stop.set()
            # Stopped early (Ctrl-C, or the caller stopped iterating): decoding stops at its next
            # token, but a prefill under way is one forward pass that cannot be cut short, so wait
            # only briefly; the daemon thread finishes on its own (the CLI exits at once instead).
            thread.join(None if finished else _STOP_WAIT_S)
        if errors:
            raise errors[0]
        conversation.add(question, pages, "".join(pieces))

    def ask(
        self, question: str, pages: list[PageImage], conversation: Conversation | None = None, max_new_tokens: int = 256
    ) -> Answer:
        """Answer ``question`` from ``pages`` (non-streaming); one Citation per page, in order."""
        conversation = conversation if conversation is not None else Conversation()
        start = time.perf_counter()
        text = "".join(self.stream(conversation, question, pages, max_new_tokens=max_new_tokens))
        return Answer(question, text, find_citations(text, pages), self.model_id, time.perf_counter() - start)
