"""The command line through its --json output, exit statuses, and documentation."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from helpers.documents import make_image, make_pdf
from helpers.paths import REPO

from docqa.cli.main import build_parser, main


def run(capsys, *argv: str) -> tuple[int, dict | None, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    payload = json.loads(captured.out) if "--json" in argv and captured.out.strip() else None
    return code, payload, captured.err


def _commands() -> list[str]:
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(subparsers.choices)


def test_ingest_search_info_remove_json(tmp_path, capsys, retriever_checkpoint):
    docs = tmp_path / "docs"
    make_pdf(docs / "a.pdf", 2)
    make_image(docs / "b.png")
    index = str(tmp_path / "idx")

    code, report, _ = run(
        capsys,
        "ingest",
        str(docs),
        "--index",
        index,
        "--model",
        str(retriever_checkpoint),
        "--batch-size",
        "2",
        "--json",
    )
    assert code == 0
    counts = {"added": 2, "updated": 0, "unchanged": 0, "removed": 0, "moved": 0, "failed": 0, "skipped": 0}
    assert report["documents"] == {**counts, "duplicates": 0}
    assert report["pages_added"] == 3 and report["failures"] == [] and report["index"] == index

    code, found, _ = run(capsys, "search", "page two", "--index", index, "-k", "2", "--json")
    assert code == 0 and found["query"] == "page two"
    assert [r["rank"] for r in found["results"]] == [1, 2]
    assert set(found["results"][0]) == {"rank", "score", "path", "page", "document_id", "page_id", "also_at"}

    code, info, _ = run(capsys, "info", "--index", index, "--json")
    assert code == 0
    assert (info["documents"], info["pages"], info["model"]) == (2, 3, str(retriever_checkpoint))
    assert info["bytes_on_disk"] > 0

    code, removed, _ = run(capsys, "remove", str(docs / "a.pdf"), "--index", index, "--json")
    assert code == 0 and removed["removed"] == [str(docs / "a.pdf")]
    assert run(capsys, "info", "--index", index, "--json")[1]["pages"] == 1


def test_named_index_lives_under_docqa_home(tmp_path, capsys, retriever_checkpoint, docqa_home):
    make_image(tmp_path / "docs" / "x.png")
    code, report, _ = run(
        capsys, "ingest", str(tmp_path / "docs"), "--index", "work", "--model", str(retriever_checkpoint), "--json"
    )
    assert code == 0 and report["index"] == str(docqa_home / "indexes" / "work")
    assert (docqa_home / "indexes" / "work" / "docqa.db").exists()


def test_partial_failure_exits_1_and_names_the_file(tmp_path, capsys, retriever_checkpoint):
    make_image(tmp_path / "docs" / "ok.png")
    (tmp_path / "docs" / "broken.pdf").write_bytes(b"%PDF-1.7\n%%EOF garbage")
    code, report, _ = run(capsys, "ingest", str(tmp_path / "docs"), "--model", str(retriever_checkpoint), "--json")
    assert code == 1
    assert report["documents"]["added"] == 1 and report["documents"]["failed"] == 1
    assert report["failures"][0]["path"] == str(tmp_path / "docs" / "broken.pdf")


def test_errors_exit_2_with_one_line_and_no_traceback(tmp_path, capsys, retriever_checkpoints):
    code, _, err = run(capsys, "search", "anything", "--index", "nope")
    assert code == 2 and err.count("\n") == 1 and "no index" in err

    code, _, err = run(capsys, "ingest", str(tmp_path), "--model", str(tmp_path / "missing-model"))
    assert code == 2 and "missing-model" in err and "--model" in err and "Traceback" not in err

    make_image(tmp_path / "docs" / "x.png")
    run(capsys, "ingest", str(tmp_path / "docs"), "--model", str(retriever_checkpoints["colmodernvbert"]))
    code, _, err = run(capsys, "ingest", str(tmp_path / "docs"), "--model", str(retriever_checkpoints["colpali"]))
    assert code == 2 and "was built with model" in err

    with pytest.raises(SystemExit) as usage:
        main(["search"])
    assert usage.value.code == 2


def test_every_command_is_documented_in_readme_and_help():
    readme = (REPO / "README.md").read_text()
    # options are described in README or the hand-written docs/ (docs/cli.md is generated from --help)
    written = readme + "".join(p.read_text() for p in sorted((REPO / "docs").glob("*.md")) if p.name != "cli.md")
    for command in _commands():
        assert re.search(rf"docqa {command}\b", readme), f"README does not document `docqa {command}`"
        parser = build_parser()
        subparser = next(a for a in parser._actions if a.dest == "command").choices[command]
        assert subparser.description, f"`docqa {command} --help` has no description"
        for action in subparser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{command} {action.option_strings} has no help"
                for flag in action.option_strings:
                    if flag.startswith("--"):
                        assert flag in written, f"neither README nor docs/ mention {command} {flag}"


@pytest.mark.parametrize("entry", [["-m", "docqa"], [str(REPO / "cli.py")]])
def test_entry_points_show_help(entry):
    result = subprocess.run([sys.executable, *entry, "--help"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0
    for command in _commands():
        assert command in result.stdout
