"""ask, chat, describe and ask --image end to end: tiny retriever + tiny answer model, real files."""

from __future__ import annotations

import io
import json

import pytest
from helpers.documents import make_image, make_pdf

from docqa.cli.main import main


@pytest.fixture()
def indexed(tmp_path, retriever_checkpoint, capsys):
    docs = tmp_path / "docs"
    make_pdf(docs / "invoice.pdf", 3, title="invoice")
    make_image(docs / "receipt.png", text="receipt")
    index = str(tmp_path / "idx")
    assert main(["ingest", str(docs), "--index", index, "--model", str(retriever_checkpoint), "--json"]) == 0
    capsys.readouterr()
    return docs, index


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("family", ["idefics3", "qwen2_vl"])
def test_ask_cites_exactly_the_retrieved_pages(indexed, capsys, generator_checkpoints, family):
    docs, index = indexed
    assert main(["search", "total amount due", "--index", index, "-k", "2", "--json"]) == 0
    retrieved = _json(capsys)["results"]
    code = main(
        [
            "ask",
            "total amount due",
            "--index",
            index,
            "-k",
            "2",
            "--max-new-tokens",
            "5",
            "--answer-model",
            str(generator_checkpoints[family]),
            "--json",
        ]
    )
    result = _json(capsys)
    assert code == 0
    assert set(result) >= {"question", "answer", "citations", "answer_model", "timings"}
    assert result["question"] == "total amount due" and isinstance(result["answer"], str)
    assert [(c["path"], c["page"]) for c in result["citations"]] == [(r["path"], r["page"]) for r in retrieved]
    assert [c["score"] for c in result["citations"]] == pytest.approx([r["score"] for r in retrieved], abs=1e-4)
    assert result["answer_model"] == str(generator_checkpoints[family])
    assert result["timings"]["retrieve_s"] > 0 and result["timings"]["generate_s"] > 0
    timings = result["timings"]
    assert 0 < timings["first_token_s"] <= timings["generate_s"]
    # the stages before the first token lie inside it (each is rounded to the millisecond)
    assert timings["prepare_s"] > 0 and timings["prefill_s"] > 0
    assert timings["prepare_s"] + timings["prefill_s"] <= timings["first_token_s"] + 0.002


def test_ask_streams_text_then_sources(indexed, capsys, generator_checkpoints):
    _, index = indexed
    code = main(
        [
            "ask",
            "what is on the receipt",
            "--index",
            index,
            "-k",
            "1",
            "--max-new-tokens",
            "4",
            "--answer-model",
            str(generator_checkpoints["idefics3"]),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "Sources (* = cited in the answer):" in out and "[1] " in out


def test_changed_source_is_not_used(indexed, capsys, generator_checkpoints):
    docs, index = indexed
    model = str(generator_checkpoints["idefics3"])
    make_pdf(docs / "invoice.pdf", 3, title="rewritten")
    make_image(docs / "receipt.png", text="rewritten")
    code = main(["ask", "total", "--index", index, "--answer-model", model, "--json"])
    err = capsys.readouterr().err
    assert code == 2 and "changed since it was indexed" in err


def test_empty_index_and_missing_model_are_one_line_errors(
    tmp_path, capsys, retriever_checkpoint, generator_checkpoints
):
    index = str(tmp_path / "empty")
    (tmp_path / "nothing").mkdir()
    main(["ingest", str(tmp_path / "nothing"), "--index", index, "--model", str(retriever_checkpoint)])
    capsys.readouterr()
    code = main(["ask", "anything", "--index", index, "--answer-model", str(generator_checkpoints["idefics3"])])
    err = capsys.readouterr().err
    assert code == 2 and "no pages yet" in err and err.count("\n") == 1
    code = main(["ask", "anything", "--index", index, "--answer-model", str(tmp_path / "no-model")])
    err = capsys.readouterr().err
    assert code == 2 and "no-model" in err and "Traceback" not in err


def test_chat_over_a_pipe_keeps_and_bounds_history(indexed, capsys, monkeypatch, generator_checkpoints):
    """chat --json: every stdout line is one JSON object, answers and commands alike."""
    _, index = indexed
    questions = (
        "first question\nsecond question\n/pages\n\n   \n/nonsense\nthird question\n/reset\n/pages\n/quit\nignored\n"
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(questions))
    code = main(
        [
            "chat",
            "--index",
            index,
            "-k",
            "2",
            "--max-pages",
            "2",
            "--max-images",
            "1",
            "--max-new-tokens",
            "3",
            "--answer-model",
            str(generator_checkpoints["idefics3"]),
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    lines = [json.loads(line) for line in captured.out.splitlines()]  # every line parses
    assert [line.get("question", line.get("command")) for line in lines] == [
        "first question",
        "second question",
        "/pages",
        "/nonsense",
        "third question",
        "/reset",
        "/pages",
    ]
    turns = [line for line in lines if "answer" in line]
    assert all(len(t["citations"]) == 2 for t in turns)
    # /pages after two turns of 2 pages each: bounded to 1 image; after /reset: none
    assert len(lines[2]["pages"]) == 1 and set(lines[2]["pages"][0]) == {"path", "page"}
    assert lines[3]["error"] == "unknown command /nonsense; use /pages, /reset, /quit"
    assert lines[-1] == {"command": "/pages", "pages": []}
    assert any("Dropped" in note for t in turns for note in t["notes"])
    assert "unknown command /nonsense" in captured.err


def test_piped_chat_text_echoes_each_question_before_its_answer(indexed, capsys, monkeypatch, generator_checkpoints):
    _, index = indexed
    monkeypatch.setattr("sys.stdin", io.StringIO("first question\n/pages\nsecond question\n"))
    code = main(
        [
            "chat",
            "--index",
            index,
            "-k",
            "1",
            "--max-new-tokens",
            "3",
            "--answer-model",
            str(generator_checkpoints["idefics3"]),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    echoed = [line for line in out.splitlines() if line.startswith("> ")]
    assert echoed == ["> first question", "> second question"]
    first, second = out.index("> first question"), out.index("> second question")
    assert out.index("Sources", first) < second  # the first answer sits between the two questions
    assert out.index("Sources", second) > second


def test_describe_and_ask_image_need_no_index(tmp_path, capsys, generator_checkpoints):
    model = str(generator_checkpoints["idefics3"])
    pdf = make_pdf(tmp_path / "report.pdf", 3)
    assert main(["describe", str(pdf), "--page", "2", "--max-new-tokens", "4", "--answer-model", model, "--json"]) == 0
    described = _json(capsys)
    assert (described["path"], described["page"]) == (str(pdf), 2) and isinstance(described["description"], str)

    scan = make_image(tmp_path / "scan.png", text="stamped 2024-03-01")
    assert (
        main(
            [
                "ask",
                "--image",
                str(scan),
                "Which date is stamped?",
                "--max-new-tokens",
                "4",
                "--answer-model",
                model,
                "--json",
            ]
        )
        == 0
    )
    answered = _json(capsys)
    assert [(c["path"], c["page"], c["score"]) for c in answered["citations"]] == [(str(scan), 1, None)]

    code = main(["describe", str(pdf), "--page", "9", "--answer-model", model])
    assert code == 2 and "page 9" in capsys.readouterr().err
