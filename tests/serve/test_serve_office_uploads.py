"""Uploads of documents LibreOffice converts: sniffed by content, "converting" then "ingesting",
cited and served as the original; damaged, encrypted-looking, zip-bomb and unknown uploads are
refused with their reason, and without LibreOffice such an upload says how to get it."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason='the server tests need the serve extra: pip install "docqa[serve]"')

from helpers.office_files import make_corrupt_zip, make_docx, make_zip_bomb_docx  # noqa: E402
from helpers.serving import api_client, corpus_index_fixture, make_auth, service_fixture, wait_for_job  # noqa: E402

from docqa.inputs import converters  # noqa: E402
from docqa.serve import create_app  # noqa: E402
from docqa.serve.jobs import Job  # noqa: E402
from docqa.serve.slots import Limits  # noqa: E402

corpus_index = corpus_index_fixture()
service = service_fixture(Limits(max_upload_bytes=5_000_000), answer_model=False)


@pytest.fixture()
def client(service, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCQA_CACHE", str(tmp_path / "cache"))  # converted PDFs of this test only
    with api_client(create_app(service, make_auth())) as client:
        yield client


def _states(monkeypatch) -> list[str]:
    """Spy: every state a job is put in, in order."""
    seen: list[str] = []
    real = Job.update

    def recording(self, **values):
        if "state" in values and (not seen or seen[-1] != values["state"]):
            seen.append(values["state"])
        real(self, **values)

    monkeypatch.setattr(Job, "update", recording)
    return seen


@pytest.mark.skipif(not converters.libreoffice_available(), reason="LibreOffice is not installed")
def test_a_word_upload_is_converted_then_ingested_and_served_as_the_original(client, service, tmp_path, monkeypatch):
    states = _states(monkeypatch)
    docx = make_docx(tmp_path / "in" / "minutes.docx", pages=2, title=f"Minutes {tmp_path.name}")
    accepted = client.post("/api/uploads", files={"file": ("minutes.docx", docx.read_bytes())})
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(client, accepted.json()["id"], timeout_s=240)
    assert job["state"] == "done", job
    assert states == ["converting", "ingesting", "done"]
    (document,) = [d for d in client.get("/api/documents").json()["documents"] if d["name"] == "minutes.docx"]
    assert (document["kind"], document["status"]) == ("docx", "indexed") and document["pages"] >= 2
    hits = client.get("/api/search", params={"q": "minutes", "k": 20}).json()["results"]
    assert any(hit["document_id"] == document["id"] and hit["name"] == "minutes.docx" for hit in hits)
    original = client.get(f"/api/documents/{document['id']}/file")
    assert original.status_code == 200 and original.content == docx.read_bytes()
    assert original.headers["content-disposition"].startswith("attachment")


def test_uploads_that_cannot_be_indexed_are_refused_with_the_reason(client, service, tmp_path):
    corrupt = make_corrupt_zip(tmp_path / "bad.docx").read_bytes()
    bomb = make_zip_bomb_docx(tmp_path / "bomb.docx", expanded_mb=150).read_bytes()
    assert len(bomb) < 5_000_000  # under the upload limit: the sniffer, not the size, refuses it
    for name, content, reason in (
        ("bad.docx", corrupt, "bad.docx"),
        ("bomb.docx", bomb, "bomb.docx"),
        ("blob.bin", bytes(range(256)) * 8, "not a PDF"),
    ):
        refused = client.post("/api/uploads", files={"file": (name, content)})
        assert refused.status_code == 415, (name, refused.text)
        assert reason in refused.json()["error"]
    assert (
        client.post("/api/uploads", files={"file": ("bomb.docx", bomb)}).json()["error"]
        != (client.post("/api/uploads", files={"file": ("bad.docx", corrupt)}).json()["error"])
    )  # each says its own reason
    assert [p for p in service.uploads.rglob("*") if p.is_file()] == []  # nothing refused was kept


def test_without_libreoffice_a_document_upload_says_how_to_get_it(client, service, tmp_path, monkeypatch):
    monkeypatch.setattr(converters, "find_soffice", lambda: None)
    docx = make_docx(tmp_path / "memo.docx", pages=1)
    refused = client.post("/api/uploads", files={"file": ("memo.docx", docx.read_bytes())})
    assert refused.status_code == 415
    assert converters.INSTALL_HINT in refused.json()["error"] and "memo.docx" in refused.json()["error"]
    assert [p for p in service.uploads.rglob("*") if p.is_file()] == []
