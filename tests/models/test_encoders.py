"""The retriever stage on tiny random checkpoints of each family, loaded like hub checkpoints."""

from __future__ import annotations

import re
import shutil
import time

import numpy as np
import pytest
from PIL import Image, ImageDraw
from transformers import ModernBertConfig

from docqa.errors import ModelLoadError, UnsupportedModelError
from docqa.models.retriever import Retriever, default_image_edge

FAMILIES = ("colmodernvbert", "colqwen2", "colpali")
QUERIES = ["What was the revenue in 2023?", "pump temperature"]
SMALL_EDGE = 512  # one ColModernVBert tile: keeps the image_edge comparisons cheap


def make_page(width: int, height: int) -> Image.Image:
    """A white page with a few lines of dark text and a grey box, like a scanned document."""
    page = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(page)
    for line in range(0, height - 20, max(12, height // 20)):
        draw.text((10, line + 5), f"Line {line}: quarterly revenue grew 12 percent", fill="black")
    draw.rectangle((width // 2, height // 2, width - 10, height - 10), fill=(180, 180, 180))
    return page


def pages_at_edge(edge: int) -> list[Image.Image]:
    """Portrait A4, landscape and square pages whose longest edge is already ``edge``."""
    return [make_page(round(edge / 2**0.5), edge), make_page(edge, edge * 5 // 8), make_page(edge, edge)]


def numpy_maxsim(query: np.ndarray, page: np.ndarray) -> float:
    """Sum over query vectors of the best dot product with any page vector."""
    return float((query @ page.T).max(axis=1).sum())


@pytest.fixture(scope="module")
def retrievers(retriever_checkpoints) -> dict[str, Retriever]:
    """One loaded retriever per family, at its default CPU image edge."""
    return {family: Retriever.load(str(retriever_checkpoints[family]), device="cpu") for family in FAMILIES}


@pytest.fixture(scope="module")
def encoded(retrievers) -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
    """(page vectors, query vectors) per family, each computed once."""
    return {
        family: (retriever.encode_pages(pages_at_edge(retriever.stamp.image_edge)), retriever.encode_queries(QUERIES))
        for family, retriever in retrievers.items()
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_vectors_have_model_dim_and_no_padding(family, retrievers, encoded):
    dim = retrievers[family].stamp.dim
    for vectors in encoded[family][0] + encoded[family][1]:
        assert vectors.dtype == np.float32 and vectors.ndim == 2
        assert vectors.shape[0] > 0 and vectors.shape[1] == dim
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)  # no zeroed padding rows left


@pytest.mark.parametrize("family", FAMILIES)
def test_vector_counts_match_attention_mask(family, retrievers, encoded):
    retriever = retrievers[family]
    page_mask = retriever.processor.process_images(pages_at_edge(retriever.stamp.image_edge))["attention_mask"]
    query_mask = retriever.processor.process_queries(QUERIES)["attention_mask"]
    page_vectors, query_vectors = encoded[family]
    assert [len(vectors) for vectors in page_vectors] == page_mask.sum(dim=1).tolist()
    assert [len(vectors) for vectors in query_vectors] == query_mask.sum(dim=1).tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_score_is_maxsim(family, retrievers, encoded):
    page_vectors, query_vectors = encoded[family]
    for query in query_vectors:
        expected = [numpy_maxsim(query, page) for page in page_vectors]
        np.testing.assert_allclose(retrievers[family].score(query, page_vectors), expected, rtol=1e-4, atol=1e-4)


def test_score_is_exact_when_similarities_are_negative(retrievers):
    query = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    short_page = np.array([[-1.0, -1.0]], dtype=np.float32)
    long_page = np.array([[-1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    scores = retrievers["colpali"].score(query, [short_page, long_page])
    np.testing.assert_allclose(scores, [-2.0, 1.0])  # zero-padding the short page would give 0


@pytest.mark.parametrize("family", FAMILIES)
def test_stamp_names_family_and_is_stable(family, retriever_checkpoints, retrievers):
    stamp = retrievers[family].stamp
    again = Retriever.load(str(retriever_checkpoints[family]), device="cpu", dtype="bfloat16", image_edge=SMALL_EDGE)
    assert stamp.family == family
    assert stamp.model == str(retriever_checkpoints[family].resolve())
    assert stamp.dtype == "float32" and again.stamp.dtype == "bfloat16"
    assert stamp.image_edge == default_image_edge(family, "cpu")
    assert re.fullmatch(r"[0-9a-f]{64}", stamp.config_hash)
    assert again.stamp.config_hash == stamp.config_hash


def test_config_hash_differs_between_families(retrievers):
    assert len({retriever.stamp.config_hash for retriever in retrievers.values()}) == len(FAMILIES)


@pytest.mark.parametrize("family", ["colmodernvbert", "colqwen2"])
def test_image_edge_sets_vector_count(family, retriever_checkpoints, retrievers):
    small = Retriever.load(str(retriever_checkpoints[family]), device="cpu", image_edge=SMALL_EDGE)
    page = make_page(1240, 1754)  # A4 at 150 dpi, larger than either edge
    [small_vectors] = small.encode_pages([page])
    [default_vectors] = retrievers[family].encode_pages([page])
    [prefitted_vectors] = small.encode_pages([page.resize((362, SMALL_EDGE))])
    assert len(small_vectors) < len(default_vectors)
    assert len(prefitted_vectors) == len(small_vectors)


def test_colpali_has_a_fixed_vector_count(retrievers):
    retriever = retrievers["colpali"]
    counts = {len(vectors) for vectors in retriever.encode_pages([make_page(200, 300), make_page(1240, 1754)])}
    assert len(counts) == 1


def test_empty_inputs_give_empty_lists(retrievers):
    retriever = retrievers["colmodernvbert"]
    assert retriever.encode_pages([]) == [] and retriever.encode_queries([]) == []


def test_missing_folder_is_a_load_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match=re.escape(str(missing))) as error:
        Retriever.load(str(missing))
    assert "--model /path/to/local/checkpoint" in str(error.value)


def test_unknown_hub_id_fails_fast_offline():
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match="nobody/no-such-retriever"):
        Retriever.load("nobody/no-such-retriever")
    assert time.monotonic() - started < 10


def test_corrupt_weights_are_a_load_error(retriever_checkpoints, tmp_path):
    broken = shutil.copytree(retriever_checkpoints["colmodernvbert"], tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="broken"):
        Retriever.load(str(broken))


def test_non_retriever_checkpoint_is_unsupported(tmp_path):
    folder = tmp_path / "plain-modernbert"
    ModernBertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        folder
    )
    with pytest.raises(UnsupportedModelError, match="plain-modernbert") as error:
        Retriever.load(str(folder))
    assert "colmodernvbert" in str(error.value) and "modernbert" in str(error.value)
