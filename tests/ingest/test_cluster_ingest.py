"""Ingest on a local Ray (2 CPUs, tiny real retriever): same index as a local ingest, exactly once
through a dying encoder actor, a re-run after a dead driver that encodes only what is missing, and
encoder actors that load what the first load did (a trusted remote-code retriever; no other revision)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers.documents import make_mixed_folder
from helpers.stored import stored_pages
from helpers.tiny_multivector import build_remote_code_checkpoint

from docqa import DocIndex
from docqa.errors import IndexMismatchError
from docqa.ingest import ray as cluster_ingest
from docqa.ingest.plan import PlannedFile
from docqa.models.retriever import Retriever


@pytest.fixture()
def corpus(tmp_path):
    root = make_mixed_folder(tmp_path / "docs")
    (root / "broken.pdf").write_bytes(b"%PDF-1.4\n garbage")
    return root


def _documents(index: DocIndex) -> dict[str, tuple[str, int, str]]:
    return {doc.path: (doc.sha256, doc.pages, doc.kind) for doc in index.store.all_documents()}


def _count_stored_pages(monkeypatch) -> list[int]:
    """Spy: page numbers the driver receives encoded from the cluster."""
    received: list[int] = []
    real = PlannedFile.store_page

    def recording(self, index, number, *rest):
        received.append(number)
        return real(self, index, number, *rest)

    monkeypatch.setattr(PlannedFile, "store_page", recording)
    return received


def test_ray_ingest_builds_the_same_index_as_a_local_ingest(corpus, retriever_checkpoint, monkeypatch, ray_cluster):
    # float16 vectors: the tiny random model scores pages nearly alike, and bfloat16 rounding of the
    # two encoders' last-digit differences could swap near-tied pages.
    full_precision = {"vector_type": "float16"}
    shutil.copy(corpus / "reports" / "q1.pdf", corpus / "q1 copy.pdf")  # the same content twice: one document
    local = DocIndex.open("local", create=True, options=full_precision)
    local_report = local.ingest([corpus], model=str(retriever_checkpoint), batch_size=3)
    on_ray = DocIndex.open("ray", create=True, options=full_precision)
    ray_report = on_ray.ingest([corpus], model=str(retriever_checkpoint), batch_size=3, ray="local")

    assert ray_report.to_json() | {"index": None, "seconds": None, "timings": None} == local_report.to_json() | {
        "index": None,
        "seconds": None,
        "timings": None,
    }
    assert (ray_report.added, ray_report.failed, ray_report.skipped, ray_report.pages_added) == (4, 1, 1, 8)
    assert ray_report.duplicates == 1
    assert _documents(on_ray) == _documents(local)
    assert [d["also_at"] for d in on_ray.list_documents()] == [d["also_at"] for d in local.list_documents()]
    assert [alias.path for alias in on_ray.aliases()] == [str(corpus / "reports" / "q1.pdf")]
    assert on_ray.build.encoder == local.build.encoder
    local_pages, ray_pages = stored_pages(local), stored_pages(on_ray)
    assert local_pages.keys() == ray_pages.keys()
    for key, vectors in local_pages.items():
        np.testing.assert_allclose(ray_pages[key].astype(np.float32), vectors.astype(np.float32), atol=2e-3)
    for query in ("q1 revenue", "receipt", "fax page"):
        expected = [(hit.path, hit.page) for hit in local.search(query, k=8)]
        assert [(hit.path, hit.page) for hit in on_ray.search(query, k=8)] == expected

    received = _count_stored_pages(monkeypatch)
    again = on_ray.ingest([corpus], batch_size=3, ray="local")
    assert (again.unchanged, again.added, again.pages_added, received) == (5, 0, 0, [])


def test_a_dying_encoder_actor_is_retried_and_every_page_lands_once(
    corpus, retriever_checkpoint, monkeypatch, ray_cluster
):
    import os

    from helpers.ray_faults import DyingEncoder

    switch = Path(os.environ["DOCQA_TEST_DIE_ONCE"])
    switch.touch()
    monkeypatch.setattr(cluster_ingest, "PageEncoder", DyingEncoder)
    index = DocIndex.open("faulty", create=True)
    report = index.ingest([corpus], model=str(retriever_checkpoint), batch_size=2, ray="local")

    assert not switch.exists(), "no encoder actor died: the fault was not injected"
    assert (report.added, report.failed, report.pages_added) == (4, 1, 8)
    pages = stored_pages(index)
    assert sorted((Path(path).name, number) for path, number in pages) == [
        ("fax.tiff", 1),
        ("fax.tiff", 2),
        ("q1.pdf", 1),
        ("q1.pdf", 2),
        ("q1.pdf", 3),
        ("q2.pdf", 1),
        ("q2.pdf", 2),
        ("receipt.png", 1),
    ]
    assert index.vectors.rows == sum(len(vectors) for vectors in pages.values())  # no stray rows


DRIVER_DIES_AFTER_FIRST_COMMIT = textwrap.dedent("""
    import os, sys
    import docqa.ingest.ray as cluster_ingest
    from docqa import DocIndex

    real = cluster_ingest.commit_job

    def commit_then_die(*args, **kwargs):
        real(*args, **kwargs)
        os._exit(17)

    cluster_ingest.commit_job = commit_then_die
    index, corpus, model, address = sys.argv[1:]
    DocIndex.open(index, create=True).ingest([corpus], model=model, batch_size=2, ray=address)
""")


def test_a_rerun_after_the_driver_died_encodes_only_the_uncommitted_documents(
    corpus, retriever_checkpoint, monkeypatch, ray_cluster, tmp_path
):
    index_dir = tmp_path / "index"
    address = ray_cluster.get_runtime_context().gcs_address
    died = subprocess.run(
        [
            sys.executable,
            "-c",
            DRIVER_DIES_AFTER_FIRST_COMMIT,
            str(index_dir),
            str(corpus),
            str(retriever_checkpoint),
            address,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert died.returncode == 17, died.stderr[-2000:]

    index = DocIndex.open(index_dir)
    committed = _documents(index)
    assert len(committed) == 1
    committed_pages = next(iter(committed.values()))[1]

    received = _count_stored_pages(monkeypatch)
    report = index.ingest([corpus], batch_size=2, ray="local")
    assert (report.unchanged, report.added, report.failed) == (1, 3, 1)
    assert report.pages_added == len(received) == 8 - committed_pages
    assert len(_documents(index)) == 4
    pages = stored_pages(index)
    assert len(pages) == 8
    assert index.vectors.rows == sum(len(vectors) for vectors in pages.values())


DRIVER_DIES_MID_DOCUMENT = textwrap.dedent("""
    import os, sys
    from docqa import DocIndex
    from docqa.ingest.plan import PlannedFile

    real, stored = PlannedFile.store_page, []

    def store_then_die(self, *args):
        if len(stored) == int(sys.argv[5]):
            os._exit(17)  # the checkpoint written after the page before this one is all that stays
        stored.append(real(self, *args))

    PlannedFile.store_page = store_then_die
    index, corpus, model, address = sys.argv[1:5]
    DocIndex.open(index, create=True).ingest([corpus], model=model, batch_size=2, ray=address, checkpoint_s=0)
""")


def test_a_rerun_after_the_driver_died_mid_document_resumes_from_its_checkpoint(
    retriever_checkpoint, monkeypatch, ray_cluster, tmp_path
):
    """The driver is killed while a 12-page PDF's pages arrive: the re-run on Ray encodes only the
    pages after the checkpoint, and the index equals a fresh local ingest's."""
    from helpers.documents import make_pdf

    docs = tmp_path / "docs"
    pdf = make_pdf(docs / "long.pdf", 12, title="long")
    index_dir = tmp_path / "index"
    address = ray_cluster.get_runtime_context().gcs_address
    argv = [str(index_dir), str(docs), str(retriever_checkpoint), address, "7"]
    died = subprocess.run(
        [sys.executable, "-c", DRIVER_DIES_MID_DOCUMENT, *argv], capture_output=True, text=True, timeout=300
    )
    assert died.returncode == 17, died.stderr[-2000:]

    index = DocIndex.open(index_dir)
    kept = index.checkpointed_pages(pdf)
    assert 1 <= kept <= 7 and index.store.counts()[0] == 0  # pages kept, no document visible
    received = _count_stored_pages(monkeypatch)
    report = index.ingest([docs], batch_size=2, ray="local")
    assert report.resumed == [(str(pdf), kept)] and (report.added, report.failed) == (1, 0)
    assert sorted(received) == list(range(kept + 1, 13)) and report.pages_added == 12
    assert index.checkpointed_pages(pdf) == 0

    fresh = DocIndex.open(tmp_path / "fresh", create=True)
    fresh.ingest([docs], model=str(retriever_checkpoint), batch_size=2)
    resumed, expected = stored_pages(index), stored_pages(fresh)
    assert resumed.keys() == expected.keys() and len(resumed) == 12
    for key, vectors in expected.items():
        np.testing.assert_allclose(resumed[key].astype(np.float32), vectors.astype(np.float32), atol=2e-3)
    assert index.vectors.rows == sum(len(vectors) for vectors in resumed.values())


def test_ray_ingest_runs_a_remote_code_retriever_when_trusted(corpus, retriever_checkpoints, tmp_path, ray_cluster):
    """The encoder actors load what the first load did: its loader and --trust-remote-code too."""
    remote = build_remote_code_checkpoint(retriever_checkpoints["colpali"], tmp_path / "remote")
    index = DocIndex.open("remote", create=True)
    report = index.ingest([corpus], model=str(remote), batch_size=4, ray="local", trust_remote_code=True)

    assert (report.added, report.failed, report.pages_added) == (4, 1, 8)
    encoder = index.build.encoder
    assert encoder.trust_remote_code and encoder.loader == "sentence-transformers"


def test_an_encoder_actor_refuses_another_revision_than_the_first_load(retriever_checkpoint):
    """Run in this process (no Ray): the actor's own load is checked against the ingest's stamp."""
    stamp = Retriever.load(str(retriever_checkpoint), device="cpu").stamp
    assert cluster_ingest.PageEncoder(stamp.to_json(), "cpu").retriever.stamp == stamp
    moved = dataclasses.replace(stamp, revision="sha256:" + "0" * 64)
    with pytest.raises(IndexMismatchError, match="revision sha256:.*instead of sha256:0000"):
        cluster_ingest.PageEncoder(moved.to_json(), "cpu")


def test_without_ray_installed_the_cli_says_how_to_install_it(corpus, monkeypatch, capsys):
    from docqa.cli.main import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    assert main(["ingest", str(corpus), "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == 'docqa: error: Ray is not installed; install it with: pip install "docqa[ray]"'
