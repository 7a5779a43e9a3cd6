"""Every reference from the code to a measured item of the docs (``README, "X"`` or ``docs/measurements.md, "X"``)
names an item that file defines: a heading, or the start of a bold or italic span. The README holds what the
project is and its current figures; docs/measurements.md every change's measurements. An item that moves from one
to the other must take its references with it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = {"README": ROOT / "README.md", "docs/measurements.md": ROOT / "docs" / "measurements.md"}
CODE_DIRS = ("client", "export", "bench", "deploy", "tests")
# README, "X" / README ("X") / docs/measurements.md, "X"; the name may run over a comment's next line
REFERENCE = re.compile(r'(README(?:\.md)?|docs/measurements\.md)(?:,|:)?\s*\(?\s*"([A-Z0-9][^"]{2,160})"')


def flatten(text: str) -> str:
    """Comment continuations and line breaks as single spaces."""
    return re.sub(r"\s+", " ", re.sub(r"\n\s*(#|//)?\s*", " ", text))


def defined(text: str) -> list[str]:
    """The names a markdown file defines: its headings and the starts of its bold and italic spans."""
    heads = [m.group(1) for m in re.finditer(r"^#+\s+(.+)$", text, re.M)]
    bold = [flatten(m.group(1)) for m in re.finditer(r"\*\*(.+?)\*\*", text, re.S)]
    italic = [flatten(m.group(1)) for m in re.finditer(r"(?<!\*)\*([^*\s][^*]*?)\*(?!\*)", text, re.S)]
    return heads + bold + italic


def references() -> list[tuple[str, str, str]]:
    """(file, document, name) of every reference in the project's Python files and docs."""
    files = [p for d in CODE_DIRS for p in sorted((ROOT / d).rglob("*.py")) if p != Path(__file__)]
    files += [DOCS["README"], DOCS["docs/measurements.md"]]
    out = []
    for f in files:
        for m in REFERENCE.finditer(flatten(f.read_text())):
            doc = "README" if m.group(1).startswith("README") else m.group(1)
            out.append((str(f.relative_to(ROOT)), doc, m.group(2)))
    return out


def test_references_name_items_of_their_document():
    names = {doc: defined(path.read_text()) for doc, path in DOCS.items()}
    refs = references()
    assert len(refs) > 20, "the pattern no longer finds the project's references"
    wrong = [f"{f}: {doc} has no item {name!r}" + (" (docs/measurements.md has)" if doc == "README" and any(
             x.startswith(name) for x in names["docs/measurements.md"]) else "")
             for f, doc, name in refs if not any(x.startswith(name) for x in names[doc])]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("text, expected", [
    ('# see README, "Two detector heads" for why', [("README", "Two detector heads")]),
    ('(docs/measurements.md, "A last\n# refinement on the second scale")', [("docs/measurements.md", "A last refinement on the second scale")]),
    ('README ("Performance")', [("README", "Performance")]),
    ('(ROOT / "README.md").read_text()', []),
])
def test_reference_pattern(text, expected):
    got = [("README" if m.group(1).startswith("README") else m.group(1), m.group(2)) for m in REFERENCE.finditer(flatten(text))]
    assert got == expected


def test_defined_names():
    text = "## Results now\n\n- **Box refiner** (shipped). *A stride-8 input* (not kept), 2 * 3 * 4\n"
    names = defined(text)
    assert "Results now" in names and "Box refiner" in names and "A stride-8 input" in names


def test_readme_names_moved_items_with_their_file():
    """A quoted name in the README that only docs/measurements.md defines says where it is (within the sentence)."""
    text = DOCS["README"].read_text()
    here, there = defined(text), defined(DOCS["docs/measurements.md"].read_text())
    flat = flatten(text)
    loose = [m.group(1) for m in re.finditer(r'"([A-Z0-9][^"]{3,160})"', flat)
             if "docs/measurements.md" not in flat[max(0, m.start() - 100):m.start()]
             and any(x.startswith(m.group(1)) for x in there) and not any(x.startswith(m.group(1)) for x in here)]
    assert not loose, f"README names items of docs/measurements.md without saying so: {loose}"
