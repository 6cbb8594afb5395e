"""The test tree's layout: pytest's default import mode puts each test folder on the import path, so two
test modules with one name in different folders cannot both be collected in one run (`make test`)."""

from __future__ import annotations

from collections import Counter

from support.paths import REPO


def test_every_test_module_has_a_name_of_its_own():
    names = Counter(path.name for path in (REPO / "tests").rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
