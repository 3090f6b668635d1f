#!/usr/bin/env bash
# Type completeness of corral's public API: `pyright --verifytypes corral` must report
# 100% of the exported symbols with a known type (every public attribute annotated, no
# public signature naming a type that is partially unknown).
#
# pyright sees a package only as installed (an editable install hides it behind a path
# hook), so this builds a throwaway venv with a regular install of this checkout. PATH
# must lead to that venv's python: pyright finds the package through it.
#
# Usage: scripts/verifytypes.sh [PYTHON]   (PYTHON defaults to python3; it makes the venv;
# PYRIGHT names the pyright to run, by default .venv/bin/pyright)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${1:-python3}"
venv="$(mktemp -d "${TMPDIR:-/tmp}/corral-verifytypes.XXXXXX")"
trap 'rm -rf "$venv"' EXIT

"$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps "$root" anyio
# pyright from the project's venv (the test extra has it), else into the throwaway one.
pyright="${PYRIGHT:-$root/.venv/bin/pyright}"
if [ ! -x "$pyright" ]; then
    "$venv/bin/pip" install -q --disable-pip-version-check pyright
    pyright="$venv/bin/pyright"
fi

# Run from the venv, not the checkout, so that pyright cannot see src/ instead.
cd "$venv"
set +e
PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv" "$pyright" --verifytypes corral --ignoreexternal \
    --outputjson >"$venv/report.json"
set -e
"$venv/bin/python" - "$venv/report.json" <<'REPORT'
import json
import sys

with open(sys.argv[1]) as f:
    report = json.load(f)
completeness = report["typeCompleteness"]
for symbol in completeness["symbols"]:
    for diagnostic in symbol["diagnostics"]:
        if diagnostic["severity"] == "error":
            print(f"{symbol['name']}: {diagnostic['message']}")
score = completeness["completenessScore"]
exported = completeness["exportedSymbolCounts"]
print(
    f"verifytypes: {score:.1%} of exported symbols known "
    f"({exported['withKnownType']} known, {exported['withAmbiguousType']} ambiguous, "
    f"{exported['withUnknownType']} unknown)"
)
if score < 1:
    sys.exit("verifytypes: below 100%: annotate the symbols above")
REPORT
