"""The two retriever loaders behind one Retriever: native transformers classes and sentence-transformers'
MultiVectorEncoder (tiny checkpoints built here, saved with save_pretrained and loaded from their
folders), remote-code checkpoints behind --trust-remote-code, and indexes that refuse another loader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers.documents import make_pdf
from helpers.tiny_multivector import (
    REMOTE_MODULE,
    REMOTE_TYPE,
    build_multivector_checkpoint,
    build_remote_code_checkpoint,
)
from test_encoders import make_page, pages_at_edge

from docqa.answer.grounding import encode_page, ground
from docqa.api import DocIndex
from docqa.cli.main import main
from docqa.errors import IndexMismatchError, RemoteCodeError, UnsupportedModelError
from docqa.inputs.render import fit_within
from docqa.models.retriever import SENTENCE_TRANSFORMERS, TRANSFORMERS, Retriever

sentence_transformers = pytest.importorskip("sentence_transformers")
FAMILIES = ("colmodernvbert", "colqwen2", "colpali")
QUERIES = ["What was the revenue in 2023?", "pump temperature"]


@pytest.fixture(scope="module")
def multivector_checkpoints(retriever_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """Each tiny native family loaded as a MultiVectorEncoder and saved with save_pretrained."""
    root = tmp_path_factory.mktemp("multivector")
    return {family: build_multivector_checkpoint(retriever_checkpoints[family], root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def remote_checkpoint(retriever_checkpoints, tmp_path_factory) -> Path:
    return build_remote_code_checkpoint(retriever_checkpoints["colpali"], tmp_path_factory.mktemp("remote") / "col")


@pytest.mark.parametrize("family", FAMILIES)
def test_the_checkpoint_files_choose_the_loader(family, retriever_checkpoints, multivector_checkpoints):
    native = Retriever.load(str(retriever_checkpoints[family]), device="cpu")
    saved = Retriever.load(str(multivector_checkpoints[family]), device="cpu")
    assert native.stamp.loader == TRANSFORMERS and saved.stamp.loader == SENTENCE_TRANSFORMERS
    assert saved.stamp.family == native.stamp.family == family
    assert (
        saved.stamp.layout
        == native.stamp.layout
        == {"colmodernvbert": "tiles", "colqwen2": "grid", "colpali": "square"}[family]
    )
    assert saved.stamp.revision.startswith("sha256:") and not saved.stamp.trust_remote_code


@pytest.mark.parametrize("family", FAMILIES)
def test_both_loaders_give_the_same_vectors(family, retriever_checkpoints):
    """Same checkpoint, either loader: the same page and query vectors (ColModernVBert's processor
    is routed through process_images / process_queries on the sentence-transformers side)."""
    folder = str(retriever_checkpoints[family])
    native = Retriever.load(folder, device="cpu", loader=TRANSFORMERS)
    multi = Retriever.load(folder, device="cpu", loader=SENTENCE_TRANSFORMERS)
    pages = pages_at_edge(native.stamp.image_edge)
    for ours, theirs in zip(
        native.encode_pages(pages) + native.encode_queries(QUERIES),
        multi.encode_pages(pages) + multi.encode_queries(QUERIES),
    ):
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_both_loaders_run_the_same_forward(family, retriever_checkpoints, monkeypatch):
    """Either loader hands the *ForRetrieval model the same tensors, without the KV cache and asking
    for no extra outputs (hidden states, attentions): the same forward, so the same cost per page
    (the ColPali per-page gap once measured between them was not in docqa's code; models.md)."""
    folder = str(retriever_checkpoints[family])
    native = Retriever.load(folder, device="cpu", loader=TRANSFORMERS)
    multi = Retriever.load(folder, device="cpu", loader=SENTENCE_TRANSFORMERS)
    model_class = type(native._model)
    assert type(multi._model[0].model) is model_class
    calls: list[tuple[Any, dict[str, Any]]] = []
    forward = model_class.forward

    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        assert not args
        calls.append((self, kwargs))
        return forward(self, **kwargs)

    monkeypatch.setattr(model_class, "forward", recording)
    pages = pages_at_edge(native.stamp.image_edge)[:1]
    seen = {}
    for name, retriever in (("native", native), ("multi", multi)):
        calls.clear()
        retriever.encode_pages(pages)
        retriever.encode_queries(QUERIES[:1])
        assert len(calls) == 2
        seen[name] = calls[:]
    for (native_model, ours), (multi_model, theirs) in zip(seen["native"], seen["multi"]):
        tensors = sorted(key for key, value in ours.items() if torch.is_tensor(value))
        assert tensors == sorted(key for key, value in theirs.items() if torch.is_tensor(value))
        for key in tensors:
            assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key
        for model, kwargs in ((native_model, ours), (multi_model, theirs)):
            options = {key: value for key, value in kwargs.items() if not torch.is_tensor(value)}
            assert set(options) <= {"use_cache", "return_dict"}, options
            text_config = model.config.get_text_config()
            assert options.get("use_cache", getattr(text_config, "use_cache", False)) is False
            assert not model.config.output_hidden_states and not model.config.output_attentions


def test_vectors_and_scores_equal_the_encoders_own(multivector_checkpoints):
    """The saved MultiVectorEncoder, loaded by docqa and by sentence-transformers itself: docqa's
    page and query vectors are encode_document / encode_query's, its scores similarity()'s."""
    folder = str(multivector_checkpoints["colpali"])
    retriever = Retriever.load(folder, device="cpu")
    encoder = sentence_transformers.MultiVectorEncoder(folder, device="cpu", local_files_only=True)
    pages = [make_page(300, 420), make_page(420, 300), make_page(200, 200)]
    ours_pages, ours_queries = retriever.encode_pages(pages), retriever.encode_queries(QUERIES)
    fitted = [fit_within(page, retriever.stamp.image_edge) for page in pages]
    theirs_pages = encoder.encode_document(fitted, convert_to_numpy=True)
    theirs_queries = encoder.encode_query(QUERIES, convert_to_numpy=True)
    for ours, theirs in zip(ours_pages + ours_queries, theirs_pages + theirs_queries):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    expected = encoder.similarity(
        [torch.from_numpy(q) for q in theirs_queries], [torch.from_numpy(p) for p in theirs_pages]
    ).numpy()
    for row, query in enumerate(ours_queries):
        np.testing.assert_allclose(retriever.score(query, ours_pages), expected[row], rtol=1e-5, atol=1e-5)


def test_a_multivector_checkpoint_ingests_and_searches(multivector_checkpoints, tmp_path):
    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 2, title="alpha")
    make_pdf(docs / "b.pdf", 1, title="beta")
    index = DocIndex.open("st", create=True)
    report = index.ingest([docs], model=str(multivector_checkpoints["colmodernvbert"]), image_edge=512)
    assert (report.added, report.pages_added) == (2, 3)
    encoder = index.build.encoder.to_json()
    assert encoder["loader"] == SENTENCE_TRANSFORMERS and encoder["family"] == "colmodernvbert"
    hits = index.search("alpha", k=3)
    assert len(hits) == 3 and {hit.path.rsplit("/", 1)[-1] for hit in hits} == {"a.pdf", "b.pdf"}
    grounding = ground(index.retriever(), "alpha", make_page(362, 512))  # tiles found from its processor
    assert grounding.heat.shape[0] > 0


def test_remote_code_is_refused_without_the_flag(remote_checkpoint, tmp_path, capsys, docqa_home):
    with pytest.raises(RemoteCodeError, match=f"{REMOTE_MODULE}.py.*--trust-remote-code"):
        Retriever.load(str(remote_checkpoint), device="cpu")
    pdf = make_pdf(tmp_path / "docs" / "a.pdf", 1, title="remote")
    capsys.readouterr()
    assert main(["ingest", str(pdf), "--index", "remote", "--model", str(remote_checkpoint)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--trust-remote-code" in err[0] and REMOTE_MODULE in err[0]
    assert not (docqa_home / "indexes" / "remote").exists()  # refused before any index was made


def test_remote_code_works_with_the_flag(remote_checkpoint, tmp_path, capsys):
    pdf = make_pdf(tmp_path / "docs" / "a.pdf", 2, title="remote")
    assert (
        main(
            [
                "ingest",
                str(pdf),
                "--index",
                "remote",
                "--model",
                str(remote_checkpoint),
                "--trust-remote-code",
                "--json",
            ]
        )
        == 0
    )
    capsys.readouterr()
    build = DocIndex.open("remote").build.encoder.to_json()
    assert build["trust_remote_code"] is True and build["family"] == REMOTE_TYPE
    assert build["loader"] == SENTENCE_TRANSFORMERS and build["layout"] == "square"
    assert main(["search", "remote", "--index", "remote", "--json"]) == 2  # the flag is needed again
    assert "--trust-remote-code" in capsys.readouterr().err
    assert main(["search", "remote", "--index", "remote", "--trust-remote-code", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    assert [hit["page"] for hit in hits] and {hit["page"] for hit in hits} == {1, 2}
    retriever = Retriever.load(str(remote_checkpoint), device="cpu", trust_remote_code=True)
    assert REMOTE_MODULE in type(retriever._model[0].model).__module__  # the checkpoint's own class ran


def test_an_index_of_one_loader_refuses_another(retriever_checkpoints, tmp_path, capsys):
    folder = str(retriever_checkpoints["colpali"])
    index = DocIndex.open("native", create=True)
    index.ingest([make_pdf(tmp_path / "docs" / "a.pdf", 1, title="native")], model=folder)
    assert index.build.encoder.loader == TRANSFORMERS
    index.close()
    with pytest.raises(IndexMismatchError, match="transformers loader"):
        DocIndex.open("native").retriever(loader=SENTENCE_TRANSFORMERS)
    other = Retriever.load(folder, device="cpu", loader=SENTENCE_TRANSFORMERS)
    with pytest.raises(IndexMismatchError, match="built by the transformers loader; this model loads through"):
        DocIndex.open("native").adopt_retriever(other)
    assert DocIndex.open("native").search("native")[0].page == 1  # no loader named: the index's own


def test_an_index_refuses_another_revision_of_its_checkpoint(retriever_checkpoints, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = Path(shutil.copytree(retriever_checkpoints["colpali"], tmp_path / "colpali"))
    index = DocIndex.open("rev", create=True)
    index.ingest([make_pdf(tmp_path / "docs" / "a.pdf", 1, title="rev")], model=str(folder))
    index.close()
    weights = load_file(folder / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 0.5  # retrained: same config, other weights
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    capsys.readouterr()
    assert main(["ingest", str(make_pdf(tmp_path / "docs" / "b.pdf", 1, title="more")), "--index", "rev"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "revision" in err[0]


def test_a_family_without_a_known_layout_says_it_cannot_ground(remote_checkpoint):
    retriever = Retriever.load(str(remote_checkpoint), device="cpu", trust_remote_code=True)
    object.__setattr__(retriever.stamp, "layout", "")  # as a family whose processor is of no known kind
    with pytest.raises(UnsupportedModelError, match="cannot draw heatmaps"):
        encode_page(retriever, make_page(300, 400))


def test_a_plain_encoder_without_retrieval_head_is_still_unsupported(tmp_path):
    from transformers import ModernBertConfig

    folder = tmp_path / "plain"
    ModernBertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        folder
    )
    with pytest.raises(UnsupportedModelError, match="plain"):
        Retriever.load(str(folder), loader=None)
