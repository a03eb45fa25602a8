"""Shared fixtures: tiny random retriever checkpoints (real transformers classes, saved as real
checkpoint folders and loaded through the same code path as hub ids) and an isolated DOCQA_HOME."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.tiny_retrievers import build_retriever_checkpoint

RETRIEVER_FAMILIES = ("colmodernvbert", "colqwen2", "colpali")


@pytest.fixture(scope="session")
def retriever_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One tiny checkpoint folder per retriever family, built once per test session."""
    root = tmp_path_factory.mktemp("retrievers")
    return {family: build_retriever_checkpoint(family, root / family) for family in RETRIEVER_FAMILIES}


@pytest.fixture()
def retriever_checkpoint(retriever_checkpoints) -> Path:
    """The CPU default family (ColModernVBert), tiny."""
    return retriever_checkpoints["colmodernvbert"]


@pytest.fixture(autouse=True)
def docqa_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own $DOCQA_HOME, so `indexes/` never lands in the checkout."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DOCQA_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DOCQA_DAEMON", "off")  # no resident processes unless a test asks (test_daemon.py)
    return home


@pytest.fixture(scope="session", autouse=True)
def torch_engine():
    """Tests of the pipeline run the plain torch engine (session fixtures too); tests/test_engines.py
    covers the default fast one by unsetting this."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DOCQA_ENGINE", "torch")
        yield


class _BuiltOnFirstUse(dict):
    """Tiny answer-model checkpoint folders by family (tests/helpers/tiny_generators.py), each built the first
    time a test asks for it, so a session builds only the families its tests use."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, family: str) -> Path:
        from helpers.tiny_generators import build_generator_checkpoint

        self[family] = build_generator_checkpoint(family, self.root / family)
        return self[family]


@pytest.fixture(scope="session")
def generator_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny answer-model checkpoints (``generator_checkpoints["qwen3_vl"]``), built once per session."""
    return _BuiltOnFirstUse(tmp_path_factory.mktemp("generators"))


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """A local Ray with 2 CPUs for the whole session (started once: it takes seconds).

    Workers import this checkout's docqa and the tests' helpers (tests/ray_faults.py) through
    PYTHONPATH, and find the fault-injection switch through DOCQA_TEST_DIE_ONCE.
    """
    import ray

    tests = Path(__file__).resolve().parent
    paths = [str(tests.parent), str(tests), os.environ.get("PYTHONPATH", "")]
    switch = tmp_path_factory.mktemp("ray-faults") / "die-once"
    saved = {name: os.environ.get(name) for name in ("PYTHONPATH", "DOCQA_TEST_DIE_ONCE")}
    os.environ["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    os.environ["DOCQA_TEST_DIE_ONCE"] = str(switch)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
