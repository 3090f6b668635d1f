"""Every examples/*.py runs cleanly; docs/api.md and the README tutorial are up to date."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


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


def _load_docs_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_is_up_to_date() -> None:
    gen_api = _load_docs_script("gen_api")
    current = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert gen_api.generate() == current, "docs/api.md is stale: run python docs/gen_api.py"


def test_readme_tutorial_matches_examples() -> None:
    sync_readme = _load_docs_script("sync_readme")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = sync_readme.example_paths(readme)
    assert shown, "README.md marks no example blocks"
    for path in shown:
        assert (ROOT / path).is_file(), f"README.md shows {path}, which does not exist"
    assert sync_readme.sync(readme) == readme, (
        "README.md's example blocks differ from examples/: run python docs/sync_readme.py"
    )
