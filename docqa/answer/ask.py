"""Ask: retrieve the best pages for a question and answer from their images, with citations.

Used by `docqa ask`, `docqa chat` (one turn at a time, keeping a Conversation), `docqa describe`
and `docqa ask --image` (one page or image, no index).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from ..api import Searchable
from ..config import MAX_PAGE_IMAGES, MAX_RESULTS, MAX_RESULTS_WHY, lowered
from ..errors import InputFileError, NoResultsError, QueryError, SourceChangedError
from ..inputs.render import render_pages
from ..inputs.sources import classify, sha256_of
from .citations import find_citations
from .prompt import Answer, Conversation, PageImage, StreamTimes, check_question

if TYPE_CHECKING:  # the model stack is imported only where a model is loaded
    from ..models.generator import Generator

DESCRIBE_PROMPT = (
    "Describe this page: what kind of document it is, what it is about, and the key facts it"
    " shows (names, dates, amounts, headings, figures)."
)
HISTORY_QUESTIONS = 2  # earlier questions added to a chat turn's retrieval query


@dataclass
class AskResult:
    """An answer plus where its pages came from and how long each stage took."""

    answer: Answer
    retrieve_s: float
    notes: list[str] = field(default_factory=list)
    first_token_s: float | None = None  # from the start of answering (prompt, prefill) to the first text; None: no text
    times: StreamTimes = field(default_factory=StreamTimes)  # the prompt's preparation and the prefill, inside that

    def to_json(self) -> dict:
        return {
            "question": self.answer.question,
            "answer": self.answer.text,
            "citations": [
                {"path": c.path, "page": c.page, "score": c.score, "cited": c.cited} for c in self.answer.citations
            ],
            "answer_model": self.answer.model,
            "timings": {
                "retrieve_s": round(self.retrieve_s, 3),
                "first_token_s": _rounded(self.first_token_s),
                "prepare_s": _rounded(self.times.prepare_s),
                "prefill_s": _rounded(self.times.prefill_s),
                "generate_s": round(self.answer.generate_s, 3),
            },
            "notes": self.notes,
        }


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


class AnswerStream:
    """Iterate to get the answer's text as it is generated; `result` is set once it is done."""

    def __init__(
        self,
        pieces: Iterator[str],
        finish: Callable[[str, float, float | None], AskResult],
        pages: list[PageImage] | None = None,
    ) -> None:
        self._pieces = pieces
        self._finish = finish
        self.pages = pages or []  # the pages shown to the model, in citation order
        self.result: AskResult | None = None

    def __iter__(self) -> Iterator[str]:
        started = time.perf_counter()
        first: float | None = None
        text: list[str] = []
        for piece in self._pieces:
            if first is None:
                first = time.perf_counter() - started
            text.append(piece)
            yield piece
        self.result = self._finish("".join(text), time.perf_counter() - started, first)

    def run(self) -> AskResult:
        """Generate without streaming."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result


class Asker:
    """Questions over one index (or over given pages), one generator, one conversation."""

    def __init__(
        self,
        generator: Generator,
        index: Searchable | None = None,
        *,
        k: int = 3,
        max_pages: int = 3,
        max_new_tokens: int = 256,
        conversation: Conversation | None = None,
        where: dict | None = None,
        path: str | None = None,
    ) -> None:
        """Bounds what one question may cost: `k`, `max_pages` and the conversation's `max_images`
        are lowered to what the model's context holds (and to MAX_RESULTS / MAX_PAGE_IMAGES), each
        with a line in `notes`; QueryError when `max_new_tokens` leaves no room for one page."""
        self.generator = generator
        self.index = index
        self.max_new_tokens = max_new_tokens
        self.notes: list[str] = []
        self.k = self._bounded("-k", k, MAX_RESULTS, MAX_RESULTS_WHY)
        ceiling, why = self._page_ceiling()
        self.max_pages = self._bounded("--max-pages", max_pages, ceiling, why)
        if conversation is None:
            conversation = Conversation(max_images=self.max_pages)
        else:
            conversation.max_images = self._bounded("--max-images", conversation.max_images, ceiling, why)
        self.conversation = conversation
        self.where = where or {}  # search filters: document tags that must hold, and a path glob
        self.path = path

    def _page_ceiling(self) -> tuple[int, str]:
        """The most page images one prompt may hold, and why."""
        budget = self.generator.context_budget()
        fit = budget.pages_that_fit(self.max_new_tokens)
        if fit is None or fit >= MAX_PAGE_IMAGES:
            return MAX_PAGE_IMAGES, "the most page images docqa shows the model for one question"
        if fit < 1:
            assert budget.positions is not None  # fit is None without a known context
            room = budget.positions - budget.prompt_tokens - budget.page_tokens
            raise QueryError(
                f"--max-new-tokens {self.max_new_tokens} leaves no room for a page image in the "
                f"{budget.positions}-token context of {self.generator.model_id} (a page takes "
                f"{budget.page_tokens} tokens); use --max-new-tokens {room} or less"
            )
        return fit, (
            f"what fits in the {budget.positions}-token context of {self.generator.model_id} at "
            f"{budget.page_tokens} tokens a page, next to an answer of {self.max_new_tokens} tokens"
        )

    def _bounded(self, option: str, value: int, ceiling: int, why: str) -> int:
        value, note = lowered(option, value, ceiling, why)
        if note is not None:
            self.notes.append(note)
        return value

    def retrieve(self, question: str) -> tuple[list[PageImage], list[str]]:
        """The top pages for `question` (in the context of the conversation so far), as images
        re-rendered from their source files; pages whose file changed are left out, with a note."""
        if self.index is None:
            raise NoResultsError("no index to search; ingest documents first or use --image FILE")
        earlier = [turn.question for turn in self.conversation.turns[-HISTORY_QUESTIONS:]]
        hits = self.index.search("\n".join([*earlier, question]), k=self.k, where=self.where, path=self.path)
        if not hits:
            raise NoResultsError(f"{self.index.path} has no pages yet; run `docqa ingest PATH...` first")
        pages: list[PageImage] = []
        notes: list[str] = []
        digests: dict[str, str | None] = {}
        for hit in hits[: self.max_pages]:
            if hit.path not in digests:
                try:
                    digests[hit.path] = sha256_of(hit.file)
                except OSError:
                    digests[hit.path] = None
            if digests[hit.path] != hit.sha256:
                state = "is gone" if digests[hit.path] is None else "changed"
                notes.append(
                    f"{hit.path} {state} since it was indexed, so page {hit.page} was not used;"
                    " run `docqa ingest` again to update the index"
                )
                continue
            image = load_page(hit.file, hit.page, self.generator.max_image_edge, kind=hit.kind)
            pages.append(PageImage(hit.path, hit.page, hit.score, image, page_id=hit.page_id, also_at=hit.also_at))
        if not pages:
            raise SourceChangedError(" ".join(notes))
        return pages, notes

    def ask(self, question: str) -> AnswerStream:
        """Retrieve, then stream the answer; the turn joins the conversation when it finishes."""
        check_question(question)
        started = time.perf_counter()
        pages, notes = self.retrieve(question)
        return self.over_pages(question, pages, retrieve_s=time.perf_counter() - started, notes=notes)

    def over_pages(
        self, question: str, pages: list[PageImage], *, retrieve_s: float = 0.0, notes: list[str] | None = None
    ) -> AnswerStream:
        """Stream an answer from the given pages (no retrieval)."""
        check_question(question)
        dropped_before = len(self.conversation.notes)
        times = StreamTimes()
        pieces = self.generator.stream(
            self.conversation, question, pages, max_new_tokens=self.max_new_tokens, times=times
        )

        def finish(text: str, generate_s: float, first_token_s: float | None) -> AskResult:
            answer = Answer(question, text, find_citations(text, pages), self.generator.model_id, generate_s)
            notes_now = [*(notes or []), *self.conversation.notes[dropped_before:]]
            return AskResult(answer, retrieve_s, notes_now, first_token_s, times)

        return AnswerStream(pieces, finish, pages)


def load_page(path: Path, page: int, edge: int, kind: str | None = None) -> Image.Image:
    """Render one page (1-based) of a PDF or image file, fitted into an `edge` square."""
    if kind is None:
        try:
            kind = classify(path).kind
        except OSError as error:
            raise InputFileError(str(path), f"cannot read the file: {error.strerror or error}") from error
        if kind is None:
            raise InputFileError(str(path), "not a PDF or a supported image")
    for rendered in render_pages(path, kind, edge, first_page=page, chunk_pages=1):
        return rendered.image
    raise InputFileError(str(path), f"has no page {page}")


def page_of_file(path: Path, page: int, edge: int) -> PageImage:
    """One page of a file given on the command line (describe, ask --image)."""
    return PageImage(str(path.absolute()), page, None, load_page(path, page, edge))
