"""Inference engines: how a loaded torch model is run (torch as is, or OpenVINO int8 on a CPU).

One interface for the retriever (page and query paths) and the answer model: an engine takes the
loaded transformers model and swaps its compute-heavy parts (vision encoder, text encoder, decoder
layers) for faster equivalents with the same call signature, so the model's own glue code (image
splitting, merging image features into the text, projection, generate()) runs unchanged.

``select_engine(None, device)`` picks the default: OpenVINO on a CPU when it is installed (it is a
dependency of docqa), else torch with one line on stderr saying why; torch on a GPU (bf16 CUDA).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from ...errors import ModelLoadError
from ..checkpoints import is_gpu
from .base import ENGINES, OPENVINO, TORCH, Engine

log = logging.getLogger("docqa")


def openvino_missing() -> str | None:
    """Why the OpenVINO engine cannot run here, or None when it can."""
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError as error:
        return f"{error.name} is not installed (pip install -e . installs it)"
    return None


def select_engine(name: str | None, device: str) -> Engine:
    """The engine called ``name``; None picks the default for ``device`` (see the module docstring).

    ``$DOCQA_ENGINE``, when set, names the engine for every model that is given none. Raises
    ModelLoadError when a named engine cannot run on ``device`` or is not installed.
    """
    name = name or os.environ.get("DOCQA_ENGINE") or None
    if name is not None and name not in ENGINES:
        raise ModelLoadError(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}")
    if name == TORCH:
        return Engine()
    if is_gpu(device):
        if name == OPENVINO:
            raise ModelLoadError("the openvino engine runs on a CPU only; drop --engine or use --device cpu")
        return Engine()
    missing = openvino_missing()
    if missing is not None:
        if name == OPENVINO:
            raise ModelLoadError(f"cannot use the openvino engine: {missing}")
        log.warning("docqa: using the slower torch engine: %s", missing)
        return Engine()
    from .openvino import OpenVINOEngine

    return OpenVINOEngine()


def prepare_on_engine(
    requested: str | None, device: str, role: str, kind: str, prepare: Callable[[Engine], str]
) -> tuple[Engine, str]:
    """Run ``prepare(engine)`` on the requested (or default) engine; returns (engine, precision).

    When no engine was named and the fast one cannot take this model (``kind``: its family or model
    type) or its conversion fails, the model stays on torch and one line on stderr says why.
    """
    requested = requested or os.environ.get("DOCQA_ENGINE") or None
    engine = select_engine(requested, device)
    if engine.name != TORCH and not engine.supports(role, kind):
        if requested is not None:
            raise ModelLoadError(f"the {engine.name} engine does not run {kind} {role}s yet; use --engine torch")
        log.warning(
            "docqa: using the slower torch engine: the %s engine does not run %s %ss yet", engine.name, kind, role
        )
        engine = Engine()
    try:
        return engine, prepare(engine)
    except Exception as error:
        if requested is not None or engine.name == TORCH:
            raise
        log.warning(
            "docqa: using the slower torch engine: converting the %s for %s failed (%s: %s)",
            role,
            engine.name,
            type(error).__name__,
            str(error).splitlines()[0][:160] if str(error) else "",
        )
        engine = Engine()
        return engine, prepare(engine)
