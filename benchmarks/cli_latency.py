"""Whole-process wall time of `docqa search`, and of `docqa ask` until its first token, with and
without the resident process (docqa/serve/daemon.py), at real model sizes with random weights.

Builds ColModernVBert (the CPU default retriever, 251M) and SmolVLM-256M-Instruct from their real
architectures with random weights (tests/helpers/tiny_*.py), ingests a few synthetic pages at a 512 px edge,
then times, each as the median of --repeats runs of a fresh `python -m docqa` process:

- search, in-process (DOCQA_DAEMON=off) and with a warm daemon (started once, before timing), and
  with a second daemon whose OpenMP threads spin (OMP_WAIT_POLICY=ACTIVE; the daemon's own default
  is PASSIVE), started once the first has been stopped (an idle spinning daemon holds the cores);
- ask, from process start to the first byte of the answer on stdout, in-process and through both
  daemons; for each daemon also how that same ask's time was spent inside it, by its own clock
  (`status`' last_ask_timings): retrieval, the prompt's inputs, the model's prefill (generate()
  given the inputs to its first new token), and the first byte's time beyond that prefill, the
  issue's "prefill + 0.5 s" target, paired ask by ask;
- the answer model's prefill over the same page in this process (one forward pass), once before
  the daemons and again beside each warm ask, alternately before and after it (the machine's
  speed drifts within a minute), to show whether the daemon's prefill is the model's or slowed
  by the daemon.

Both sides run the torch engine (DOCQA_ENGINE=torch), so no OpenVINO conversion is timed.

    flock /tmp/docqa-cpu.lock python benchmarks/cli_latency.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

QUESTION = "What is the total amount due on the invoice?"


def _env(runtime: Path, daemon: bool, **extra: str) -> dict[str, str]:
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        **extra,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "DOCQA_ENGINE": "torch",
        "HF_HUB_OFFLINE": "1",
        "XDG_RUNTIME_DIR": str(runtime),
        "DOCQA_DAEMON": "on" if daemon else "off",
        "DOCQA_DAEMON_IDLE_S": "900",
    }


def wall(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    return time.perf_counter() - start


def first_byte(command: list[str], env: dict[str, str]) -> float:
    """Seconds from starting the process to the first byte it writes on stdout (the first token)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    assert process.stdout is not None
    byte = process.stdout.read(1)
    elapsed = time.perf_counter() - start
    out, err = process.communicate()
    if not byte or process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} printed nothing or failed: {err.decode()[-2000:]}")
    return elapsed


def _status(sock: Path) -> dict:
    """The status a daemon reports on its socket ``sock``."""
    from docqa.serve.daemon import Connection

    connection = Connection(sock, 10)
    try:
        return connection.request({"op": "status"})
    finally:
        connection.close()


def _last_ask_timings(runtime: Path) -> dict:
    """The timings of the last answer the (one) daemon under ``runtime`` gave, as it measured them."""
    (sock,) = (runtime / "docqa").glob("*.sock")
    return _status(sock)["last_ask_timings"]


def _stop_daemons(runtime: Path) -> None:
    """End the daemons under ``runtime`` (SIGTERM) and wait until they are gone."""
    from docqa.serve.daemon import DaemonGone

    for sock in (runtime / "docqa").glob("*.sock"):
        try:
            pid = _status(sock)["pid"]
        except (OSError, DaemonGone):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--ask-repeats",
        type=int,
        help="warm asks per daemon, each paired with a bare prefill (default: --repeats); the pairs "
        "alternate which runs first, so the machine's drift does not favour either",
    )
    parser.add_argument(
        "--policies",
        nargs="+",
        choices=("passive", "active"),
        default=["passive", "active"],
        help="the daemons to time: its default OMP_WAIT_POLICY=PASSIVE, and one whose threads spin",
    )
    parser.add_argument("--pages", type=int, default=4, help="synthetic pages in the index")
    parser.add_argument("--tokens", type=int, default=8, help="answer length in tokens")
    parser.add_argument(
        "--size",
        choices=("real", "tiny"),
        default="real",
        help="real-size models (the measurement) or tiny ones (a smoke test of this script)",
    )
    args = parser.parse_args()

    import torch
    from answer_latency import printable_only, synthetic_page
    from helpers.tiny_generators import build_generator_checkpoint
    from helpers.tiny_retrievers import build_retriever_checkpoint

    from docqa.answer.ask import load_page
    from docqa.api import DocIndex
    from docqa.models.generator import Conversation, Generator, PageImage

    work = Path(tempfile.mkdtemp(prefix="cli-latency-"))
    runtime = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    spinning = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))  # a second daemon, its OpenMP threads spinning
    try:
        started = time.perf_counter()
        retriever = build_retriever_checkpoint("colmodernvbert", work / "retriever", size=args.size)
        answerer = build_generator_checkpoint("idefics3", work / "answerer", size=args.size)
        generator = Generator.load(str(answerer), device="cpu", engine="torch")
        printable_only(generator)  # every greedy token prints: the first token is the first byte
        generator.model.save_pretrained(answerer)
        docs = work / "docs"
        docs.mkdir()
        for number in range(args.pages):
            synthetic_page(512, number).save(docs / f"page-{number}.png")
        index = DocIndex.open(work / "idx", create=True)
        index.ingest([docs], model=str(retriever), device="cpu", image_edge=512, engine="torch")
        index.close()
        print(f"built and ingested in {time.perf_counter() - started:.0f} s", flush=True)

        # one of the indexed pages as the daemon renders it for the model: the same tiles, the same tokens
        page = PageImage("page-0.png", 1, None, load_page(docs / "page-0.png", 1, generator.max_image_edge))

        def bare_prefill() -> float:
            inputs = generator.prepare(Conversation(), QUESTION, [page])
            start = time.perf_counter()
            with torch.inference_mode():
                generator.model(**inputs, logits_to_keep=1, use_cache=True)
            return time.perf_counter() - start

        fills = [bare_prefill() for _ in range(args.repeats)]

        docqa = [sys.executable, "-m", "docqa"]
        search = [*docqa, "search", "invoice total", "--index", str(work / "idx"), "-k", "3"]
        ask = [
            *docqa,
            "ask",
            QUESTION,
            "--index",
            str(work / "idx"),
            "-k",
            "1",
            "--max-pages",
            "1",
            "--max-new-tokens",
            str(args.tokens),
            "--answer-model",
            str(answerer),
        ]
        cold = _env(runtime, daemon=False)
        rows: list[tuple[str, list[float]]] = []  # in print order; the "of which" rows repeat
        rows.append(("search, in-process", [wall(search, cold) for _ in range(args.repeats)]))
        rows.append(("ask first token, in-process", [first_byte(ask, cold) for _ in range(args.repeats)]))
        first_use: dict[str, float] = {}
        # One daemon at a time: an idle daemon whose OpenMP threads spin would take the cores from the other.
        daemons = {
            "passive": ("", runtime, _env(runtime, daemon=True)),
            "active": (", its OMP_WAIT_POLICY=ACTIVE", spinning, _env(spinning, daemon=True, OMP_WAIT_POLICY="ACTIVE")),
        }
        for label, folder, env in (daemons[policy] for policy in args.policies):
            start = time.perf_counter()
            wall(search, env)  # starts the daemon and waits for it: the first use
            first_use.setdefault("search", time.perf_counter() - start)
            rows.append((f"search, resident (warm){label}", [wall(search, env) for _ in range(args.repeats)]))
            start = time.perf_counter()
            first_byte(ask, env)  # loads the answer model into the daemon
            first_use.setdefault("ask", time.perf_counter() - start)
            resident, inside, beside = [], [], []
            for number in range(args.ask_repeats or args.repeats):
                if number % 2 == 0:
                    beside.append(bare_prefill())
                resident.append(first_byte(ask, env))
                inside.append(_last_ask_timings(folder))  # the daemon's own clock, this ask
                if number % 2 == 1:
                    beside.append(bare_prefill())
            rows.append((f"ask first token, resident (warm){label}", resident))
            for name, key in (
                ("retrieval (query encode, search, page render)", "retrieve_s"),
                ("prompt and page image made into model inputs", "prepare_s"),
                ("the model's prefill", "prefill_s"),
            ):
                rows.append((f"  of which, in the daemon, {name}", [timings[key] for timings in inside]))
            rows.append(
                (
                    "  of which beyond the daemon's prefill (target <= 0.5)",
                    [r - timings["prefill_s"] for r, timings in zip(resident, inside)],
                )
            )
            rows.append(("  the same prefill in this process, beside each ask (before, after, before, ...)", beside))
            rows.append(
                (
                    "  the daemon's prefill minus the one beside it",
                    [timings["prefill_s"] - bare for timings, bare in zip(inside, beside)],
                )
            )
            _stop_daemons(folder)
    finally:
        _stop_daemons(runtime)
        _stop_daemons(spinning)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)
        shutil.rmtree(spinning, ignore_errors=True)

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    load = os.getloadavg()
    print(
        f"\n{time.strftime('%Y-%m-%d %H:%M')} UTC, commit {commit}, {platform.machine()} {os.cpu_count()} cores, "
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, torch engine, {torch.get_num_threads()} threads, {args.size} models"
    )
    print("\n| what | median s | runs |\n|---|---|---|")
    for name, runs in rows:
        print(f"| {name} | {statistics.median(runs):.2f} | {', '.join(f'{r:.2f}' for r in runs)} |")
    print(f"| first use: search that starts the daemon | {first_use['search']:.2f} | 1 |")
    print(f"| first use: ask that loads the answer model into it | {first_use['ask']:.2f} | 1 |")
    print(
        f"| answer model's prefill, one page (in this process, before the daemons) | {statistics.median(fills):.2f} "
        f"| {', '.join(f'{f:.2f}' for f in fills)} |"
    )


if __name__ == "__main__":
    main()
