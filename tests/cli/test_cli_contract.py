"""The CLI contract of README, command by command, against bad input.

Every case must end with README's exit status, exactly one line on stderr, no traceback, and
nothing new on disk (no index folder for a command that did nothing). Cases that fail before a
model is needed load none; the others use the tiny checkpoints of conftest.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.documents import make_image, make_pdf
from helpers.paths import REPO

from docqa.cli.main import main


@pytest.fixture(scope="module")
def world(tmp_path_factory, retriever_checkpoints, generator_checkpoints) -> dict[str, str]:
    """Files, a small index built with the tiny ColModernVBert, and the tiny models, by name."""
    from docqa import DocIndex

    root = tmp_path_factory.mktemp("contract")
    docs = root / "docs"
    make_pdf(docs / "report.pdf", 2)
    make_image(docs / "scan.png")
    (root / "notes.log").write_text("not a page\n")
    (root / "qrels.jsonl").write_text('{"query": "total", "relevant": [{"path": "a.pdf", "page": 1, "grade": 1}]}\n')
    (root / "plain-folder").mkdir()
    index = DocIndex.open(root / "index", create=True)
    index.ingest([docs], model=str(retriever_checkpoints["colmodernvbert"]))
    index.close()
    return {
        "docs": str(docs),
        "pdf": str(docs / "report.pdf"),
        "txt": str(root / "notes.log"),
        "qrels": str(root / "qrels.jsonl"),
        "folder": str(root / "plain-folder"),
        "index": str(root / "index"),
        "missing": str(root / "no-such-thing"),
        "retriever": str(retriever_checkpoints["colmodernvbert"]),
        "colpali": str(retriever_checkpoints["colpali"]),
        "answerer": str(generator_checkpoints["idefics3"]),
    }


def _tree(*roots: Path) -> set[Path]:
    """Every path under `roots`, but SQLite's -wal/-shm files, which any reader of an index may create."""
    return {
        path
        for root in roots
        if root.exists()
        for path in [root, *root.rglob("*")]
        if not path.name.endswith(("-wal", "-shm"))
    }


# (command line with {placeholders} from `world`, text the one stderr line must contain)
CASES = {
    "ingest: no PATH": ("ingest", "the following arguments are required: PATH"),
    "ingest: missing path": ("ingest {missing} --model {retriever}", "no such file or folder"),
    "ingest: answer model as --model": ("ingest {docs} --model {answerer}", "not a retriever"),
    "ingest: missing model": ("ingest {docs} --model {missing}", "cannot load retriever"),
    "ingest: hub id offline": ("ingest {docs} --model nobody/nothing", "HF_HUB_OFFLINE"),
    "ingest: cuda on CPU torch": ("ingest {docs} --model {retriever} --device cuda", "device 'cuda'"),
    "ingest: nonsense device": ("ingest {docs} --model {retriever} --device nonsense", "unknown device 'nonsense'"),
    "ingest: batch size 0": ("ingest {docs} --batch-size 0", "--batch-size: must be at least 1"),
    "ingest: huge image edge": ("ingest {docs} --image-edge 1000000", "--image-edge: at most"),
    "ingest: tag without a value": ("ingest {docs} --tag project", "--tag: expected KEY=VALUE"),
    "ingest: wrong model for the index": ("ingest {docs} --index {index} --model {colpali}", "was built with model"),
    "search: no QUERY": ("search", "the following arguments are required: QUERY"),
    "search: empty query": ("search '' --index {index}", "the query is empty"),
    "search: blank query": ("search '  \t' --index {index}", "the query is empty"),
    "search: missing index": ("search words --index {missing}", "no index at"),
    "search: folder that is no index": ("search words --index {folder}", "no index at"),
    "search: missing default index": ("search words", "no index at"),
    "search: k 0": ("search words -k 0 --index {index}", "-k: must be at least 1"),
    "search: k not a number": ("search words -k many --index {index}", "-k: invalid"),
    "search: cuda on CPU torch": ("search words --index {index} --device cuda:1", "device 'cuda:1'"),
    "search: nonsense device": ("search words --index {index} --device gpu0", "unknown device 'gpu0'"),
    "search: filter without a value": ("search words --index {index} --where lang", "--where: expected KEY=VALUE"),
    "search: heatmaps into a file": ("search words --index {index} --heatmaps {pdf}", "--heatmaps"),
    "info: missing index": ("info --index {missing}", "no index at"),
    "remove: no PATH": ("remove --index {index}", "the following arguments are required: PATH"),
    "remove: missing index": ("remove {pdf} --index {missing}", "no index at"),
    "ask: no QUESTION": ("ask --index {index}", "the following arguments are required: QUESTION"),
    "ask: empty question": ("ask '' --index {index} --answer-model {answerer}", "the question is empty"),
    "ask: blank question": ("ask ' ' --index {index} --answer-model {missing}", "the question is empty"),
    "ask: missing index": ("ask words --index {missing} --answer-model {answerer}", "no index at"),
    "ask: retriever as answer model": (
        "ask words --index {index} --answer-model {retriever}",
        "not an image-text-to-text model",
    ),
    "ask: missing answer model": ("ask words --index {index} --answer-model {missing}", "cannot load answer model"),
    "ask: cuda on CPU torch": ("ask words --index {index} --answer-model {answerer} --device cuda", "device 'cuda'"),
    "ask: max pages 0": ("ask words --index {index} --max-pages 0", "--max-pages: must be at least 1"),
    "ask: max new tokens 0": ("ask words --index {index} --max-new-tokens 0", "--max-new-tokens: must be at least 1"),
    "ask: huge answer": (
        "ask words --index {index} --answer-model {answerer} --max-new-tokens 100000000",
        "leaves no room",
    ),
    "ask --image: missing file": ("ask words --image {missing} --answer-model {answerer}", "cannot read the file"),
    "ask --image: not a page": ("ask words --image {txt} --answer-model {answerer}", "not a PDF or a supported image"),
    "chat: missing index": ("chat --index {missing} --answer-model {answerer}", "no index at"),
    "chat: wrong answer model": ("chat --index {index} --answer-model {retriever}", "not an image-text-to-text model"),
    "chat: nonsense device": ("chat --index {index} --device cpu:x", "unknown device 'cpu:x'"),
    "chat: max images 0": ("chat --index {index} --max-images 0", "--max-images: must be at least 1"),
    "describe: no FILE": ("describe", "the following arguments are required: FILE"),
    "describe: missing file": ("describe {missing} --answer-model {answerer}", "cannot read the file"),
    "describe: page past the end": ("describe {pdf} --page 9 --answer-model {answerer}", "has no page 9"),
    "describe: page 0": ("describe {pdf} --page 0", "--page: must be at least 1"),
    "describe: cuda on CPU torch": ("describe {pdf} --device cuda --answer-model {answerer}", "device 'cuda'"),
    "describe: missing answer model": ("describe {pdf} --answer-model {missing}", "cannot load answer model"),
    "eval: no QRELS": ("eval --index {index}", "the following arguments are required: QRELS"),
    "eval: missing qrels": ("eval {missing} --index {index}", "no such file or folder"),
    "eval: qrels not JSON": ("eval {txt} --index {index}", "not valid JSON"),
    "eval: missing index": ("eval {qrels} --index {missing}", "no index at"),
    "eval: cuda on CPU torch": ("eval {qrels} --index {index} --device cuda", "device 'cuda'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(case, world, capsys, docqa_home):
    command, expected = CASES[case]
    argv = shlex.split(command.format(**world))
    watched = (docqa_home, Path(world["index"]), Path(world["missing"]), Path(world["folder"]))
    before = _tree(*watched)
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err.count("\n") == 1 and captured.err.endswith("\n"), captured.err
    assert expected in captured.err and "Traceback" not in captured.err
    assert captured.out == ""
    assert _tree(*watched) == before


def test_commands_without_a_model_do_not_import_torch(world):
    """`info`, `remove` and `--help` never import the model stack (it costs seconds)."""
    script = (
        "import json, sys\n"
        "from docqa.cli.main import main\n"
        f"codes = [main(['info', '--index', {world['index']!r}]), main(['remove', 'x', '--index', {world['index']!r}])]\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    codes.append(e.code)\n"
        "print(json.dumps({'codes': codes, 'heavy': [m for m in ('torch', 'transformers') if m in sys.modules]}))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    outcome = json.loads(result.stdout.splitlines()[-1])
    assert outcome == {"codes": [0, 1, 0], "heavy": []}


def test_huge_requests_are_lowered_with_a_note(world, capsys):
    code = main(["search", "words", "--index", world["index"], "-k", "100000", "--json"])
    captured = capsys.readouterr()
    assert code == 0 and len(json.loads(captured.out)["results"]) == 3  # every page the index has
    assert captured.err == "docqa: note: -k 100000 lowered to 1000: the most pages one search returns\n"

    code = main(
        [
            "ask",
            "words",
            "--index",
            world["index"],
            "-k",
            "100000",
            "--max-pages",
            "100000",
            "--max-new-tokens",
            "2",
            "--answer-model",
            world["answerer"],
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0 and len(json.loads(captured.out)["citations"]) == 3
    assert "-k 100000 lowered to 1000" in captured.err
    assert "--max-pages 100000 lowered to 20: the most page images" in captured.err


def test_pages_are_bounded_by_the_answer_models_context(world):
    """With a long answer, fewer pages fit: the bound holds for the prompt the model really gets."""
    from PIL import Image

    from docqa.answer.ask import Asker
    from docqa.answer.prompt import Conversation, PageImage
    from docqa.models.generator import Generator

    generator = Generator.load(world["answerer"], device="cpu")
    asker = Asker(generator, k=50, max_pages=50, max_new_tokens=5000, conversation=Conversation(max_images=50))
    budget = generator.context_budget()
    assert 1 <= asker.max_pages < 20 and asker.conversation.max_images == asker.max_pages
    assert [note.split(":")[0] for note in asker.notes] == [
        f"--max-pages 50 lowered to {asker.max_pages}",
        f"--max-images 50 lowered to {asker.max_pages}",
    ]
    page = PageImage("p.pdf", 1, None, Image.new("RGB", (generator.max_image_edge,) * 2, "white"))
    question = "x " * 128  # as long a question as the budget allows for
    fits = generator.prepare(None, question, [page] * asker.max_pages)["input_ids"].shape[1]
    one_more = generator.prepare(None, question, [page] * (asker.max_pages + 1))["input_ids"].shape[1]
    assert fits + 5000 <= budget.positions < one_more + 5000
