"""Shared fixtures: tiny random retriever checkpoints (real transformers classes, saved as real
checkpoint folders and loaded through the same code path as hub ids) and an isolated DOCQA_HOME."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny_retrievers import build_retriever_checkpoint

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
    return home


@pytest.fixture(scope="session")
def generator_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Tiny answer-model checkpoints (SmolVLM-style Idefics3, Qwen2-VL), built once per session."""
    from tiny_generators import build_generator_checkpoint

    root = tmp_path_factory.mktemp("generators")
    return {family: build_generator_checkpoint(family, root / family) for family in ("idefics3", "qwen2_vl")}
