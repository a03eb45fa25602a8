"""The engine names and the Engine interface (whose base class is the plain torch engine); every
engine module imports these from here."""

from __future__ import annotations

from typing import Any

TORCH, OPENVINO = "torch", "openvino"
ENGINES = (TORCH, OPENVINO)


class Engine:
    """Runs a loaded torch model: the base class is the plain torch engine (the model as loaded)."""

    name = TORCH

    def supports(self, role: str, kind: str) -> bool:
        """Whether this engine runs ``kind`` (a retriever family or answer model type) for ``role``."""
        return True

    def precision(self, role: str, dtype: str) -> str:
        """What the engine computes in for ``role`` ("retriever" | "answer model"); torch: the weights' dtype."""
        return dtype

    def prepare_retriever(self, model: Any, family: str, processor: Any, checkpoint: str, image_edge: int) -> str:
        """Make ``model`` (a ColPali-family retriever) run on this engine; return its precision."""
        return self.precision("retriever", str(model.dtype).removeprefix("torch."))

    def prepare_generator(self, model: Any, processor: Any, checkpoint: str) -> str:
        """Make ``model`` (an image-text-to-text model) run on this engine; return its precision."""
        return self.precision("answer model", str(model.dtype).removeprefix("torch."))
