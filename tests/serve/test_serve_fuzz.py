"""Schema-driven fuzzing of every API operation (schemathesis over /openapi.json): never a 5xx.

Examples per operation are bounded so the default run stays fast; `-m slow` runs many more.
"""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason='the server tests need the serve extra: pip install "docqa[serve]"')
schemathesis = pytest.importorskip("schemathesis", reason="the fuzz test needs schemathesis (test extra)")

from helpers.serving import authenticated, build_corpus_index, make_auth, service_on_copy  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from docqa.serve import create_app  # noqa: E402
from docqa.serve.slots import Limits  # noqa: E402


@pytest.fixture(scope="module")
def fuzz_schema(tmp_path_factory, retriever_checkpoints, generator_checkpoints):
    root = tmp_path_factory.mktemp("fuzz")
    template = build_corpus_index(root / "corpus", retriever_checkpoints["colmodernvbert"])
    service = service_on_copy(
        template,
        root / "idx",
        answer_model=generator_checkpoints["idefics3"],
        limits=Limits(max_upload_bytes=100_000, max_request_bytes=4096, max_pages=1),
    )
    app = authenticated(create_app(service, make_auth()))  # fuzz behind the login: every route is reached
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    service.close()


schema = schemathesis.pytest.from_fixture("fuzz_schema")
FUZZ_SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


def _no_server_error(case) -> None:
    if case.method == "POST" and case.path == "/api/ask" and isinstance(case.body, dict):
        case.body["max_new_tokens"] = (
            min(int(case.body.get("max_new_tokens", 2) or 2), 2)
            if isinstance(case.body.get("max_new_tokens"), int)
            else case.body.get("max_new_tokens")
        )
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
    if response.status_code >= 400 and response.headers.get("content-type", [""])[0].startswith("application/json"):
        assert "error" in response.json()


@schema.parametrize()
@settings(max_examples=5, **FUZZ_SETTINGS)
def test_every_operation_never_answers_5xx(case):
    _no_server_error(case)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=300, **FUZZ_SETTINGS)
def test_every_operation_never_answers_5xx_long(case):
    _no_server_error(case)
