"""MkDocs hooks: the example files as a site page, and links to them that work on both sides.

The guides in ``docs/`` link to runnable files as ``../examples/NAME.py``, which works when
they are read in the repository but points outside the site. These hooks add one generated
page, ``examples.md``, that shows every ``examples/*.py`` file as it is (so it never drifts),
and point those links at its sections. Any other link out of ``docs/`` is left alone, so
``mkdocs build --strict`` still reports it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES_PAGE = "examples.md"
_LINK = re.compile(r"\]\((?P<up>(?:\.\./)+)examples/(?P<name>[A-Za-z0-9_]+\.py)?\)")


def example_files() -> list[Path]:
    """Return the runnable examples, ``examples/*.py``, in name order."""
    return sorted((ROOT / "examples").glob("*.py"))


def anchor(path: Path) -> str:
    """Return the anchor of an example's section on the examples page."""
    return "example-" + path.stem.replace("_", "-")


def examples_page() -> str:
    """Return the Markdown of the examples page: every example file, included as it is."""
    lines = [
        "# Examples",
        "",
        "Every file in `examples/`, as the test suite runs it (`tests/test_examples.py` runs",
        "each one with `--quick`). Run one with `.venv/bin/python examples/NAME.py`.",
        "",
    ]
    for path in example_files():
        name = f"examples/{path.name}"
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        summary = docstring.strip().split("\n", 1)[0]
        lines += [
            f"## `{name}` {{#{anchor(path)}}}",
            "",
            summary,
            "",
            f'```python title="{name}"',
            f'--8<-- "{name}"',
            "```",
            "",
        ]
    return "\n".join(lines)


def on_files(files: Files, config: MkDocsConfig, **kwargs: Any) -> Files:
    """Add the generated examples page to the site."""
    files.append(File.generated(config, EXAMPLES_PAGE, content=examples_page()))
    return files


def on_page_markdown(markdown: str, page: Page, **kwargs: Any) -> str:
    """Point ``../examples/NAME.py`` links (the repository's layout) at the examples page."""
    depth = page.file.src_uri.count("/")

    def replace(match: re.Match[str]) -> str:
        if match["up"].count("../") != depth + 1:
            return match[0]  # not the repository's examples/ folder: leave it to --strict
        target = "../" * depth + EXAMPLES_PAGE
        name = match["name"]
        if name is not None and (ROOT / "examples" / name).is_file():
            target += "#" + anchor(ROOT / "examples" / name)
        return f"]({target})"

    return _LINK.sub(replace, markdown)
