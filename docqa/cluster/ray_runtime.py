"""Connecting to Ray: the optional import, a local or remote cluster, quiet logs."""

from __future__ import annotations

import logging
from types import ModuleType

from ..errors import ClusterError, MissingDependencyError

INSTALL_HINT = 'Ray is not installed; install it with: pip install "docqa[ray]"'
LOCAL = "local"  # the address meaning "start a Ray on this machine"


def import_ray() -> ModuleType:
    """The `ray` module (with Ray Data), or a one-line MissingDependencyError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (the ingest pipeline needs Ray Data too)
    except ImportError as error:
        raise MissingDependencyError(INSTALL_HINT) from error
    return ray


def connect(address: str | None) -> ModuleType:
    """Join the Ray cluster at `address`, or start a local one for `LOCAL`/None.

    A Ray already initialised in this process (a notebook, a test session) is used as it is.
    """
    ray = import_ray()
    if not ray.is_initialized():
        options = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=True)
        try:
            if address in (None, "", LOCAL):
                ray.init(**options)
            else:
                ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ClusterError(f"cannot connect to the Ray cluster at {address!r}: {error}") from error
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its per-dataset INFO lines would swamp stderr
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # docqa draws its own bar (pages/s across the cluster)
    context.print_on_execution_start = False
    return ray


def cluster_gpus(ray: ModuleType) -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def cluster_cpus(ray: ModuleType) -> int:
    return int(ray.cluster_resources().get("CPU", 1))
