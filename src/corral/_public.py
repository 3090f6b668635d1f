"""Make public objects report their public home, as trio's ``fixup_module_metadata`` does.

Each face module (``corral``, ``corral.jobs``, ``corral.blocking``, ``corral.dask``) calls
:func:`fixup_module_metadata` at the end of its import, so that reprs, tracebacks and pickles
read ``corral.NotPicklableError`` rather than ``corral._exceptions.NotPicklableError``. The
defining module is kept in ``_corral_defined_in`` for tools that read the source
(``tests/test_exports.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

DEFINED_IN = "_corral_defined_in"
"""The attribute that keeps the name of the private module an object was defined in."""


def fixup_module_metadata(module_name: str, namespace: Mapping[str, Any]) -> None:
    """Set ``__module__`` (and nested ``__qualname__``) of each name in ``namespace["__all__"]``.

    Only objects still reporting a private corral module are changed, so a name exported by
    two face modules keeps the first (``corral`` is imported before its submodules).
    """
    seen: set[int] = set()

    def fix(name: str, qualname: str, obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        module = getattr(obj, "__module__", None)
        if not isinstance(module, str) or not module.startswith("corral._"):
            return
        if not (isinstance(obj, type) or callable(obj)):
            return
        try:
            setattr(obj, DEFINED_IN, module)
            obj.__module__ = module_name
        except (AttributeError, TypeError):  # a builtin or slotted object: leave it
            return
        if getattr(obj, "__name__", None) == name:
            obj.__qualname__ = qualname
        if isinstance(obj, type):
            for attr, value in list(vars(obj).items()):
                if isinstance(value, type) and value.__name__ == attr:
                    fix(attr, f"{qualname}.{attr}", value)

    names: Iterable[str] = namespace["__all__"]
    for name in names:
        fix(name, name, namespace[name])
