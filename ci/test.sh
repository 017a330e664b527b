#!/usr/bin/env bash
# Set up everything and run ruff, mypy, the import layers, the docs build and the test suite:
# a one-node Grid Engine with three more hosts in network namespaces, a one-node Slurm with three
# more nodes in namespaces of their own, the package, Chromium, and a virtual environment for every
# other Python that pyproject.toml declares.
#
# Two lanes run at once, each mostly waiting on its scheduler: local and Grid Engine in one pytest
# process (then the qmaster restarts in one of their own), and Slurm in another (drmaa-python loads
# one libdrmaa per process), followed by the local tests under every other Python (ci/pythons.sh).
# Without slurm-drmaa's source (ci/slurm.sh exits 3) Slurm is left out, saying so in one line (an
# error in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
say() { echo "=== $* ($SECONDS s)"; }

eval "$(bash ci/gridengine.sh)"
# In the background while Grid Engine's nodes come up and the habits are checked: Slurm (packages,
# slurm-drmaa's build, daemons), Debian's Chromium for the dashboard's browser tests (Playwright drives
# it; nothing is downloaded at test time), and the other Pythons' virtual environments. One apt at a time.
(
  status=0
  bash ci/slurm.sh >"$work/slurm.env" 2>"$work/slurm.log" || status=$?
  echo "$status" >"$work/slurm.status"
  if ! command -v chromium >/dev/null; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
  fi
  SHEEPDOG_PYTHONS_PREPARE_ONLY=1 SHEEPDOG_PYTHONS_SKIP=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
    bash ci/pythons.sh >"$work/pythons-prepare.log" 2>&1 \
    || echo "the other Pythons' environments failed: see the suites' summary" >>"$work/pythons-prepare.log"
) &
setup=$!
# Three execution hosts in network namespaces; after gridengine.sh, which restarts every execd.
eval "$(bash ci/multihost.sh)"
python3 -m pip install -q --disable-pip-version-check -e '.[test,dashboard]' 'playwright>=1.40' 2>&1 \
  | grep -v -e "Running pip as the 'root' user" -e "is ignored: it is neither" || true

# The habits first: lint, types and the layers on the whole tree; the documentation builds without a warning.
python3 -m ruff check .
python3 -m mypy
lint-imports --no-cache
bash ci/docs.sh

wait "$setup"
say "set up"
slurm_status=$(cat "$work/slurm.status")
if [ "$slurm_status" -ne 3 ]; then cat "$work/slurm.log" >&2; fi
if [ "$slurm_status" -eq 0 ]; then
  eval "$(cat "$work/slurm.env")"
  # Three Slurm nodes in network namespaces (ci/slurm-multihost.sh leaves /etc/hosts alone).
  eval "$(bash ci/slurm-multihost.sh)"
fi

# The Slurm lane, in the background: the Slurm suite, then the local tests under every other
# declared Python (their summary is printed at the end).
(
  status=0
  case "$slurm_status" in
    0)
      DRMAA_LIBRARY_PATH=$SLURM_DRMAA_LIBRARY_PATH python3 -m pytest -ra --durations=10 -m slurm \
        --ignore=tests/test_controller_restart.py tests "$@" || status=1
      # slurmctld killed mid-sweep: last, in a process of its own, as on Grid Engine.
      DRMAA_LIBRARY_PATH=$SLURM_DRMAA_LIBRARY_PATH python3 -m pytest -ra --durations=5 -m slurm \
        tests/test_controller_restart.py "$@" || status=1 ;;
    3)
      echo "Slurm was not tested: $(tail -n 1 "$work/slurm.log" | sed -e "s/^\[slurm\] //" -e "s/^Slurm cannot be tested: //")"
      if [ "${CI:-}" = true ]; then status=1; fi ;;  # in CI every scheduler must be tested
    *)
      echo "Slurm was not tested: ci/slurm.sh failed with status $slurm_status (its log is above)"
      status=1 ;;
  esac
  say "Slurm lane: Slurm tests done"
  cat "$work/pythons-prepare.log"
  SHEEPDOG_PYTHONS_SKIP=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])') \
    bash ci/pythons.sh "$@" || status=1
  say "Slurm lane: done"
  exit "$status"
) >"$work/slurm-lane.log" 2>&1 &
slurm_lane=$!

status=0
python3 -m pytest -ra --durations=10 -m "not slurm" --ignore=tests/test_controller_restart.py tests "$@" || status=$?
# The qmaster restarts last, in a process of their own: a DRMAA session that lived through many sweeps
# and a restart was seen to time out on Grid Engine's requests for a minute after qmaster was back
# (failing the tests after it too); a fresh one does not carry that into them, nor out of them.
python3 -m pytest -ra --durations=5 -m "not slurm" tests/test_controller_restart.py "$@" || status=$?
say "Grid Engine lane: done"
wait "$slurm_lane" || status=1
echo "=== the Slurm lane's output:"
cat "$work/slurm-lane.log"
exit "$status"
