#!/usr/bin/env bash
# Build the documentation (docs/, the API pages from this tree's docstrings) with Sphinx, treating
# every warning as an error: exits non-zero if anything in the docs is broken or warns.
# Arguments go to sphinx-build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check 'sphinx>=5' 2>&1 | grep -v -e "Running pip as the 'root' user" || true
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# -E: read every page again (no cache); -W --keep-going: every warning is reported, then fails the build.
PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}" python3 -m sphinx -E -W --keep-going -q -b html docs "$out" "$@"
echo "docs: built without warnings"
