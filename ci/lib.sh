# Shell helpers shared by the bring-up scripts; each defines log() before sourcing this file.

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: until COMMAND succeeds, or log and fail
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then log "timed out waiting for $what"; return 1; fi
    sleep 0.2
  done
}
