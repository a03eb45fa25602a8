"""The OpenVINO engine: int8 on a CPU (VNNI), converted once per checkpoint (docs/engines.md).

What runs where, per model (the rest of each model, i.e. its glue, stays torch fp32):

- retriever (colmodernvbert): the SigLIP vision encoder runs in OpenVINO with static int8 (weights and
  activations, nncf post-training quantization with SmoothQuant, calibrated on synthetic document
  pages through the model's own processor) on its MLPs, while the operations that move a page's
  scores most stay f32 (``RETRIEVER_VISION_F32``: the patch embedding and the attention projections);
  the ModernBERT text encoder runs in OpenVINO in f32 (its int8 weights moved scores as much as the
  whole vision encoder's int8 did). Page path and query path both go through them.
- answer model (idefics3 / SmolVLM): the vision encoder as above (static int8 in OpenVINO); the
  decoder's Linear layers are torch dynamic int8 (KV cache and generate() unchanged).

Every part is compiled with INFERENCE_PRECISION_HINT=f32 (int8 kernels are unaffected): OpenVINO's
default hint is bf16 on CPUs that have it, which was slower than f32 (benchmarks/RESULTS.md). The
parts are converted one submodule at a time, so any number of pages or tiles works (dynamic
shapes). Conversions are cached (see ``cache.py``); OpenVINO uses as many threads as torch
(``torch.get_num_threads()``).
"""

from __future__ import annotations

import colorsys
import contextlib
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from transformers.modeling_outputs import BaseModelOutput

from ...errors import ModelLoadError
from .base import OPENVINO, Engine
from .cache import cache_key, cache_root, checkpoint_hash, converted

log = logging.getLogger("docqa")

RECIPE_VERSION = 3  # bump when a conversion recipe below changes: old cache entries are then unused


def int8_saturates() -> bool:
    """True on x86 CPUs without VNNI (or AMX): their u8 x s8 products add up in saturating int16, so
    static int8 quantizes weights to 7 bits there (nncf's overflow fix) to stay close to fp32."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx2" in flags and not any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


RETRIEVER_FAMILIES = ("colmodernvbert",)
ANSWER_TYPES = ("idefics3", "smolvlm")
RETRIEVER_PRECISION = "int8 (vision MLP w8a8 static; patch embedding, attention projections, text f32)"
ANSWER_PRECISION = "int8 (vision w8a8 static, decoder w8 dynamic)"
# Kept in f32 in the retriever's vision encoder (nncf ignored-scope patterns over OpenVINO node names,
# which carry the torch module path, so they match every layer of any size): measured one group at a
# time on a trained retriever, these moved its scores most (benchmarks/RESULTS.md, "Ranking fidelity"); they are
# about a third of the encoder's multiply-adds.
RETRIEVER_VISION_F32 = (r".*\.embeddings\.patch_embedding[/.].*", r".*\.self_attn\.(q|k|v|out)_proj[/.].*")
_CALIBRATION_PAGES = 4
_CALIBRATION_TILES = 24  # statistics per tile; the real models cut an A4 page into 5


class OpenVINOEngine(Engine):
    name = OPENVINO

    def __init__(self, retriever_vision: str = "static") -> None:
        """``retriever_vision``: how the retriever's vision encoder is quantized: "static" (int8 weights
        and activations but ``RETRIEVER_VISION_F32`` in f32, the default), "static-all" (every operation
        int8: conversion recipe 2, faster and less faithful) or "weights" (int8 weights, f32 compute);
        the benchmarks compare them."""
        self.retriever_vision = retriever_vision

    def supports(self, role: str, kind: str) -> bool:
        return kind in (RETRIEVER_FAMILIES if role == "retriever" else ANSWER_TYPES)

    def precision(self, role: str, dtype: str) -> str:
        if role != "retriever":
            return ANSWER_PRECISION
        return {
            "static": RETRIEVER_PRECISION,
            "static-all": "int8 (vision w8a8 static, text f32)",
            "weights": "int8 weights (vision w8 f32, text f32)",
        }[self.retriever_vision]

    def prepare_retriever(self, model: Any, family: str, processor: Any, checkpoint: str, image_edge: int) -> str:
        if family not in RETRIEVER_FAMILIES:
            raise ModelLoadError(f"the openvino engine does not run {family} retrievers yet; use --engine torch")
        vlm = model.vlm
        weights = checkpoint_hash(checkpoint)
        pages = calibration_pages(image_edge)

        def run_pages(batch_pages: list[Image.Image]) -> Callable[[], None]:
            return lambda: model(**tensors(processor.process_images(batch_pages)))

        vision = _converted_part(
            "retriever vision encoder",
            checkpoint,
            weights,
            image_edge,
            vlm.vision_model,
            VisionGraph,
            [run_pages([page]) for page in pages],
            quantize=self.retriever_vision.removesuffix("-all"),
            keep_f32=RETRIEVER_VISION_F32 if self.retriever_vision == "static" else (),
        )
        text = _converted_part(
            "retriever text encoder",
            checkpoint,
            weights,
            image_edge,
            vlm.text_model,
            _EmbeddingsGraph,
            [lambda: model(**tensors(processor.process_queries(["what is the total amount due?"])))],
            quantize="none",
        )
        vlm.vision_model = _OVVision(vision)
        vlm.text_model = _OVEncoder(text, vlm.text_model.get_input_embeddings())
        return self.precision("retriever", "")

    def prepare_generator(self, model: Any, processor: Any, checkpoint: str) -> str:
        model_type = model.config.model_type
        if model_type not in ANSWER_TYPES:
            raise ModelLoadError(f"the openvino engine does not run {model_type} answer models yet; use --engine torch")
        inner = model.model
        edge = processor.image_processor.size["longest_edge"]

        def run_page(page: Image.Image) -> Callable[[], None]:
            def run() -> None:
                messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]}]
                prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                model(**tensors(processor(text=[prompt], images=[page], return_tensors="pt")))

            return run

        vision = _converted_part(
            "answer model vision encoder",
            checkpoint,
            checkpoint_hash(checkpoint),
            edge,
            inner.vision_model,
            VisionGraph,
            [run_page(page) for page in calibration_pages(edge)],
            quantize="static",
        )
        inner.vision_model = _OVVision(vision)
        with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
            warnings.simplefilter("ignore")
            torch.ao.quantization.quantize_dynamic(inner.text_model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
            if isinstance(model.lm_head, torch.nn.Linear):
                model.lm_head = torch.ao.quantization.quantize_dynamic(
                    torch.nn.Sequential(model.lm_head), {torch.nn.Linear}, dtype=torch.qint8
                )[0]
        return self.precision("answer model", "")


def calibration_pages(edge: int) -> list[Image.Image]:
    """Synthetic document pages, portrait and landscape: text lines over a table and a bar chart, then
    the same two with a colour figure (every hue at several shades) in place of the table.

    Static int8 fixes each activation's range from these pages, so they must span what real pages
    show: calibrated on the plain pages alone, a tiny retriever trained to tell colours apart lost
    top-10 sets against fp32 that the colour figures keep (benchmarks/RESULTS.md, "Ranking fidelity").
    """
    pages = []
    for number in range(_CALIBRATION_PAGES):
        long_side, short_side = edge, round(edge / 2**0.5)
        size = (short_side, long_side) if number % 2 == 0 else (long_side, short_side)
        page = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(page)
        width, height = size
        margin, line = max(width // 12, 4), max(height // 50, 6)
        for row, y in enumerate(range(margin, height // 2, line * 2)):
            draw.text(
                (margin, y),
                f"Section {number}.{row}: revenue 4.2M, invoice 2041, total 1,250.00 EUR " * 2,
                fill="black",
            )
        top = height // 2 + margin
        if number < 2:
            for column in range(5):  # a table
                x = margin + column * (width - 2 * margin) // 5
                draw.line([(x, top), (x, height - 2 * margin)], fill="gray")
        else:  # a colour figure: 12 hues (columns) at 4 shades (rows)
            cell_w, cell_h = (width - 2 * margin) / 12, (height - margin - top) / 4
            for hue in range(12):
                for shade in range(4):
                    rgb = colorsys.hsv_to_rgb(hue / 12, 1 - shade * 0.2, 1 - shade * 0.15)
                    x, y = margin + hue * cell_w, top + shade * cell_h  # type: ignore[assignment]
                    draw.rectangle([x, y, x + cell_w, y + cell_h], fill=tuple(round(255 * c) for c in rgb))
        for bar in range(6):  # a bar chart
            x = margin + bar * (width - 2 * margin) // 6
            draw.rectangle(
                [x, height - margin - (bar + 1) * margin // 2, x + margin // 2, height - margin],
                fill=(40 * bar, 90, 200 - 30 * bar),
            )
        pages.append(page)
    return pages


class VisionGraph(torch.nn.Module):
    """What is converted of a vision encoder: pixels and patch mask in, last hidden state out."""

    def __init__(self, vision: torch.nn.Module) -> None:
        super().__init__()
        self.vision = vision

    def forward(self, pixel_values: torch.Tensor, patch_attention_mask: torch.Tensor) -> torch.Tensor:
        return self.vision(pixel_values=pixel_values, patch_attention_mask=patch_attention_mask).last_hidden_state


class _EmbeddingsGraph(torch.nn.Module):
    """What is converted of a text encoder: input embeddings and attention mask in, last hidden state out."""

    def __init__(self, text: torch.nn.Module) -> None:
        super().__init__()
        self.text = text

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state


class _OVVision(torch.nn.Module):
    """Stands in for a vision encoder: same call, runs the compiled OpenVINO model."""

    def __init__(self, compiled: Any) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(
        self, pixel_values: torch.Tensor, patch_attention_mask: torch.Tensor | None = None, **_: Any
    ) -> BaseModelOutput:
        if patch_attention_mask is None:
            raise ValueError("the openvino vision encoder needs patch_attention_mask")
        inputs = [pixel_values.float().numpy(), patch_attention_mask.bool().numpy()]
        return BaseModelOutput(last_hidden_state=torch.from_numpy(self.compiled(inputs)[0].copy()))


class _OVEncoder(torch.nn.Module):
    """Stands in for a text encoder: keeps its token embeddings in torch, runs the rest compiled."""

    def __init__(self, compiled: Any, embeddings: torch.nn.Module) -> None:
        super().__init__()
        self.compiled = compiled
        self.embeddings = embeddings

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.embeddings

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **_: Any,
    ) -> BaseModelOutput:
        if inputs_embeds is None:
            inputs_embeds = self.embeddings(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long)
        if position_ids is not None:
            raise ValueError("the openvino text encoder computes its own positions")
        inputs = [inputs_embeds.float().numpy(), attention_mask.long().numpy()]
        return BaseModelOutput(last_hidden_state=torch.from_numpy(self.compiled(inputs)[0].copy()))


class _Captured(Exception):
    """Stops a forward pass once the inputs of the part being converted are recorded."""


def capture_inputs(module: torch.nn.Module, graph: type[torch.nn.Module], run: Callable[[], None]) -> tuple:
    """The positional inputs ``graph`` takes, as ``module`` receives them while ``run()`` executes."""
    captured: dict[str, Any] = {}

    def hook(_: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        captured.update(kwargs)
        raise _Captured

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():  # not inference_mode: tracing for conversion cannot take inference tensors
            run()
    except _Captured:
        pass
    finally:
        handle.remove()
    if graph is VisionGraph:
        return captured["pixel_values"], captured["patch_attention_mask"]
    return captured["inputs_embeds"], captured["attention_mask"]


def _converted_part(
    label: str,
    checkpoint: str,
    weights_hash: str,
    edge: int,
    module: torch.nn.Module,
    graph: type[torch.nn.Module],
    runs: list[Callable[[], None]],
    quantize: str,
    keep_f32: tuple[str, ...] = (),
) -> Any:
    """Convert (once, cached) and compile one submodule; returns the compiled model. ``quantize``:
    "static" (int8 weights and activations, but the nodes matching the ``keep_f32`` patterns stay f32),
    "weights" (int8 weights, f32 compute) or "none" (f32)."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    saturates = quantize == "static" and int8_saturates()
    key = cache_key(
        checkpoint=weights_hash,
        part=label,
        edge=edge,
        quantize=quantize,
        keep_f32=keep_f32,
        recipe=RECIPE_VERSION,
        openvino=ov.__version__,
        nncf=nncf.__version__,
        shapes="dynamic",
        overflow_fix=saturates,
    )

    def convert(folder: Path) -> None:
        samples = [capture_inputs(module, graph, run) for run in runs]
        with quiet():
            model = ov.convert_model(graph(module).eval(), example_input=samples[0])
            if quantize == "static":
                calibration = [tuple(t.numpy() for t in tiles) for sample in samples for tiles in one_by_one(sample)][
                    :_CALIBRATION_TILES
                ]
                model = nncf.quantize(
                    model,
                    nncf.Dataset(calibration),
                    model_type=nncf.ModelType.TRANSFORMER,
                    subset_size=len(calibration),
                    ignored_scope=nncf.IgnoredScope(patterns=list(keep_f32), validate=False),
                    advanced_parameters=AdvancedQuantizationParameters(
                        overflow_fix=OverflowFix.ENABLE if saturates else OverflowFix.FIRST_LAYER
                    ),
                )
            elif quantize == "weights":
                model = nncf.compress_weights(model)
            ov.save_model(model, folder / "model.xml", compress_to_fp16=False)

    def announce() -> None:
        log.warning(
            "docqa: converting the %s of %s for the openvino engine (once; cached in %s)",
            label,
            checkpoint,
            cache_root(),
        )

    folder = converted(key, convert, on_first=announce)
    core = ov.Core()
    config = {
        "INFERENCE_PRECISION_HINT": "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
    }
    return core.compile_model(core.read_model(folder / "model.xml"), "CPU", config)


def one_by_one(sample: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, ...]]:
    """Split a batch of inputs into batch-1 items (calibration statistics per tile)."""
    return [tuple(tensor[i : i + 1] for tensor in sample) for i in range(sample[0].shape[0])]


@contextlib.contextmanager
def quiet():
    """Conversion chatter goes to stderr, never stdout (--json): nncf's progress bars are redirected,
    its INFO tables (a handler bound to stdout) and tracer warnings are dropped."""
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        nncf_log.setLevel(level)


def tensors(batch: Any) -> dict[str, torch.Tensor]:
    return {name: value for name, value in batch.items() if isinstance(value, torch.Tensor) and name != "labels"}
