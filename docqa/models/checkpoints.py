"""Where model checkpoints come from, shared by the retriever and the answer model.

A model is a local folder, a hub id already in the Hugging Face cache, or a hub id to download.
Offline, the stock loader retries for about half a minute before failing; `resolve` decides in
seconds and raises a ModelLoadError that names the model, the reason and the fix. `read_checkpoint`
reads what a checkpoint says about itself (config, a sentence-transformers configuration, code of its
own to run, its revision) before any of its code runs. `check_device`
is the one place a `--device` value is validated. torch and huggingface_hub are imported only when
a function here needs them, so commands without a model (`info`, `remove`) never import them.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from ..errors import DeviceError, ModelLoadError

if TYPE_CHECKING:
    import torch

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HUB_TIMEOUT_S = 3.0


def default_device() -> str:
    """ "cuda" when a GPU is usable, else "cpu"."""
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
        raise DeviceError(
            f"device {device!r}: this torch build ({torch.__version__}) has no CUDA support;"
            " use --device cpu, or install a CUDA build of torch"
        )
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


# --- what a checkpoint folder says about itself (read before any model code runs) ---------------
_ST_FILES = ("modules.json", "config_sentence_transformers.json")
_CODE_CONFIGS = ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


@dataclass(frozen=True)
class CheckpointFacts:
    """What docqa reads from a checkpoint's files to choose how to load it, without running its code."""

    config: dict  # config.json as stored
    sentence_transformers: bool  # it carries a sentence-transformers configuration
    remote_code: tuple[str, ...]  # the checkpoint's own code files it asks to run ("" when none)
    revision: str  # the hub snapshot's commit, or "sha256:..." over a local folder's config and weights

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))

    @property
    def architectures(self) -> tuple[str, ...]:
        return tuple(self.config.get("architectures") or ())


def checkpoint_file(source: str, name: str, local_files_only: bool) -> Path | None:
    """``name`` in the checkpoint ``source`` (a folder, or a hub id's snapshot), or None when it has none."""
    folder = Path(source)
    if folder.is_dir():
        path = folder / name
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source, name, local_files_only=local_files_only))
    except Exception:  # not in the repo, not cached: both mean "this checkpoint has no such file"
        return None


def read_checkpoint(
    source: str, model: str, local_files_only: bool, role: str = "retriever", option: str = "--model"
) -> CheckpointFacts:
    """The facts of ``source`` (as :func:`resolve` gave it); ``model`` is the name the user gave."""
    config_path = checkpoint_file(source, "config.json", local_files_only)
    if config_path is None:
        raise load_error(role, model, "it has no config.json", option)
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise load_error(role, model, f"config.json does not parse ({short_reason(error)})", option) from error
    code: list[str] = []
    for name in _CODE_CONFIGS:
        path = config_path if name == "config.json" else checkpoint_file(source, name, local_files_only)
        data = config if name == "config.json" else _json_or_empty(path)
        code += _code_files((data.get("auto_map") or {}) if isinstance(data, dict) else {})
    modules = _json_or_empty(checkpoint_file(source, "modules.json", local_files_only))
    for module in modules if isinstance(modules, list) else []:
        kind = str(module.get("type", "")) if isinstance(module, dict) else ""
        if kind and not kind.startswith("sentence_transformers."):
            code.append(kind.rsplit(".", 1)[0].replace(".", "/") + ".py")
    sentence_transformers = any(checkpoint_file(source, name, local_files_only) for name in _ST_FILES)
    return CheckpointFacts(config, sentence_transformers, tuple(dict.fromkeys(code)), _revision(source, config_path))


def _json_or_empty(path: Path | None) -> object:
    if path is None:
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _code_files(auto_map: dict) -> list[str]:
    """The .py files an ``auto_map`` names ("modeling_x.Class" or "repo--modeling_x.Class")."""
    files = []
    for value in auto_map.values():
        for ref in value if isinstance(value, list) else [value]:
            if isinstance(ref, str) and "." in ref:
                files.append(ref.split("--")[-1].rsplit(".", 1)[0] + ".py")
    return files


def _revision(source: str, config_path: Path) -> str:
    if not Path(source).is_dir() and config_path.parent.parent.name == "snapshots":
        return config_path.parent.name  # the hub commit this snapshot is
    from .engines.cache import checkpoint_hash

    try:
        return "sha256:" + checkpoint_hash(source)
    except (ModelLoadError, OSError):
        return ""
