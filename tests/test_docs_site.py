"""The documentation site builds strictly, and its API reference shows every public name.

The site is built once for this module (about 10 s: ``mkdocs build --strict`` into a
temporary folder), so these tests check what a reader gets, not the sources of the pages.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import griffe
import pytest

ROOT = Path(__file__).resolve().parent.parent
# Each public module and its reference page.
PAGES = {
    "corral": "reference/corral/index.html",
    "corral.jobs": "reference/jobs/index.html",
    "corral.blocking": "reference/blocking/index.html",
    "corral.dask": "reference/dask/index.html",
}
# Private modules whose docstrings are Google-style: every parameter of their public
# functions and classes is described in an Args: section (so the reference shows it).
# Modules not listed still have prose docstrings (the reference shows them as prose).
CONVERTED = (
    "corral._cluster",
    "corral._connect",
    "corral._dask",
    "corral._database",
    "corral._display",
    "corral._jobs._context",
    "corral._jobs._model",
    "corral._jobs._notify",
    "corral._jobs._processor",
    "corral._jobs._queue",
    "corral._map._api",
    "corral._map._engine",
    "corral._pickling",
    "corral._process",
    "corral._progress",
    "corral._thread",
    "corral.blocking",
)
_ID = re.compile(r'\bid="([^"]+)"')


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(folder)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}"
    return folder


@pytest.mark.timeout(300)
@pytest.mark.parametrize("module", PAGES)
def test_every_public_name_is_in_the_reference(site: Path, module: str) -> None:
    html = (site / PAGES[module]).read_text(encoding="utf-8")
    anchors = set(_ID.findall(html))
    names = importlib.import_module(module).__all__
    missing = [name for name in names if f"{module}.{name}" not in anchors]
    assert not missing, f"{PAGES[module]} has no entry for {missing}"


@pytest.mark.timeout(300)
def test_search_finds_every_public_name(site: Path) -> None:
    index = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    locations = {doc["location"] for doc in index["docs"]}
    for module, page in PAGES.items():
        url = page.removesuffix("index.html")
        for name in importlib.import_module(module).__all__:
            assert f"{url}#{module}.{name}" in locations, f"search misses {module}.{name}"


@pytest.mark.timeout(300)
def test_reference_pages_keep_no_rest_markup(site: Path) -> None:
    for page in PAGES.values():
        text = re.sub(r"<[^>]+>", "", (site / page).read_text(encoding="utf-8"))
        leftovers = re.findall(r":(?:func|class|meth|attr|exc|mod|data):`|``|\.\. code-block", text)
        assert not leftovers, f"{page} shows reST markup {leftovers[:5]}"


def _public_callables(module: griffe.Module) -> list[griffe.Object]:
    found: list[griffe.Object] = []
    for name in module.exports or ():
        member = module[name]
        target = member.final_target if isinstance(member, griffe.Alias) else member
        if target.is_function or target.is_class:
            found.append(target)
            if target.is_class:
                found.extend(
                    method
                    for method_name, method in target.members.items()
                    if method.is_function and not method_name.startswith("_")
                )
    return found


def test_converted_modules_describe_every_parameter() -> None:
    package = griffe.load("corral", search_paths=[str(ROOT / "src")], docstring_parser="google")
    undocumented: list[str] = []
    for module in PAGES:
        face = package if module == "corral" else package[module.removeprefix("corral.")]
        for obj in _public_callables(face):
            if obj.module.path not in CONVERTED:
                continue
            function = obj.members.get("__init__") if obj.is_class else obj
            if function is None or not function.is_function:
                continue
            described = {
                param.name.lstrip("*")
                for section in (obj.docstring.parsed if obj.docstring else [])
                if section.kind is griffe.DocstringSectionKind.parameters
                for param in section.value
            }
            # A dataclass's fields are its attributes, each with its own docstring.
            described |= {
                name
                for name, member in obj.members.items()
                if member.is_attribute and member.docstring is not None
            }
            for param in function.parameters:
                if param.name in ("self", "cls") or param.name in described:
                    continue
                if str(param.annotation).startswith("_"):
                    continue  # a private type: made by corral, not by callers (imap's IMap)
                undocumented.append(f"{obj.path}({param.name})")
    assert not undocumented, f"parameters without a description: {sorted(set(undocumented))}"
