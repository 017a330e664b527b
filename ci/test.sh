#!/usr/bin/env bash
# Set up everything (the package, a one-node Grid Engine with three more hosts in network
# namespaces, a one-node Slurm) and run ruff, mypy, the import layers, the docs build and the test suite:
# local and Grid Engine in one pytest process, and beside it Slurm in another (drmaa-python loads
# one libdrmaa per process), followed by the local tests under every other declared Python
# (ci/pythons.sh). Without slurm-drmaa's source (ci/slurm.sh exits 3) Slurm is left out, saying so
# in one line (an error in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash ci/gridengine.sh)"
# Three execution hosts in network namespaces; after gridengine.sh, which restarts every execd.
eval "$(bash ci/multihost.sh)"
python3 -m pip install -q --disable-pip-version-check -e '.[test,dashboard]' 'playwright>=1.40' 2>&1 \
  | grep -v -e "Running pip as the 'root' user" -e "is ignored: it is neither" || true
# A real browser for the dashboard's tests: Debian's Chromium, which Playwright drives (nothing is
# downloaded at test time).
if ! command -v chromium >/dev/null; then
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
fi

# The habits first: lint, types and the layers on the whole tree; the documentation builds without a warning.
python3 -m ruff check .
python3 -m mypy
lint-imports --no-cache
bash ci/docs.sh

slurm_log=$(mktemp)
trap 'rm -f "$slurm_log"' EXIT
slurm_status=0
slurm_env=$(bash ci/slurm.sh 2>"$slurm_log") || slurm_status=$?
if [ "$slurm_status" -ne 3 ]; then cat "$slurm_log" >&2; fi

# Slurm's suite runs beside the local and Grid Engine one (each mostly waits on its scheduler;
# drmaa-python loads one libdrmaa per process), then the local tests under every other Python version
# pyproject.toml declares (ci/pythons.sh), still beside it. Their output is printed after it.
side_suites() {
  local side_status=0
  case "$slurm_status" in
    0)
      eval "$slurm_env"
      DRMAA_LIBRARY_PATH=$SLURM_DRMAA_LIBRARY_PATH python3 -m pytest -ra --durations=10 -m slurm tests "$@" \
        || side_status=1 ;;
    3)
      echo "Slurm was not tested: $(tail -n 1 "$slurm_log" | sed -e "s/^\[slurm\] //" -e "s/^Slurm cannot be tested: //")"
      if [ "${CI:-}" = true ]; then side_status=1; fi ;;  # in CI every scheduler must be tested
    *)
      echo "Slurm was not tested: ci/slurm.sh failed with status $slurm_status (its log is above)"
      side_status=1 ;;
  esac
  SHEEPDOG_PYTHONS_SKIP=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
    bash ci/pythons.sh "$@" || side_status=1
  return "$side_status"
}
side_log=$(mktemp)
trap 'rm -f "$slurm_log" "$side_log"' EXIT
side_suites "$@" >"$side_log" 2>&1 &
side=$!

status=0
python3 -m pytest -ra --durations=10 -m "not slurm" tests "$@" || status=$?
wait "$side" || status=$?
echo "=== Slurm, and the local tests under the other Pythons (they ran beside the suite above)"
cat "$side_log"
exit "$status"
