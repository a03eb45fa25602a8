"""`docqa ask`, `docqa chat`, `docqa describe`: parse, call the library, print (the answer streamed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import DocQAError
from .common import EXIT_OK, heatmap_folder, open_searchable, print_json
from .resident import resident_asker


def _asker(args: argparse.Namespace, with_index: bool):
    """The answer model (and index) a question command needs."""
    from ..answer.ask import Asker
    from ..answer.prompt import Conversation
    from ..models.checkpoints import check_device
    from ..models.generator import Generator, default_answer_model

    index = open_searchable(args) if with_index else None
    device = check_device(args.device)
    generator = Generator.load(args.answer_model or default_answer_model(device), device=device, engine=args.engine)
    conversation = Conversation(max_images=args.max_images) if "max_images" in args else None
    asker = Asker(
        generator,
        index,
        k=getattr(args, "k", 1),
        max_pages=getattr(args, "max_pages", 1),
        max_new_tokens=args.max_new_tokens,
        conversation=conversation,
        where=dict(getattr(args, "where", [])),
        path=getattr(args, "path", None),
    )
    for note in asker.notes:
        print(f"docqa: note: {note}", file=sys.stderr)
    return asker


def _print_answer(stream, as_json: bool, heatmaps: tuple[str, object] | None = None) -> None:
    """Stream the answer's text to stdout, then the pages it was given (* = cited).

    With ``heatmaps`` (folder, retriever), each page shown also gets a heatmap PNG and a box.
    """
    if as_json:
        payload = stream.run().to_json()
        if heatmaps:
            for citation, extra in zip(payload["citations"], _answer_heatmaps(stream, *heatmaps)):
                citation.update(extra)
        print_json(payload)
        return
    for piece in stream:
        print(piece, end="", flush=True)
    print()
    result = stream.result
    extras = _answer_heatmaps(stream, *heatmaps) if heatmaps else [{} for _ in result.answer.citations]
    print("\nSources (* = cited in the answer):")
    for number, (citation, extra) in enumerate(zip(result.answer.citations, extras), start=1):
        score = "" if citation.score is None else f"  score {citation.score:.3f}"
        heatmap = f"  heatmap {extra['heatmap']}" if extra.get("heatmap") else ""
        print(f" {'*' if citation.cited else ' '}[{number}] {citation.path}, page {citation.page}{score}{heatmap}")
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)


def _answer_heatmaps(stream, folder: str, retriever) -> list[dict]:
    """Ground question + answer on each page shown; write the PNGs; the box fields per citation."""
    from ..answer.grounding import ground_answer, save_heatmap

    target = heatmap_folder(folder)
    answer = stream.result.answer
    groundings = ground_answer(retriever, answer.question, answer.text, stream.pages)
    return [
        {"heatmap": str(save_heatmap(target, rank, page.path, page.page, grounding)), **grounding.to_json()}
        for rank, (page, grounding) in enumerate(zip(stream.pages, groundings), start=1)
    ]


def ask_command(args: argparse.Namespace) -> int:
    from ..answer.prompt import check_question  # not answer.ask: the resident path needs no index code

    check_question(args.question)  # before the answer model takes seconds to load
    if args.heatmaps and args.image:
        raise DocQAError("--heatmaps needs an index (its retriever draws them); it cannot be used with --image")
    if args.heatmaps:
        asker = _asker(args, with_index=True)
        _print_answer(asker.ask(args.question), args.json, (args.heatmaps, asker.index.retriever(device=args.device)))
        return EXIT_OK
    if args.image:
        from ..answer.ask import page_of_file

        asker = _asker(args, with_index=False)
        page = page_of_file(Path(args.image), args.page, asker.generator.max_image_edge)
        _print_answer(asker.over_pages(args.question, [page]), args.json)
    else:
        remote = resident_asker(args)
        if remote is not None:
            from ..serve.daemon import DaemonGone

            stream = remote.ask(args.question)
            try:
                _print_answer(stream, args.json)
                return EXIT_OK
            except DaemonGone:
                print(
                    f"{chr(10) if stream.started else ''}docqa: note: the resident process ended mid-answer;"
                    " answering in this process",
                    file=sys.stderr,
                )
        _print_answer(_asker(args, with_index=True).ask(args.question), args.json)
    return EXIT_OK


def describe_command(args: argparse.Namespace) -> int:
    from ..answer.ask import DESCRIBE_PROMPT, page_of_file

    asker = _asker(args, with_index=False)
    page = page_of_file(Path(args.file), args.page, asker.generator.max_image_edge)
    stream = asker.over_pages(DESCRIBE_PROMPT, [page])
    if args.json:
        result = stream.run()
        print_json(
            {
                "path": page.path,
                "page": page.page,
                "description": result.answer.text,
                "answer_model": result.answer.model,
                "timings": {"generate_s": round(result.answer.generate_s, 3)},
            }
        )
    else:
        for piece in stream:
            print(piece, end="", flush=True)
        print()
    return EXIT_OK


CHAT_COMMANDS = ("/pages", "/reset", "/quit")


def chat_command(args: argparse.Namespace) -> int:
    """One question per line. With --json every stdout line is one JSON object: an answer, a
    failed turn ({"question", "error"}) or a command's output ({"command", ...})."""
    asker = resident_asker(args) or _asker(args, with_index=True)
    interactive = sys.stdin.isatty()
    if interactive:
        print(
            "docqa chat: ask about your documents. /pages lists the pages in view, /reset starts over, /quit leaves.",
            file=sys.stderr,
        )
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        question = line.strip()
        if not question:  # a blank line is no question
            continue
        if question == "/quit":
            break
        if question == "/reset":
            asker.conversation.reset()
            if args.json:
                print_json({"command": "/reset"})
            else:
                print("conversation cleared", file=sys.stderr)
        elif question == "/pages":
            pages = asker.conversation.pages()
            if args.json:
                print_json({"command": "/pages", "pages": [{"path": p.path, "page": p.page} for p in pages]})
            else:
                for page in pages:
                    print(f"  {page.path}, page {page.page}")
                if not pages:
                    print("  (no pages in view)")
        elif question.startswith("/") and " " not in question:
            _chat_error(args, question, f"unknown command {question}; use {', '.join(CHAT_COMMANDS)}")
        else:
            if not interactive and not args.json:
                print(f"> {question}")  # piped: say which question the answer below belongs to
            try:
                _print_answer(asker.ask(question), args.json)
            except DocQAError as error:  # one bad turn does not end the conversation
                _chat_error(args, question, str(error))
            except Exception as error:  # the resident process died: go on in this process
                if type(error).__name__ != "DaemonGone":
                    raise
                print(
                    "\ndocqa: note: the resident process ended; the conversation goes on in this process"
                    " (earlier pages are no longer in view)",
                    file=sys.stderr,
                )
                asker = _asker(args, with_index=True)
                _print_answer(asker.ask(question), args.json)
    return EXIT_OK


def _chat_error(args: argparse.Namespace, question: str, message: str) -> None:
    print(f"docqa: error: {message}", file=sys.stderr)
    if args.json:
        print_json({"question": question, "error": message})
