"""Sharded search equals one index holding every page: random embeddings with metadata, exact and
default mode, filters, threads and Ray actors; and `docqa search --shards` over a real tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.documents import make_image, make_pdf

from docqa import DocIndex
from docqa.cli.main import main
from docqa.cluster.shards import ShardSet, shard_of, write_shard_list
from docqa.errors import IndexMismatchError

DIM = 16
TEAMS = ("red", "blue", "green")


def _unit(rng: np.random.Generator, rows: int, dim: int = DIM) -> np.ndarray:
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """One index with 36 documents, and the same documents split into 3 shards (document i in
    shard i % 3), with a `team` tag; returns (whole index path, shard paths)."""
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("sharded")
    whole = DocIndex.open(root / "whole", create=True)
    shards = [DocIndex.open(root / f"shard-{number}", create=True) for number in range(3)]
    for number in range(36):
        team = TEAMS[rng.integers(len(TEAMS))]
        pages = [_unit(rng, int(rng.integers(3, 12))) for _ in range(int(rng.integers(1, 4)))]
        label = f"/archive/{team}/doc-{number:02d}.pdf"
        whole.add_embeddings(label, pages, metadata={"team": team})
        shards[number % 3].add_embeddings(label, pages, metadata={"team": team})
    return root / "whole", [root / f"shard-{number}" for number in range(3)]


def _ranked(hits) -> list[tuple[str, int]]:
    return [(hit.path, hit.page) for hit in hits]


FILTERS = [{}, {"where": {"team": "red"}}, {"path": "/archive/blue/*"}, {"where": {"team": "green"}, "path": "*doc-1*"}]


@pytest.mark.parametrize("exact", [True, False])
def test_sharded_search_equals_one_index(sharded, exact):
    whole_path, shard_paths = sharded
    whole, shards = DocIndex.open(whole_path), ShardSet.open(shard_paths)
    rng = np.random.default_rng(11)
    for _ in range(12):
        query = _unit(rng, int(rng.integers(2, 8)))
        for k in (1, 5, 30):
            for options in FILTERS:
                expected = whole.search_embeddings(query, k, exact=exact, **options)
                got = shards.search_embeddings(query, k, exact=exact, **options)
                assert _ranked(got) == _ranked(expected), (k, options)
                np.testing.assert_allclose([hit.score for hit in got], [hit.score for hit in expected], rtol=1e-5)
                assert [hit.rank for hit in got] == list(range(1, len(got) + 1))
    filtered = shards.search_embeddings(_unit(rng, 3), 100, where={"team": "red"})
    assert filtered and {hit.path.split("/")[2] for hit in filtered} == {"red"}
    assert {hit.shard for hit in filtered} <= {str(path) for path in shard_paths}


def test_sharded_search_on_ray_actors_equals_one_index(sharded, ray_cluster):
    whole_path, shard_paths = sharded
    whole = DocIndex.open(whole_path)
    shards = ShardSet.open(shard_paths, ray="local", cpus_per_shard=0.5)
    try:
        rng = np.random.default_rng(5)
        for _ in range(4):
            query = _unit(rng, 4)
            for options in FILTERS[:2]:
                expected = whole.search_embeddings(query, 10, exact=True, **options)
                got = shards.search_embeddings(query, 10, exact=True, **options)
                assert _ranked(got) == _ranked(expected)
                np.testing.assert_allclose([hit.score for hit in got], [hit.score for hit in expected], rtol=1e-5)
    finally:
        shards.close()


def test_a_shard_list_in_a_parent_folder_stands_for_its_shards(sharded, tmp_path):
    _, shard_paths = sharded
    write_shard_list(tmp_path / "parent", shard_paths)
    assert ShardSet.open([tmp_path / "parent"]).paths == shard_paths


def test_shards_built_differently_are_refused(sharded, tmp_path):
    _, shard_paths = sharded
    other = DocIndex.open(tmp_path / "other", create=True)
    other.add_embeddings("x", [_unit(np.random.default_rng(0), 3, dim=8)])
    with pytest.raises(IndexMismatchError, match="built differently"):
        ShardSet.open([*shard_paths, tmp_path / "other"])


def test_ingest_into_shards_then_search_and_ask_them_as_one_index(
    tmp_path, retriever_checkpoint, capsys, generator_checkpoints
):
    docs = tmp_path / "docs"
    for number in range(4):
        make_pdf(docs / f"q{number}.pdf", 2, title=f"q{number}")
    make_image(docs / "receipt.png", text="receipt")
    model = ["--model", str(retriever_checkpoint)]
    shards = [str(tmp_path / "s1"), str(tmp_path / "s2")]
    assert main(["ingest", str(docs), "--index", str(tmp_path / "whole"), *model]) == 0
    assert main(["ingest", str(docs), "--shards", *shards, *model]) == 0
    held = [{doc.path for doc in DocIndex.open(shard).documents()} for shard in shards]
    assert not held[0] & held[1] and len(held[0] | held[1]) == 5
    assert all(shard_of(Path(path), 2) == number for number, paths in enumerate(held) for path in paths)
    capsys.readouterr()
    assert main(["ingest", str(docs), "--shards", *shards, "--json"]) == 0  # each file found where it went
    again = json.loads(capsys.readouterr().out)["documents"]
    assert (again["unchanged"], again["added"]) == (5, 0)
    write_shard_list(tmp_path / "parent", shards)

    def results(*where: str) -> list[tuple[str, int, float]]:
        assert main(["search", "q1 revenue", "-k", "6", "--exact", "--json", *where]) == 0
        return [
            (hit["path"], hit["page"], round(hit["score"], 4)) for hit in json.loads(capsys.readouterr().out)["results"]
        ]

    expected = results("--index", str(tmp_path / "whole"))
    assert len(expected) == 6
    assert results("--shards", *shards) == expected
    assert results("--shards", str(tmp_path / "parent")) == expected

    assert (
        main(
            [
                "ask",
                "q1 revenue",
                "--shards",
                str(tmp_path / "parent"),
                "-k",
                "2",
                "--max-new-tokens",
                "3",
                "--answer-model",
                str(generator_checkpoints["idefics3"]),
                "--json",
            ]
        )
        == 0
    )
    cited = [(c["path"], c["page"]) for c in json.loads(capsys.readouterr().out)["citations"]]
    assert main(["search", "q1 revenue", "-k", "2", "--json", "--index", str(tmp_path / "whole")]) == 0
    assert cited == [(hit["path"], hit["page"]) for hit in json.loads(capsys.readouterr().out)["results"]]
    assert main(["search", "q1 revenue", "--ray"]) == 2
    assert "--ray needs --shards" in capsys.readouterr().err
