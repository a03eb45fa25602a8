"""Ctrl-C (SIGINT) stops every command within 2 s with exit 130, wherever it lands.

Each case runs the real CLI in a real child process (tests/helpers/interrupt_harness.py), holds it at one
stage (rendering a page, the answer model's prefill, decoding, ingesting) and sends SIGINT there.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.documents import make_image, make_pdf
from helpers.paths import HELPERS, REPO, TESTS

from docqa.cli.common import KEPT_ON_INTERRUPT
from docqa.models.engines import openvino_missing
from docqa.models.generator import Generator

LIMIT_S = 2.0


class Harness:
    def __init__(self) -> None:
        # The commands run in the child itself (each stage is slowed there), never in a resident process.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]), "DOCQA_DAEMON": "off"}
        self.process = subprocess.Popen(
            [sys.executable, str(HELPERS / "interrupt_harness.py")],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self._reply() == {"ready": True}

    def _reply(self) -> dict:
        return json.loads(self.process.stdout.readline())

    def interrupt(
        self,
        workdir: Path,
        stage: str,
        argv: list[str],
        stdin: str = "",
        signals: int = 1,
        env: dict[str, str] | None = None,
    ):
        """Run `docqa argv` (with `env` added to its environment), wait for `stage`, send SIGINT
        (`signals` times, 0.1 s apart).

        Returns (exit status, seconds from the first SIGINT to the exit, stdout, stderr)."""
        out, err = workdir / f"{stage}.out", workdir / f"{stage}.err"
        request = {"stage": stage, "argv": argv, "stdin": stdin, "out": str(out), "err": str(err), "env": env or {}}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        pid = self._reply()["pid"]
        deadline = time.monotonic() + 60
        while f"STAGE {stage}" not in (err.read_text() if err.exists() else ""):
            assert time.monotonic() < deadline, f"{stage} never reached: {err.read_text()}"
            time.sleep(0.02)
        time.sleep(0.2)  # well inside the stage
        sent = time.monotonic()
        for number in range(signals):
            if number:
                time.sleep(0.1)
            os.kill(pid, signal.SIGINT)
        reply = self._reply()
        elapsed = time.monotonic() - sent
        assert reply["pid"] == pid
        return reply["status"], elapsed, out.read_text(), err.read_text()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def harness():
    started = Harness()
    yield started
    started.close()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, retriever_checkpoints, generator_checkpoints) -> dict:
    from docqa import DocIndex

    root = tmp_path_factory.mktemp("interrupts")
    make_pdf(root / "docs" / "invoice.pdf", 2)
    index = DocIndex.open(root / "index", create=True)
    index.ingest([root / "docs"], model=str(retriever_checkpoints["colmodernvbert"]))
    index.close()
    return {
        "root": root,
        "index": str(root / "index"),
        "pdf": str(root / "docs" / "invoice.pdf"),
        "retriever": str(retriever_checkpoints["colmodernvbert"]),
        "answerer": str(generator_checkpoints["idefics3"]),
    }


def _argv(command: str, setup: dict) -> tuple[list[str], str]:
    answer = ["--answer-model", setup["answerer"], "--max-new-tokens", "500"]
    if command == "ask":
        return ["ask", "what is the total?", "--index", setup["index"], "-k", "1", *answer], ""
    if command == "chat":
        return ["chat", "--index", setup["index"], "-k", "1", *answer], "what is the total?\n"
    return ["describe", setup["pdf"], *answer], ""


def _assert_clean_stop(status: int, elapsed: float, err: str, message: str) -> None:
    lines = [line for line in err.splitlines() if not line.startswith("STAGE ")]
    assert status == 130, err
    assert elapsed < LIMIT_S, f"took {elapsed:.2f} s to stop"
    assert lines == [message], err  # no traceback, no "terminate called ..." from torch


@pytest.mark.parametrize("stage", ["render", "prefill", "decode"])
@pytest.mark.parametrize("command", ["ask", "chat", "describe"])
def test_question_commands_stop_within_2_s(harness, setup, tmp_path, command, stage):
    argv, stdin = _argv(command, setup)
    status, elapsed, out, err = harness.interrupt(tmp_path, stage, argv, stdin)
    _assert_clean_stop(status, elapsed, err, "docqa: interrupted")
    if stage == "decode" and command != "chat":
        assert out.strip(), "the answer was streaming when Ctrl-C came"


@pytest.mark.skipif(openvino_missing() is not None, reason=str(openvino_missing()))
@pytest.mark.parametrize("stage", ["prefill", "decode"])
def test_answers_on_the_openvino_engine_stop_within_2_s(harness, setup, tmp_path_factory, tmp_path, stage):
    """The fast engine's vision encoder (OpenVINO) and int8 decoder stop on Ctrl-C like torch's do."""
    argv, _ = _argv("describe", setup)
    cache = {"DOCQA_CACHE": str(setup["root"] / "engine-cache")}
    with pytest.MonkeyPatch.context() as patch:  # convert here first: the child's stderr is then only its own
        patch.setenv("DOCQA_CACHE", cache["DOCQA_CACHE"])
        Generator.load(setup["answerer"], device="cpu", engine="openvino")
    status, elapsed, out, err = harness.interrupt(tmp_path, stage, [*argv, "--engine", "openvino"], env=cache)
    _assert_clean_stop(status, elapsed, err, "docqa: interrupted")
    if stage == "decode":
        assert out.strip(), "the answer was streaming when Ctrl-C came"


def test_second_ctrl_c_during_prefill_does_not_abort(harness, setup, tmp_path):
    argv, _ = _argv("ask", setup)
    status, elapsed, _, err = harness.interrupt(tmp_path, "prefill", argv, signals=2)
    _assert_clean_stop(status, elapsed, err, "docqa: interrupted")


def test_ingest_stops_within_2_s_and_keeps_committed_documents(harness, setup, tmp_path):
    from docqa import DocIndex

    make_image(tmp_path / "docs" / "a.png", text="first")
    make_image(tmp_path / "docs" / "b.png", text="second")
    index = tmp_path / "fresh-index"
    argv = ["ingest", str(tmp_path / "docs"), "--index", str(index), "--model", setup["retriever"], "--batch-size", "1"]
    status, elapsed, _, err = harness.interrupt(tmp_path, "ingest", argv)
    _assert_clean_stop(status, elapsed, err, f"docqa: {KEPT_ON_INTERRUPT}")
    reopened = DocIndex.open(index)
    assert reopened.info().documents == 1
    assert [hit.path for hit in reopened.search("first", k=5)] == [str(tmp_path / "docs" / "a.png")]


def test_ctrl_c_mid_document_keeps_its_encoded_pages_for_the_next_ingest(harness, setup, tmp_path):
    """Ctrl-C while a long PDF's second page is being encoded: its first page is kept (invisible to
    search), and the next ingest takes it instead of encoding it again."""
    from docqa import DocIndex

    make_pdf(tmp_path / "docs" / "long.pdf", 3, title="long")
    index = tmp_path / "fresh-index"
    argv = ["ingest", str(tmp_path / "docs"), "--index", str(index), "--model", setup["retriever"], "--batch-size", "1"]
    status, elapsed, _, err = harness.interrupt(tmp_path, "ingest", argv)
    _assert_clean_stop(status, elapsed, err, f"docqa: {KEPT_ON_INTERRUPT}")
    reopened = DocIndex.open(index)
    assert reopened.info().documents == 0  # not searchable until the document is complete
    report = reopened.ingest([tmp_path / "docs"], model=setup["retriever"])
    assert report.resumed == [(str(tmp_path / "docs" / "long.pdf"), 1)]
    assert report.pages_added == 3 and report.pages_resumed == 1
    assert reopened.info().documents == 1
