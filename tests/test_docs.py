"""The documentation the code cites is in the repository: every `docs/...` path named in the package's
docstrings and comments (and in the README, scripts and configs) exists, and every cited `docs/design.md §N`
is a section of it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import deepiot

ROOT = Path(deepiot.__file__).resolve().parents[1]
DOC_PATH = re.compile(r"docs/[\w./-]*\w")
SECTION = re.compile(r"docs/design\.md §(\d+)")


def cited_in() -> list[Path]:
    files = [*sorted((ROOT / "deepiot").rglob("*.py")), ROOT / "README.md"]
    files += sorted((ROOT / "scripts").rglob("*.py")) + sorted((ROOT / "configs").rglob("*.yaml"))
    return [path for path in files if path.is_file()]


def citations(pattern: re.Pattern[str]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in cited_in():
        for match in pattern.finditer(path.read_text(encoding="utf-8")):
            found.setdefault(match.group(0) if pattern is DOC_PATH else match.group(1), set()).add(
                str(path.relative_to(ROOT))
            )
    return found


def test_the_package_cites_its_docs():
    cited = citations(DOC_PATH)
    assert {"docs/design.md", "docs/paper.md"} <= set(cited)


@pytest.mark.parametrize("cited", sorted(citations(DOC_PATH)))
def test_every_cited_docs_path_exists(cited):
    assert (ROOT / cited).exists(), f"{cited} is cited in {sorted(citations(DOC_PATH)[cited])} but missing"


def test_every_cited_design_section_exists():
    headings = set(re.findall(r"^## §(\d+) ", (ROOT / "docs/design.md").read_text(encoding="utf-8"), re.M))
    missing = {section: where for section, where in citations(SECTION).items() if section not in headings}
    assert missing == {}


def test_no_reference_to_documents_outside_the_repository():
    stale = re.compile(r"DESIGN §|\bPAPER\.md")
    offenders = [
        str(path.relative_to(ROOT)) for path in cited_in() if stale.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


SCRIPT_PATH = re.compile(r"(?<![\w/.-])scripts/[\w./-]*\w")


def test_every_cited_script_exists():
    """Every `scripts/...` path named in the README, docs, experiment pages, package, scripts, configs and tests
    is in the repository (scripts/ is split into benchmarks/, examples/ and the tools: a move updates them all)."""
    pages = [*sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "experiments").rglob("*.md"))]
    files = [
        *cited_in(),
        *pages,
        *sorted((ROOT / "scripts").rglob("*.sh")),
        *sorted((ROOT / "tests").glob("*.py")),
    ]
    cited: dict[str, set[str]] = {}
    for path in files:
        for match in SCRIPT_PATH.finditer(path.read_text(encoding="utf-8")):
            cited.setdefault(match.group(0), set()).add(str(path.relative_to(ROOT)))
    assert "scripts/benchmarks/bench_step.py" in cited and "scripts/examples/example_custom_model.py" in cited
    missing = {name: sorted(where) for name, where in cited.items() if not (ROOT / name).exists()}
    assert missing == {}
