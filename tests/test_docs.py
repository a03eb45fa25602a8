"""The documents stay true to the code: the generated CLI reference, README's command summary and
test command, and every relative link in README.md and docs/."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from docqa.cli import reference

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEST_COMMAND = "python3 -m pytest -q"


def test_cli_reference_is_current() -> None:
    on_disk = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert on_disk == reference.render(), f"docs/cli.md is stale: run {reference.GENERATE}"


def test_cli_reference_documents_every_command_and_option() -> None:
    text = reference.render()
    parser = reference._parser()
    for name, _, sub in reference._subcommands(parser):
        assert f"\n## docqa {name}\n" in text
        for action in sub._actions:
            for flag in action.option_strings:
                assert flag in text, f"docqa {name} {flag} missing from the reference"


def test_reference_check_fails_when_stale_and_passes_once_written(tmp_path: Path) -> None:
    target = tmp_path / "cli.md"
    target.write_text("# an old reference\n", encoding="utf-8")
    assert reference.main(["--check", "--output", str(target)]) == 1
    assert target.read_text(encoding="utf-8") == "# an old reference\n"  # --check writes nothing
    assert reference.main(["--output", str(target)]) == 0
    assert reference.main(["--check", "--output", str(target)]) == 0


def test_every_command_is_in_the_readme_summary() -> None:
    documented = set(re.findall(r"^\| `docqa ([a-z][\w-]*)", README.read_text(encoding="utf-8"), re.MULTILINE))
    commands = {name.split()[0] for name in reference.command_names()}
    assert commands, "the parser has no subcommands"
    assert commands <= documented, f"README's command summary lacks: {sorted(commands - documented)}"
    assert documented <= commands, f"README's command summary names unknown commands: {sorted(documented - commands)}"


def test_readme_test_command_is_what_ci_runs() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Run the tests", 1)
    assert len(section) == 2, "README has no 'Run the tests' heading"
    assert f"```bash\n{TEST_COMMAND}\n```" in section[1].split("\n## ", 1)[0]
    ci = ROOT / ".ci" / "run"
    if ci.exists():
        assert TEST_COMMAND in ci.read_text(encoding="utf-8").splitlines()


def test_readme_stays_short() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 250


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", markdown, flags=re.DOTALL), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_relative_links_and_their_anchors_resolve() -> None:
    files = [README, ROOT / "benchmarks" / "RESULTS.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for file in files:
        for target in re.findall(r"\]\(([^)\s]+)\)", file.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = file.parent / path if path else file
            if not linked.exists():
                broken.append(f"{file.relative_to(ROOT)} -> {target}")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked.read_text(encoding="utf-8")):
                broken.append(f"{file.relative_to(ROOT)} -> {target} (no such heading)")
    assert not broken, broken


@pytest.mark.slow
def test_api_reference_builds(tmp_path: Path) -> None:
    """scripts/api_reference.py imports every module and renders it with pdoc (what CI builds)."""
    pytest.importorskip("pdoc")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "api_reference.py"), str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'id="DocIndex"' in (tmp_path / "docqa" / "api.html").read_text(encoding="utf-8")
    assert "DocIndex" in (tmp_path / "docqa.html").read_text(encoding="utf-8")
