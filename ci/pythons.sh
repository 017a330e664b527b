#!/usr/bin/env bash
# Run the local-backend tests under every Python version pyproject.toml declares (its
# "Programming Language :: Python :: 3.X" classifiers), each from pyenv (or python3.X on PATH) in a
# virtual environment of its own, kept under $SHEEPDOG_PYTHONS_CACHE (default /tmp/sheepdog-pythons)
# and remade when pyproject.toml changes; the suites run at the same time. A declared version with no
# interpreter here is skipped, saying so, except in CI (CI=true), where it is an error. Versions
# listed in $SHEEPDOG_PYTHONS_SKIP are left to the caller (ci/test.sh runs the whole suite under
# python3). The browser tests of the dashboard (marker dashboard) run under python3 alone, where
# ci/test.sh installs its extra, Playwright and Chromium. Arguments go to pytest. With
# SHEEPDOG_PYTHONS_PREPARE_ONLY=1 it only makes the virtual environments (ci/test.sh does that early,
# in the background, and runs the suites later).
# Prints one line per version at the end; exits non-zero if any version failed or was missing in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
cache=${SHEEPDOG_PYTHONS_CACHE:-/tmp/sheepdog-pythons}
pyenv_root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
versions=$(grep -oE '"Programming Language :: Python :: 3\.[0-9]+"' pyproject.toml | grep -oE '3\.[0-9]+' || true)
if [ -z "$versions" ]; then echo "pythons.sh: pyproject.toml declares no Python 3.X version" >&2; exit 1; fi

interpreter() {  # interpreter 3.X: the newest pyenv 3.X.N, else python3.X on PATH, if it runs
  local found
  found=$(find "$pyenv_root/versions" -mindepth 1 -maxdepth 1 -name "$1.*" 2>/dev/null \
            | grep -E "/$1\.[0-9]+$" | sort -V | tail -n 1)
  found=${found:+$found/bin/python$1}
  found=${found:-$(command -v "python$1" || true)}
  if [ -n "$found" ] && "$found" -c '' 2>/dev/null; then echo "$found"; fi  # a pyenv shim may not run
}

prepare_venv() {  # prepare_venv 3.X PYTHON: sets $venv, a venv with this checkout (editable) and its test extra
  local key output
  key=$( (echo "$root $2"; cat pyproject.toml setup.py) | sha256sum | cut -c1-16)
  venv=$cache/$1-$(echo "$root" | sha256sum | cut -c1-8)
  if [ "$(cat "$venv/.key" 2>/dev/null)" = "$key" ]; then return 0; fi
  rm -rf "$venv"
  if ! output=$("$2" -m venv "$venv" 2>&1 && "$venv/bin/python" -m pip install -q --disable-pip-version-check \
                -e "$root[test]" 2>&1 && "$venv/bin/python" -c 'import sheepdog_drmaa, pytest, numpy' 2>&1); then
    echo "$output"; return 1
  fi
  echo "$key" >"$venv/.key"
}

summary=() status=0 runs=()
# First every virtual environment, one after the other (pip), then the suites at once: they mostly
# wait on worker processes and sockets, so four take about the time of one on two cores. Each test
# keeps to its own temporary directory and ports.
for version in $versions; do
  if [[ " ${SHEEPDOG_PYTHONS_SKIP:-} " == *" $version "* ]]; then
    summary+=("Python $version: not run here (SHEEPDOG_PYTHONS_SKIP: the caller tests it)"); continue
  fi
  python=$(interpreter "$version")
  if [ -z "$python" ]; then
    if [ "${CI:-}" = true ]; then
      summary+=("Python $version: MISSING (declared in pyproject.toml; required in CI)"); status=1
    else
      summary+=("Python $version: skipped (no interpreter: not in $pyenv_root/versions, no python$version on PATH)")
    fi
    continue
  fi
  started=$SECONDS
  if ! prepare_venv "$version" "$python"; then
    summary+=("Python $version: FAILED to install"); status=1; continue
  fi
  echo "=== Python $version: $python, venv ready in $((SECONDS - started)) s"
  runs+=("$version:$venv")
done

if [ -n "${SHEEPDOG_PYTHONS_PREPARE_ONLY:-}" ]; then
  [ ${#summary[@]} -eq 0 ] || printf '%s\n' "${summary[@]}"
  exit "$status"
fi

result_line() {  # pytest's last summary line (a worker thread may print after it)
  grep -E '[0-9]+ (passed|failed|errors?)' "$1" | tail -n 1 || tail -n 1 "$1"
}

logs=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$logs"' EXIT
started=$SECONDS
for run in "${runs[@]}"; do
  version=${run%%:*} venv=${run#*:}
  # Temporary files of its own, removed with the logs: nothing of one run is left to another.
  "$venv/bin/python" -m pytest -q -p no:cacheprovider --basetemp="$logs/tmp-$version" \
    -m "not gridengine and not slurm and not multihost and not dashboard" tests "$@" >"$logs/$version" 2>&1 &
  pids+=($!)
done
for index in "${!runs[@]}"; do
  version=${runs[$index]%%:*} venv=${runs[$index]#*:}
  full=$("$venv/bin/python" -c 'import platform; print(platform.python_version())' || echo "$version")
  if wait "${pids[$index]}"; then
    summary+=("Python $full: passed ($(result_line "$logs/$version"))")
  else
    echo "=== Python $full: FAILED; its output:"; cat "$logs/$version"
    summary+=("Python $full: FAILED ($(result_line "$logs/$version"))"); status=1
  fi
done
echo "=== the suites ran at once in $((SECONDS - started)) s"
printf '%s\n' "${summary[@]}"
exit "$status"
