"""Answer stage: generation over tiny random checkpoints, citations, conversation state, prompts."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from docqa.answer.citations import find_citations
from docqa.answer.prompt import INSTRUCTIONS, Answer, Conversation, PageImage, build_messages
from docqa.errors import ModelLoadError, UnsupportedModelError
from docqa.models.generator import (
    DEFAULT_CPU_ANSWER_MODEL,
    DEFAULT_GPU_ANSWER_MODEL,
    Generator,
    default_answer_model,
)

FAMILIES = ["idefics3", "smolvlm", "qwen2_vl", "qwen2_5_vl", "qwen3_vl"]  # SmolVLM v1 and 2, three Qwen-VL generations


def page(path: str, number: int, score: float | None = None, size: tuple[int, int] = (90, 128)) -> PageImage:
    return PageImage(path, number, score, Image.new("RGB", size, (255, 255 - 40 * number % 256, 255)))


PAGES = [page("/docs/report.pdf", 4, 0.91), page("/docs/memo.pdf", 1, 0.52, (128, 90)), page("/docs/memo.pdf", 2)]


@pytest.fixture(scope="module", params=FAMILIES)
def generator(request: pytest.FixtureRequest, generator_checkpoints: dict[str, Path]) -> Generator:
    return Generator.load(str(generator_checkpoints[request.param]), device="cpu", max_image_edge=64)


def test_stream_matches_ask_and_cites_every_page_shown(generator: Generator) -> None:
    conversation = Conversation()
    pieces = list(generator.stream(conversation, "What is the total?", PAGES, max_new_tokens=8))
    answer = generator.ask("What is the total?", PAGES, max_new_tokens=8)

    assert isinstance(answer, Answer) and len(pieces) >= 1
    assert "".join(pieces) == answer.text
    assert [(c.path, c.page, c.score) for c in answer.citations] == [(p.path, p.page, p.score) for p in PAGES]
    assert answer.model == generator.model_id and answer.generate_s > 0
    assert len(conversation.turns) == 1 and conversation.turns[0].answer == answer.text


def test_follow_up_turn_reuses_history(generator: Generator) -> None:
    conversation = Conversation(max_images=3)
    generator.ask("What is the total?", PAGES[:2], conversation, max_new_tokens=4)
    generator.ask("And the date?", PAGES[2:], conversation, max_new_tokens=4)
    assert [t.question for t in conversation.turns] == ["What is the total?", "And the date?"]
    assert conversation.pages() == PAGES


def test_stopping_early_records_no_turn(generator: Generator) -> None:
    conversation = Conversation()
    pieces = generator.stream(conversation, "What?", PAGES[:1], max_new_tokens=8)
    next(pieces)
    pieces.close()
    assert conversation.turns == []


def test_missing_folder_names_the_model(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelLoadError, match="no-such-model") as info:
        Generator.load(missing)
    assert "--answer-model" in str(info.value)


def test_uncached_hub_id_fails_fast_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="nobody/no-such-model.*HF_HUB_OFFLINE=1"):
        Generator.load("nobody/no-such-model")


def test_text_only_checkpoint_is_unsupported(tmp_path: Path) -> None:
    from transformers import LlamaConfig

    LlamaConfig(
        hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=32
    ).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="not an image-text-to-text model"):
        Generator.load(str(tmp_path))


def test_default_answer_model_per_device() -> None:
    assert default_answer_model("cpu") == DEFAULT_CPU_ANSWER_MODEL
    assert default_answer_model("cuda:0") == DEFAULT_GPU_ANSWER_MODEL


def test_page_label() -> None:
    assert page("/data/q3/report.pdf", 4).label == "report.pdf, page 4"


@pytest.mark.parametrize(
    ("text", "cited"),
    [
        ("Revenue was 4.2M [report.pdf, page 4].", {("report.pdf", 4)}),
        ("See page 2 of memo.pdf and report.pdf p. 4.", {("memo.pdf", 2), ("report.pdf", 4)}),
        ("As memo.pdf, pages 1 and 2 say, ...", {("memo.pdf", 1), ("memo.pdf", 2)}),
        ("Per memo (pp. 1-2).", {("memo.pdf", 1), ("memo.pdf", 2)}),
        ("REPORT.PDF, PAGE 4", {("report.pdf", 4)}),
        ("memo.pdf, page 2, report.pdf, page 4", {("memo.pdf", 2), ("report.pdf", 4)}),
        ("It is on page 2 (memo.pdf).", {("memo.pdf", 2)}),
        ("report.pdf page 1 and memo.pdf page 1", {("memo.pdf", 1)}),
        ("On page 4 the total is given.", {("report.pdf", 4)}),  # only one shown page is a page 4
        ("The report (report.pdf) says so.", {("report.pdf", 4)}),  # only one page of report.pdf shown
        ("On page 1 the date is given.", {("memo.pdf", 1)}),
        ("memo.pdf, page 7 says so.", set()),  # page 7 was not shown
        ("report.pdf, page 1", set()),  # page 1 was shown, but of memo.pdf
        ("memo.pdf mentions it.", set()),  # two pages of memo.pdf shown: ambiguous
        ("The report says so.", set()),  # a stem alone is an ordinary word
        ("The answer is not found in the pages.", set()),
        ("Revenue grew 4 percent in 2023.", set()),
    ],
)
def test_find_citations(text: str, cited: set[tuple[str, int]]) -> None:
    citations = find_citations(text, PAGES)
    assert [(c.path, c.page, c.score) for c in citations] == [(p.path, p.page, p.score) for p in PAGES]
    assert {(Path(c.path).name, c.page) for c in citations if c.cited} == cited


def test_find_citations_page_number_alone_is_ambiguous_across_files() -> None:
    pages = [page("a.pdf", 3), page("b.pdf", 3)]
    assert [c.cited for c in find_citations("See page 3.", pages)] == [False, False]
    assert [c.cited for c in find_citations("See [b.pdf, page 3].", pages)] == [False, True]


def test_build_messages_one_labelled_image_per_page() -> None:
    messages = build_messages(None, "What is the total?", PAGES)
    assert [m["role"] for m in messages] == ["user"]
    content = messages[0]["content"]
    assert content[0] == {"type": "text", "text": INSTRUCTIONS + "\n"}
    images = [i for i, part in enumerate(content) if part["type"] == "image"]
    assert [content[i]["image"] for i in images] == [p.image for p in PAGES]
    assert [content[i - 1]["text"].strip() for i in images] == [f"[{p.label}]" for p in PAGES]
    assert "What is the total?" in content[-1]["text"]
    assert "not found in the pages" in INSTRUCTIONS and "[report.pdf, page 4]" in INSTRUCTIONS


def test_conversation_does_not_repeat_a_page_shown_again() -> None:
    conversation = Conversation(max_images=4)
    conversation.add("q1", PAGES[:2], "a1")
    assert conversation.make_room([PAGES[1]]) == []  # room enough: only the repeat goes
    assert conversation.pages() == [PAGES[0]] and conversation.turns[0].dropped == [PAGES[1]]


def test_build_messages_includes_history() -> None:
    conversation = Conversation()
    conversation.add("First?", PAGES[:1], "Answer one [report.pdf, page 4].")
    messages = build_messages(conversation, "Second?", PAGES[1:2])
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == [{"type": "text", "text": "Answer one [report.pdf, page 4]."}]
    assert sum(part["type"] == "image" for m in messages for part in m["content"]) == 2


def test_conversation_bounds_images_oldest_first() -> None:
    conversation = Conversation(max_images=3)
    assert conversation.add("q1", PAGES[:2], "a1") == []
    notes = conversation.add("q2", PAGES[1:3], "a2")
    assert len(notes) == 1 and "report.pdf, page 4" in notes[0] and conversation.notes == notes
    assert conversation.pages() == [PAGES[1], PAGES[1], PAGES[2]]
    assert [t.question for t in conversation.turns] == ["q1", "q2"]
    assert conversation.turns[0].dropped == [PAGES[0]]

    assert conversation.make_room([page("/docs/new.pdf", 1), page("/docs/new.pdf", 2)])  # keep the newest image
    assert conversation.pages() == [PAGES[2]]
    history = build_messages(conversation, "q3", PAGES[:2])[0]["content"]
    assert history[0]["text"].startswith("[report.pdf, page 4] (image not shown again)")
    assert len(conversation.notes) == 2

    conversation.reset()
    assert conversation.turns == [] and conversation.notes == [] and conversation.pages() == []


def test_smolvlm2_answers_from_images_without_a_video_processor(generator_checkpoints: dict[str, Path]) -> None:
    """SmolVLM2's processor wants a video processor (torchvision); docqa loads its image parts only."""
    generator = Generator.load(str(generator_checkpoints["smolvlm"]), device="cpu", max_image_edge=64)
    assert type(generator.processor).__name__ == "SmolVLMProcessor"
    assert generator.processor.image_processor.size == {"longest_edge": 64}
    with pytest.raises(UnsupportedModelError, match="sends no video"):
        generator.processor.video_processor([])


def test_smolvlm2_without_num2words_names_it(
    generator_checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers.models.smolvlm import processing_smolvlm

    monkeypatch.setattr(processing_smolvlm, "num2words", None)
    with pytest.raises(ModelLoadError, match="num2words"):
        Generator.load(str(generator_checkpoints["smolvlm"]), device="cpu")
