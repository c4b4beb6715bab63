"""The pages themselves: every example is of a kind the root conftest.py runs or checks.

The examples run as tests through sybil (root conftest.py); these tests make sure none
escapes it, and that the README stays a README.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "sample_pipelines").glob("*/README.md")),
]
FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})(.*)$", re.MULTILINE)
# Blocks that are only shown: data and configuration formats, never commands.
SHOWN = {"json", "text", "ini", "toml", "xml", "jsonl"}


def fences(page: Path) -> list[tuple[int, str]]:
    """(line, info string) of every opening fence on the page."""
    found: list[tuple[int, str]] = []
    closing: str | None = None
    for match in FENCE.finditer(page.read_text(encoding="utf-8")):
        fence, info = match.group(1), match.group(2).strip()
        line = page.read_text(encoding="utf-8").count("\n", 0, match.start()) + 1
        if closing is None:
            found.append((line, info))
            closing = fence
        elif fence.startswith(closing[0]) and len(fence) >= len(closing) and not info:
            closing = None
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_block_is_run_checked_or_data(page: Path) -> None:
    for line, info in fences(page):
        language = info.split()[0] if info else ""
        where = f"{page.name}:{line}: ```{info}"
        assert language, f"{where}: a block needs a language (console, python, yaml, ...)"
        assert language not in {"sh", "bash", "shell", "shell-session"}, (
            f"{where}: shell examples are ```console blocks with `$ ` prompts, which run as tests"
        )
        if 'title="' not in info:
            assert language in SHOWN | {"console", "python", "yaml"}, (
                f"{where}: not a kind the docs' tests run or check"
            )


def test_the_readme_fits_on_a_few_screens() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 250, f"README.md has {lines} lines; the rest belongs in docs/"


def test_every_page_is_in_the_site_navigation() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))

    def named(nav: object) -> set[str]:
        if isinstance(nav, str):
            return {nav}
        if isinstance(nav, list):
            return set().union(*(named(item) for item in nav))
        if isinstance(nav, dict):
            return set().union(*(named(value) for value in nav.values()))
        return set()

    pages = {page.name for page in (ROOT / "docs").glob("*.md")}
    assert pages == named(config["nav"])


def test_readme_links_into_the_docs_exist() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\((docs/[^)#\s]+)", text):
        assert (ROOT / target).is_file(), f"README.md links to {target}, which does not exist"
