"""What the code may cite and where the update arithmetic lives: the package
is read on its own, so it cites only files in the repository, and the test-time
loops (adapt, zssr) take their steps from maml and torch.optim."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
CODE = [p for folder in ("mzsr_fast", "kernels", "csrc") for p in sorted((ROOT / folder).rglob("*"))
        if p.suffix in (".py", ".cpp", ".h", ".cu")]


def test_the_code_cites_no_file_outside_the_repository():
    outside = re.compile(r"\bSPEC\b|ENVIRONMENT\.md|DESIGN\.md|\.\./shared")
    found = [f"{p.relative_to(ROOT)}:{i}" for p in CODE
             for i, line in enumerate(p.read_text().splitlines(), 1) if outside.search(line)]
    assert not found, f"citations of files outside the repository: {found}"


def test_the_documents_the_code_cites_exist():
    cited = {m for p in CODE for m in re.findall(r"docs/[\w-]+\.md", p.read_text())}
    assert "docs/method.md" in cited
    assert [c for c in sorted(cited) if not (ROOT / c).is_file()] == []


@pytest.mark.parametrize("module", ["adapt.py", "zssr.py"])
def test_the_test_time_loops_have_no_update_arithmetic_of_their_own(module):
    source = (ROOT / "mzsr_fast" / module).read_text()
    assert not re.search(r"_foreach_|\.(sub|add|mul)_\(|-=", source)
    assert ("sgd_update_(" if module == "adapt.py" else "torch.optim.Adam(") in source
