"""A griffe extension: the reST markup left in docstrings, rendered as Markdown.

corral's docstrings follow the Google convention, and their inline markup is Markdown with
reST's roles and literals, which read well in ``help()`` too: ``:func:`corral.map```,
``:class:`~corral.Cluster```, ````literal````, and ``.. code-block:: python`` or a
paragraph ending in ``::`` before an indented example. mkdocstrings renders docstrings as
Markdown, so before it does, this extension rewrites, in every docstring of the package:

- a role into an optional cross-reference (``<autoref identifier=... optional>``) to the
  object it names, resolved like Sphinx does (the name as written, then relative to the
  object, its class, its module and the ``corral`` package); an object the reference
  does not show (a private helper) renders as code, without a link and without a warning;
- a ``.. code-block::`` directive, or a ``::`` paragraph end, into a fenced code block;
- an attribute without a docstring of its own (one set in ``__init__``) gets its entry of
  its class's ``Attributes:`` section, so its own heading in the reference says what it is.

It runs once the whole package is loaded (``on_package``), so every name can be resolved.
"""

from __future__ import annotations

import html
import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|exc|data|obj|const):`(?P<body>[^`]+)`")
_EXPLICIT = re.compile(r"^(?P<title>.*?)\s*<(?P<target>[^>]+)>$")
_CODE_BLOCK = re.compile(r"^(?P<indent>[ \t]*)\.\. code-block::[ \t]*(?P<lang>\w*)[ \t]*$")


class RstMarkup(griffe.Extension):
    """Rewrite reST roles and literal blocks of every docstring into Markdown."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Rewrite the docstrings of ``pkg`` and of everything it contains."""
        seen: set[str] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if obj.path in seen:
                continue
            seen.add(obj.path)
            if obj.docstring is not None:
                obj.docstring.value = _rewrite(obj.docstring.value, obj, pkg)
                if obj.is_class:
                    _document_attributes(obj)
            stack.extend(
                member for member in obj.members.values() if not isinstance(member, griffe.Alias)
            )


def _document_attributes(cls: griffe.Object) -> None:
    assert cls.docstring is not None
    # Quietly: griffe's dataclass extension may not have made the class's __init__ yet,
    # and the parse that mkdocstrings makes later reports what is wrong with the docstring.
    for section in cls.docstring.parse("google", warnings=False):
        if section.kind is not griffe.DocstringSectionKind.attributes:
            continue
        for entry in section.value:
            member = cls.members.get(entry.name)
            if member is not None and not member.is_alias and member.docstring is None:
                member.docstring = griffe.Docstring(entry.description, parent=member)


def _rewrite(text: str, obj: griffe.Object, pkg: griffe.Module) -> str:
    text = _ROLE.sub(lambda match: _crossref(match["body"], obj, pkg), text)
    return _literal_blocks(text)


def _crossref(body: str, obj: griffe.Object, pkg: griffe.Module) -> str:
    title = target = body.strip()
    explicit = _EXPLICIT.match(body)
    if explicit:
        title, target = explicit["title"], explicit["target"]
    if target.startswith("~"):
        target = target[1:]
        title = target.rsplit(".", 1)[-1]
    target = target.rstrip("()")
    path = _resolve(target, obj, pkg)
    code = f"<code>{html.escape(title)}</code>"
    if path is None:
        return code
    return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'


def _resolve(target: str, obj: griffe.Object, pkg: griffe.Module) -> str | None:
    scopes: list[griffe.Object] = [obj]
    scope: griffe.Object | None = obj.parent
    while scope is not None:
        scopes.append(scope)
        scope = scope.parent
    candidates = [target] + [f"{scope.path}.{target}" for scope in scopes]
    for candidate in candidates:
        found = _lookup(candidate, pkg)
        if found is not None:
            return found
    return None


def _lookup(path: str, pkg: griffe.Module) -> str | None:
    if path == pkg.path:
        return path
    prefix = pkg.path + "."
    if not path.startswith(prefix):
        return None
    try:
        pkg[path.removeprefix(prefix)]
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    return path


def _literal_blocks(text: str) -> str:
    lines = text.splitlines()
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        directive = _CODE_BLOCK.match(line)
        opens = directive is not None or (line.rstrip().endswith("::") and line.strip() != "::")
        block_start = index + 1
        while block_start < len(lines) and not lines[block_start].strip():
            block_start += 1
        base = len(line) - len(line.lstrip())
        end = block_start
        while end < len(lines) and (
            not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > base
        ):
            end += 1
        if not opens or end == block_start:
            out.append(line)
            index += 1
            continue
        indent = " " * base
        lang = "python"
        if directive is not None:
            lang = directive["lang"] or "text"
        else:
            out.append(line.rstrip()[:-1])
            out.append("")
        code = textwrap.dedent("\n".join(lines[block_start:end])).strip("\n")
        out.append(f"{indent}```{lang}")
        out.extend(f"{indent}{code_line}" if code_line else "" for code_line in code.split("\n"))
        out.append(f"{indent}```")
        out.append("")
        index = end
    return "\n".join(out)
