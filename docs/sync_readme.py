"""Copy each example into README.md, so the tutorial shows exactly what the tests run.

    python docs/sync_readme.py           # rewrite README.md's example blocks
    python docs/sync_readme.py --check   # exit 1 if a block differs from its file

In README.md, a line ``<!-- example: examples/NAME.py -->`` followed by a fenced
``python`` block marks a block that must equal the file ``examples/NAME.py``.
``tests/test_examples.py`` checks that every marked block is in sync.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

_BLOCK = re.compile(
    r"(?P<marker><!-- example: (?P<path>[^ ]+) -->\n)```python\n(?P<code>.*?)```\n",
    re.DOTALL,
)


def example_paths(text: str) -> list[str]:
    """Return the example paths that ``text`` marks, in order."""
    return [match["path"] for match in _BLOCK.finditer(text)]


def sync(text: str) -> str:
    """Return ``text`` with every marked block replaced by its example file."""

    def replace(match: re.Match[str]) -> str:
        code = (ROOT / match["path"]).read_text(encoding="utf-8")
        return f"{match['marker']}```python\n{code}```\n"

    return _BLOCK.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    """Rewrite README.md's example blocks, or with ``--check`` report stale ones."""
    parser = argparse.ArgumentParser(description="Copy examples/*.py into README.md.")
    parser.add_argument("--check", action="store_true", help="fail if README.md is stale")
    args = parser.parse_args(argv)
    text = README.read_text(encoding="utf-8")
    synced = sync(text)
    if args.check:
        if synced != text:
            print("README.md is out of date: run python docs/sync_readme.py", file=sys.stderr)
            return 1
        print("README.md is up to date")
        return 0
    README.write_text(synced, encoding="utf-8")
    print(f"synced {len(example_paths(synced))} example blocks into {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
