#!/usr/bin/env bash
# Set up everything (the package, a one-node Grid Engine) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash ci/gridengine.sh)"
python3 -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v -e "Running pip as the 'root' user" -e "is ignored: it is neither" || true
exec python3 -m pytest -ra tests "$@"
