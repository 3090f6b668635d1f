"""Every examples/*.py runs cleanly; the tutorial pages and the README show them as they are."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
TUTORIAL = ROOT / "docs" / "tutorial"

# A tutorial page shows an example by including the file when the site is built
# (pymdownx.snippets, mkdocs.yml), inside a fenced python block.
_INCLUDE = re.compile(r'```python[^\n]*\n--8<-- "(?P<path>[^"]+)"\n```\n')
# The README, which GitHub renders as it is, holds a copy marked with the file it copies.
_README_BLOCK = re.compile(
    r"<!-- example: (?P<path>[^ ]+) -->\n```python\n(?P<code>.*?)```\n", re.DOTALL
)


def test_examples_exist() -> None:
    assert EXAMPLES, "no examples/*.py found"


@pytest.mark.timeout(150)
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_runs(path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", str(path), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{path.name} exited {result.returncode}:\n{result.stderr}"
    assert result.stdout.strip(), f"{path.name} printed nothing"
    assert result.stderr == "", f"{path.name} wrote to stderr (a warning?):\n{result.stderr}"


def test_tutorial_pages_include_every_tutorial_example() -> None:
    included: dict[str, str] = {}
    for page in sorted(TUTORIAL.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        paths = [match["path"] for match in _INCLUDE.finditer(text)]
        assert text.count("--8<--") == len(paths), f"{page.name}: an include outside a block"
        if page.name != "index.md":
            assert paths, f"docs/tutorial/{page.name} includes no example"
        for path in paths:
            assert (ROOT / path).is_file(), f"docs/tutorial/{page.name} includes {path}: no file"
            included[path] = page.name
    steps = {f"examples/{path.name}" for path in EXAMPLES if path.name.startswith("tutorial_")}
    assert steps, "no examples/tutorial_*.py found"
    missing = sorted(steps - included.keys())
    assert not missing, f"no page in docs/tutorial/ includes {missing}"


def test_readme_example_equals_its_file() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = list(_README_BLOCK.finditer(readme))
    assert [block["path"] for block in blocks] == ["examples/quickstart.py"]
    for block in blocks:
        code = (ROOT / block["path"]).read_text(encoding="utf-8")
        assert block["code"] == code, f"README.md's copy of {block['path']} differs: copy it in"
    assert len(blocks[0]["code"].splitlines()) <= 25, "the README's example should stay short"
