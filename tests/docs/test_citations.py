"""Citations of the project's docs resolve: every ``docs/<page>.md §<Section>`` names a page and a heading that exist.

The design specs the project started from are not part of the repository, so code, tests and docs may only cite
``docs/*.md`` (see ``docs/README.md``). This scans the tree as a reader with only the repository would.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SCAN_DIRS = ("pipeline", "rsvheat", "jobs", "tests", "benchmarks", "infra", ".ci", "docs")
SCAN_FILES = ("Makefile", "pyproject.toml", "README.md")
SUFFIXES = frozenset({".py", ".md", ".txt", ".yaml", ".yml", ".toml", ".cfg", ".sh"})
# Pages of the shared design specs: cited without a docs/ prefix they point outside the repository.
SPEC_PAGES = ("hco", "data-pipeline", "environment", "heracles", "pretraining", "style", "change-aware")
CITE = re.compile(r"docs/([A-Za-z0-9_-]+)\.md")
BARE_SPEC = re.compile(rf"(?<![\w/\[-])(?<!\]\()(?:{'|'.join(SPEC_PAGES)})\.md(?!\])")
LINK = re.compile(r"\]\(([A-Za-z0-9_-]+\.md)(?:#[^)]*)?\)")
NUMBERED = re.compile("\u00a7" + r"\s?\d")  # "§7": a numbered spec section, not one of ours
SECTION = "\u00a7"


def _scanned() -> list[Path]:
    paths = [ROOT / name for name in SCAN_FILES if (ROOT / name).is_file()]
    for folder in SCAN_DIRS:
        base = ROOT / folder
        if base.is_dir():
            paths += [p for p in base.rglob("*") if p.is_file() and (p.suffix in SUFFIXES or p.name == "run")]
    return sorted(p for p in set(paths) if "__pycache__" not in p.parts and p != Path(__file__).resolve())


def _headings(page: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)  # no comments in code blocks
    titles = [m.group(1).strip() for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)]
    return sorted(titles, key=len, reverse=True)  # longest first: "Shards" must not shadow a longer title


def _names_heading(text: str, headings: list[str]) -> bool:
    """Whether the text after a section mark starts with one of ``headings`` (or is the number of a numbered one)."""
    if any(re.match(re.escape(h) + r"(?![\w-])", text) for h in headings):
        return True
    number = re.match(r"\s?([A-Z]?\d+(?:\.\d+)*|[A-Z](?:\.\d+)+)(?![\w.]*\d)", text)
    return number is not None and any(re.match(re.escape(number.group(1)) + r"[.)]?\s", h) for h in headings)


def _lines(path: Path) -> list[tuple[int, str]]:
    try:
        return list(enumerate(path.read_text().splitlines(), 1))
    except UnicodeDecodeError:
        return []


def _problems() -> list[str]:
    headings = {page.stem: _headings(page) for page in DOCS.glob("*.md")}
    problems: list[str] = []
    for path in _scanned():
        rel = path.relative_to(ROOT).as_posix()
        in_docs = rel.startswith("docs/")
        carried: re.Match[str] | None = None  # a citation that ends the previous line: "docs/x.md" + newline + "§Name"
        for number, line in _lines(path):
            where = f"{rel}:{number}"
            first_cite = CITE.search(line)
            lead = line.lstrip(" #*>-`\"'")
            if carried is not None and lead.startswith(SECTION):
                line = f"docs/{carried.group(1)}.md " + lead
                first_cite = CITE.search(line)
            ends = list(CITE.finditer(line))
            carried = ends[-1] if ends and not line[ends[-1].end() :].strip(" `\"'") else None
            before = line if first_cite is None else line[: first_cite.start()]
            if in_docs:  # a bare mark in a page refers to the page's own sections: "(see §Safe names)"
                for mark in re.finditer(SECTION, before):
                    text = before[mark.end() :]
                    if not text.startswith("<") and not _names_heading(text, headings[path.stem]):
                        problems.append(f"{where}: this page has no heading starting {text[:30]!r}")
            elif NUMBERED.search(before):
                stray = NUMBERED.search(before).group(0)
                problems.append(f"{where}: numbered section {stray!r} of no docs/ page; cite a heading")
            if not in_docs and BARE_SPEC.search(line):
                problems.append(f"{where}: {BARE_SPEC.search(line).group(0)!r} is not in the repository; cite docs/")
            if in_docs:
                for target in LINK.findall(line):
                    if target[:-3] not in headings:
                        problems.append(f"{where}: link to missing page docs/{target}")
            matches = list(CITE.finditer(line))
            for i, match in enumerate(matches):
                page = match.group(1)
                if page not in headings:
                    problems.append(f"{where}: docs/{page}.md does not exist")
                    continue
                end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
                segment = line[match.end() : end]
                for mark in re.finditer(SECTION, segment):
                    text = segment[mark.end() :]
                    if not text.startswith("<") and not _names_heading(text, headings[page]):  # "§<Section>"
                        problems.append(f"{where}: docs/{page}.md has no heading starting {text[:30]!r}")
    return problems


def test_every_citation_names_an_existing_page_and_heading() -> None:
    problems = _problems()
    assert not problems, "Fix these citations (see docs/README.md):\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "line, expected",
    [
        ("see docs/ingest.md §Commit protocol).", []),
        ("see docs/ingest.md §Commit protokol).", ["no heading"]),
        ("see docs/nowhere.md §Steps", ["does not exist"]),
        ("see hco.md " + SECTION + "7", ["numbered section", "not in the repository"]),
        ("see docs/hco.md " + SECTION + "7", ["no heading"]),
        ("see docs/numbered.md " + SECTION + "3 and " + SECTION + "A.2", []),
        ("see docs/numbered.md " + SECTION + "4", ["no heading"]),
        ("see docs/numbered.md\n# " + SECTION + "3 for the losses", []),
        ("see docs/ingest.md\n# " + SECTION + "Commit protokol", ["no heading"]),
        ("docs/data-format.md §Shards, §Chip index and docs/hco.md §DCT", []),
        ("docs/data-format.md §Shardsx", ["no heading"]),
        ("docs/ingest.md " + SECTION + "not a heading", ["no heading"]),
    ],
)
def test_the_checker_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str, expected: list[str]) -> None:
    pages = {
        "ingest": "# Ingest\n\n## Commit protocol\n\n```bash\n# not a heading\n```\n",
        "data-format": "# Format\n\n## Shards\n\nSee " + SECTION + "Chip index.\n\n## Chip index\n",
        "hco": "# HCO\n\n## DCT\n",
        "numbered": "# Title\n\n## 3. Losses\n\n### A.2 Masking\n\nAs in " + SECTION + "3.\n",
    }
    (tmp_path / "docs").mkdir()
    for name, text in pages.items():
        (tmp_path / "docs" / f"{name}.md").write_text(text)
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "x.py").write_text(f"# {line}\n")
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "DOCS", tmp_path / "docs")
    problems = _problems()
    assert len(problems) == len(expected), problems
    for problem, text in zip(problems, expected, strict=True):
        assert text in problem
