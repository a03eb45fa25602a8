"""What the answer model is shown: the pages (``PageImage``), the grounding instructions, the
chat messages of a question and of the earlier turns kept in a ``Conversation`` (whose page images
are bounded, oldest dropped first), and what comes back (``Answer`` with its ``Citation``s).

Pure: no model, no torch; docqa.models.generator turns these messages into model inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import QueryError

DEFAULT_MAX_IMAGES = 4

INSTRUCTIONS = (
    "Answer the question using only the document pages shown below. Each page image is preceded by "
    "its label. Cite every page you use as [file, page N], for example [report.pdf, page 4]. If the "
    "pages do not contain the answer, say that it is not found in the pages."
)


def check_question(question: str) -> None:
    """Refuse an empty or blank question before any work is done."""
    if not question.strip():
        raise QueryError("the question is empty; ask something")


@dataclass
class PageImage:
    """One page to answer from: its source file, 1-based page number, retrieval score and image."""

    path: str
    page: int
    score: float | None
    image: Image.Image
    page_id: int | None = None  # the indexed page it came from, if any
    also_at: tuple[str, ...] = ()  # other paths with the same content (the indexed document's aliases)

    @property
    def label(self) -> str:
        """How the page is named in prompts and citations, e.g. ``report.pdf, page 4``."""
        return f"{Path(self.path).name}, page {self.page}"


@dataclass
class Citation:
    """A page that was shown to the model; ``cited`` is True when the answer text refers to it."""

    path: str
    page: int
    score: float | None
    cited: bool


@dataclass
class StreamTimes:
    """Where a streamed answer's time before its first token went, filled in as it runs (seconds)."""

    prepare_s: float | None = None  # the prompt and page images made into model inputs
    prefill_s: float | None = None  # the model's prefill: generate() given the inputs to its first new token


@dataclass
class Answer:
    """A generated answer with one citation per page shown (in the order shown)."""

    question: str
    text: str
    citations: list[Citation]
    model: str
    generate_s: float


@dataclass
class Turn:
    """One question/answer exchange. ``dropped`` pages no longer have their image in the context."""

    question: str
    pages: list[PageImage]
    answer: str
    dropped: list[PageImage] = field(default_factory=list)


class Conversation:
    """Multi-turn chat state with a bound on the page images kept in context.

    When the page images of all turns would exceed ``max_images``, the oldest images are dropped
    first (their labels and the text of the turns stay) and a note is appended to ``notes``.
    The pages of the question being asked are always shown; an earlier image of a page shown
    again is dropped rather than repeated.
    """

    def __init__(self, max_images: int = DEFAULT_MAX_IMAGES) -> None:
        if max_images < 0:
            raise ValueError(f"max_images must be >= 0, got {max_images}")
        self.max_images = max_images
        self.turns: list[Turn] = []
        self.notes: list[str] = []

    def pages(self) -> list[PageImage]:
        """All pages whose images are still in the context, oldest first."""
        return [page for turn in self.turns for page in turn.pages]

    def reset(self) -> None:
        """Forget every turn and note."""
        self.turns.clear()
        self.notes.clear()

    def make_room(self, incoming: list[PageImage]) -> list[str]:
        """Free room for the images of ``incoming`` pages; return the notes recorded.

        Earlier images of pages shown again are dropped first (the new turn shows them), then the
        oldest images until history plus ``incoming`` fit ``max_images``.
        """
        again = {(page.path, page.page) for page in incoming}
        for turn in self.turns:
            turn.dropped += [page for page in turn.pages if (page.path, page.page) in again]
            turn.pages = [page for page in turn.pages if (page.path, page.page) not in again]
        return self._trim(max(self.max_images - len(incoming), 0))

    def add(self, question: str, pages: list[PageImage], answer: str) -> list[str]:
        """Record a finished turn, then enforce the image budget; return the notes recorded."""
        self.turns.append(Turn(question, list(pages), answer))
        return self._trim(self.max_images)

    def _trim(self, limit: int) -> list[str]:
        excess = len(self.pages()) - limit
        dropped: list[str] = []
        for turn in self.turns:
            while excess > 0 and turn.pages:
                page = turn.pages.pop(0)
                turn.dropped.append(page)
                dropped.append(page.label)
                excess -= 1
        if not dropped:
            return []
        note = (
            f"Dropped {len(dropped)} older page image(s) from the conversation to stay within "
            f"{self.max_images} images: {'; '.join(dropped)}."
        )
        self.notes.append(note)
        return [note]


def _user_content(pages: list[PageImage], question: str, dropped: Sequence[PageImage] = ()) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = []
    for page in dropped:
        content.append({"type": "text", "text": f"[{page.label}] (image not shown again)\n"})
    for page in pages:
        content.append({"type": "text", "text": f"[{page.label}]\n"})
        content.append({"type": "image", "image": page.image})
    content.append({"type": "text", "text": f"\nQuestion: {question}"})
    return content


def build_messages(conversation: Conversation | None, question: str, pages: list[PageImage]) -> list[dict]:
    """Chat-template messages: earlier turns (with their remaining images), then the new question.

    The new user turn starts with the grounding instructions, then each page as its label followed
    by its image, then the question. Content is always a list of typed parts (SmolVLM's template
    indexes ``content[0]``); image parts carry the PIL image under ``"image"``.
    """
    messages: list[dict] = []
    for turn in conversation.turns if conversation is not None else []:
        messages.append({"role": "user", "content": _user_content(turn.pages, turn.question, turn.dropped)})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": turn.answer}]})
    content = [{"type": "text", "text": INSTRUCTIONS + "\n"}, *_user_content(pages, question)]
    messages.append({"role": "user", "content": content})
    return messages
