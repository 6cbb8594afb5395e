"""The docs point at things that exist: every repository path, test name, link and `make` target they
name."""

from __future__ import annotations

import re

import pytest

from support.paths import REPO

DOCS = sorted([REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("tests/**/README.md")])
TOP_LEVEL = ("src/", "tests/", "manifests/", "helm-config/", "dashboards/", "load_testing/", "docs/", ".ci/")
CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
FENCED = re.compile(r"^```[a-z]*\n(.*?)^```", re.M | re.S)
MAKE = re.compile(r"^\s*make ((?:[a-z][a-z0-9-]*(?:=\S*)? ?)+)")
TARGET = re.compile(r"^([a-z][a-z0-9-]*):", re.M)


def make_targets() -> set[str]:
    return set(TARGET.findall((REPO / "Makefile").read_text()))


def defined_tests() -> set[str]:
    return {
        name
        for path in REPO.glob("tests/**/test_*.py")
        for name in re.findall(r"^def (test_\w+)", path.read_text(), re.M)
    }


def named_paths(text: str) -> set[str]:
    """Repository paths in code spans (`src/...`, `tests/x.py::test_y`), as written."""
    tokens = {token.strip(".,;:()") for span in CODE.findall(text) for token in span.split()}
    return {token for token in tokens if token.startswith(TOP_LEVEL)}


def exists(path: str) -> bool:
    """A path, a glob (`<component>` and `*` are wildcards) or `file.py::test_name` that exists."""
    path, _, test = path.partition("::")
    pattern = re.sub(r"<[^>]+>", "*", path.rstrip("/"))
    matches = list(REPO.glob(pattern)) if "*" in pattern else [REPO / pattern]
    found = [match for match in matches if match.exists()]
    if test:
        return any(re.search(rf"^def {re.escape(test)}\b", m.read_text(), re.M) for m in found)
    return bool(found)


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(REPO)))
def test_every_path_and_test_the_docs_name_exists(doc):
    text = doc.read_text()
    missing = sorted(path for path in named_paths(text) if not exists(path))
    defined = defined_tests()
    tests = {t for span in CODE.findall(text) for t in re.findall(r"(?<![\w/])(test_\w+)\b(?!\.py)", span)}
    missing += sorted(f"{name} (no such test)" for name in tests - defined)
    assert not missing, f"{doc.name} names what does not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(REPO)))
def test_every_link_leads_to_a_file(doc):
    links = [link for link in LINK.findall(doc.read_text()) if "://" not in link]
    assert not [link for link in links if not (doc.parent / link).exists()]


def commands(text: str) -> list[str]:
    """What the doc gives to type: code spans and the lines of code blocks."""
    blocks = [line for block in FENCED.findall(text) for line in block.splitlines()]
    return CODE.findall(FENCED.sub("", text)) + blocks


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: str(doc.relative_to(REPO)))
def test_every_make_target_the_docs_name_exists(doc):
    named = {
        word
        for command in commands(doc.read_text())
        for words in MAKE.findall(command)
        for word in words.split()
        if "=" not in word
    }
    assert named <= make_targets(), named - make_targets()
