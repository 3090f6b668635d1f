"""``python -m corral`` and the ``corral`` command: the command line."""

from __future__ import annotations

import sys


def main() -> None:
    """Run the ``corral`` command line."""
    try:
        from ._cli import cli
    except ModuleNotFoundError as exc:
        if exc.name not in ("click", "rich"):
            raise
        sys.exit(f"corral's command line needs {exc.name}: pip install 'corral[cli]'")
    cli()


if __name__ == "__main__":
    main()
