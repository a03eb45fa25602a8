"""Where model checkpoints come from, shared by the retriever and the answer model.

A model is a local folder, a hub id already in the Hugging Face cache, or a hub id to download.
Offline, the stock loader retries for about half a minute before failing; `resolve` decides in
seconds and raises a ModelLoadError that names the model, the reason and the fix. `check_device`
is the one place a `--device` value is validated. torch and huggingface_hub are imported only when
a function here needs them, so commands without a model (`info`, `remove`) never import them.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from ..errors import DeviceError, ModelLoadError

if TYPE_CHECKING:
    import torch

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HUB_TIMEOUT_S = 3.0


def default_device() -> str:
    """"cuda" when a GPU is usable, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | None) -> str:
    """The device to run on: `device` once it is known to be usable here, else the default.

    Raises DeviceError (one line naming the device and the fix) for a name torch does not know,
    a device type docqa does not run on, or a GPU this torch build or this machine does not have.
    """
    import torch

    if device is None:
        return default_device()
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise DeviceError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if parsed.type == "cpu":
        return device
    if parsed.type != "cuda":
        raise DeviceError(f"device {device!r} is not supported; use cpu, cuda or cuda:N")
    if not torch.backends.cuda.is_built():
        raise DeviceError(f"device {device!r}: this torch build ({torch.__version__}) has no CUDA support;"
                          " use --device cpu, or install a CUDA build of torch")
    count = torch.cuda.device_count()
    if count == 0:
        raise DeviceError(f"device {device!r}: no CUDA GPU is visible on this machine; use --device cpu")
    if (parsed.index or 0) >= count:
        raise DeviceError(f"device {device!r}: this machine has {count} CUDA GPU(s), numbered 0 to {count - 1}")
    return device


def is_gpu(device: str) -> bool:
    return device.startswith("cuda")


def torch_dtype(dtype: str | None, device: str) -> torch.dtype:
    """The named floating dtype; default bfloat16 on a GPU, float32 on a CPU."""
    import torch

    name = dtype or ("bfloat16" if is_gpu(device) else "float32")
    resolved = getattr(torch, name, None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ModelLoadError(f"unknown dtype {name!r}; use float32, bfloat16 or float16")
    return resolved


def load_error(role: str, model: str, reason: str, option: str) -> ModelLoadError:
    """The one message shape for every model that cannot be loaded."""
    return ModelLoadError(
        f"cannot load {role} {model!r}: {reason}. To fix: pass {option} /path/to/local/checkpoint,"
        " or set HF_HUB_OFFLINE=1 with the model in the Hugging Face cache"
    )


def short_reason(error: BaseException) -> str:
    """The first line of an exception, for a one-line message."""
    first_line = (str(error).strip().splitlines() or [""])[0][:200].rstrip(".")
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__


def resolve(model: str, role: str, option: str) -> tuple[str, bool]:
    """Where to load `model` from and whether to stay offline: (folder or hub id, local_files_only)."""
    from huggingface_hub import constants

    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve()), True
    if not _HUB_ID.match(model) or path.is_absolute() or model.startswith((".", "~")):
        raise load_error(role, model, "no such checkpoint folder", option)
    if _in_hub_cache(model):
        return model, True
    if constants.HF_HUB_OFFLINE:
        raise load_error(role, model, "not in the Hugging Face cache and HF_HUB_OFFLINE is set", option)
    if not _hub_reachable():
        raise load_error(role, model, f"not in the Hugging Face cache and {constants.ENDPOINT} is unreachable", option)
    return model, False


def _in_hub_cache(model: str) -> bool:
    """Whether the hub cache holds `model`'s config and weights (then nothing needs the network)."""
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> bool:
        return isinstance(try_to_load_from_cache(model, filename), str)

    return cached("config.json") and (cached("model.safetensors") or cached("model.safetensors.index.json"))


def _hub_reachable() -> bool:
    """Whether the hub endpoint accepts a TCP connection within a few seconds."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=_HUB_TIMEOUT_S).close()
    except OSError:
        return False
    return True
