#!/usr/bin/env bash
# Bring up, beside the one-node Slurm of ci/slurm.sh, three more Slurm nodes on this one machine
# (snode1..snode3, partition `multi`, declared in slurm.conf by ci/slurm.sh): each a network namespace
# with its own address on a bridge, its own hostname (UTS namespace), its own /etc/hosts view, and its
# own slurmd, started inside a cgroup-v1 freezer group (/sys/fs/cgroup/freezer/sheepdog-snodeN) so
# that a test can freeze or kill every process of a node. Modelled on ci/multihost.sh (Grid Engine).
#
#   bash ci/slurm-multihost.sh [up]   build what is missing (idempotent; a second run takes a second)
#   bash ci/slurm-multihost.sh down   stop the nodes (set DOWN), remove what this added
#   bash ci/slurm-multihost.sh restore [NODE...]   bring cut nodes back, as an admin would (link up,
#                               thaw, restart a dead slurmd, resume a DOWN node); jobs are left alone
#
# What Slurm needs, measured here (Slurm 22.05.8, Debian 12):
# - Debian's slurmd is built without --enable-multiple-slurmd, so one kernel network namespace holds
#   one slurmd (port 6818, one spool): each node has a namespace of its own, where `slurmd -N snodeN`
#   takes the node's name from the command line (the UTS hostname is set too, for the workers).
# - munge: its socket (/run/munge/munge.socket.2) is a path in the file system, which network
#   namespaces do not separate, and the nodes' mount namespaces share /run: the nodes' slurmds and
#   jobs use the one munged of this machine, unchanged.
# - The controller (SlurmctldHost, this machine's hostname) must resolve, inside a node, to the
#   bridge address: /etc/netns/snodeN/hosts is bind-mounted over /etc/hosts for slurmd; slurmctld
#   reaches a node at its NodeAddr (10.78.0.11-13, set in slurm.conf), never by resolving its name,
#   and so does sheepdog_drmaa (sinfo %o), so this machine's /etc/hosts is left alone. It must be:
#   replacing /etc/hosts by a rename (as an atomic rewrite does) detaches every bind mount over it in
#   other mount namespaces (Linux lazily unmounts mounts on a dentry that is renamed over), so each
#   node's processes then see this machine's /etc/hosts, where the controller's name is 127.0.0.1.
#   Measured here: one such rename cut the nodes of ci/multihost.sh off from qmaster for good
#   ("can't resolve client IP address") until their execds were restarted. `up` and `restore`
#   restart a slurmd that no longer sees its node's hosts file.
# - SlurmdSpoolDir, SlurmdPidFile and SlurmdLogFile hold %n (the node name) in slurm.conf, so each
#   slurmd has its own (/var/lib/slurm/slurmd/snodeN, /run/slurm/slurmd-snodeN.pid,
#   /var/log/slurm/slurmd-snodeN.log); a shared spool would mix the nodes' job sockets.
# - The nodes are declared in slurm.conf (State=UNKNOWN): until they are up they are listed DOWN,
#   not responding; ReturnToService=2 brings one back once its slurmd registers. (State=FUTURE would
#   hide them while they are not up, but slurmctld makes FUTURE nodes FUTURE again on every restart,
#   which then refuses their slurmd: a test that restarts slurmctld would lose the nodes.)
#
# What Slurm does with a node cut off, measured here with SlurmdTimeout=30 (ci/slurm.sh; default 300):
# - Link down or frozen: the node is `*` (not responding) about 25 s after the cut and DOWN after
#   41-46 s. A batch job running there is then requeued (JobRequeue defaults to 1 and slurm-drmaa
#   passes no --no-requeue): PENDING with Restarts=1, eligible again 121 s later (BeginTime), under
#   the same job id, while its processes may still run on the cut node (killed when it registers again).
# - A job cancelled while its node is cut off stays COMPLETING until the node answers or is set DOWN
#   (about 41 s after the cut), then leaves squeue. Once the link is back it leaves within a second.
# - A job sent to a node whose link is down is shown RUNNING there for about 12 s (the launch request
#   times out), then requeued, COMPLETING until the node is DOWN, then PENDING.
# - slurmd killed alone: the jobs go on running (slurmstepd reports their end to slurmctld itself);
#   a job that ends is COMPLETING until slurmd is back or the node is DOWN (~43 s).
#
# Needs root, and Slurm up (ci/slurm.sh, whose restart after a configuration change stops every
# slurmd, these nodes' too: a later run of this script restarts what died). Logs to stderr; `up`
# prints on stdout only the exports a test needs (SHEEPDOG_TEST_SLURM_NODES, ...).
set -euo pipefail

NODES=(snode1 snode2 snode3)
BRIDGE=sheepdog1
BRIDGE_MAC=02:78:00:00:00:01   # fixed: a bridge otherwise takes its lowest port MAC, which changes
PREFIX=10.78.0
SUBMIT_ADDRESS=$PREFIX.1
PARTITION=multi
FREEZER=/sys/fs/cgroup/freezer

log() { echo "[slurm-multihost] $*" >&2; }
die() { log "$*"; exit 1; }

node_index() { echo "${1#snode}"; }
node_address() { echo "$PREFIX.$((10 + $(node_index "$1")))"; }
cgroup_of() { echo "$FREEZER/sheepdog-$1"; }

. "$(dirname "$0")/lib.sh"

config() {  # config NAME: a value of the running Slurm's configuration, %n not expanded
  scontrol show config | awk -v k="$1" '$1 == k {print $3; exit}'
}
per_node() { echo "${1//%n/$2}"; }  # per_node PATH NODE

write_if_changed() {  # write_if_changed FILE CONTENT: in place (same inode: bind mounts keep seeing it)
  local file=$1 content=$2
  [ -n "$content" ] || die "refusing to write an empty $file"
  if [ ! -f "$file" ] || [ "$(cat "$file")" != "$content" ]; then
    printf '%s\n' "$content" >"$file"
  fi
}

# ---------------------------------------------------------------------------------------- network

hosts_entries() {
  local node
  for node in "${NODES[@]}"; do printf '%s %s\n' "$(node_address "$node")" "$node"; done
}

network_up() {
  namespaces_up
  local node

  # Inside a node (bind-mounted over /etc/hosts for its slurmd) the controller's name is the
  # bridge address: 127.0.0.1 there is the node's own loopback.
  local controller; controller=$(config 'SlurmctldHost[0]' | sed 's/(.*//')
  [ -n "$controller" ] || die "no SlurmctldHost in Slurm's configuration"
  for node in "${NODES[@]}"; do
    mkdir -p "/etc/netns/$node"
    write_if_changed "/etc/netns/$node/hosts" "$(printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n%s %s\n%s' \
      "$SUBMIT_ADDRESS" "$controller" "$(hosts_entries)")"
  done
}

network_down() {
  namespaces_down
}

# ---------------------------------------------------------------------------------------- slurmds

cgroup_pids() { [ -f "$(cgroup_of "$1")/cgroup.procs" ] && cat "$(cgroup_of "$1")/cgroup.procs" || true; }

slurmd_pid() {  # the node's slurmd, found through its freezer group
  local pid
  for pid in $(cgroup_pids "$1"); do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = slurmd ] && { echo "$pid"; return 0; }
  done
  return 1
}

node_state() { sinfo -h -N -n "$1" -o %T 2>/dev/null | head -n 1; }  # e.g. idle, mixed, down*, future

serving() {  # serving NODE [SINCE]: the controller hears the node (no *: it answers pings) and may send
  # it jobs; with SINCE (epoch seconds), only once a slurmd started since then has registered: a node
  # resumed by scontrol can show idle before its slurmd ever spoke.
  case "$(node_state "$1")" in idle | mixed | allocated | completing) ;; *) return 1 ;; esac
  [ -z "${2:-}" ] && return 0
  local started
  started=$(scontrol show node "$1" | grep -o 'SlurmdStartTime=[^ ]*' | cut -d= -f2)
  [ -n "$started" ] && [ "$started" != None ] && [ "$(date -d "$started" +%s)" -ge "$2" ]
}

start_slurmd() {
  local node=$1 group; group=$(cgroup_of "$node")
  mkdir -p "$(per_node "$(config SlurmdSpoolDir)" "$node")"
  rm -f "$(per_node "$(config SlurmdPidFile)" "$node")"
  # Join the freezer group first; slurmd, its slurmstepds and the jobs inherit the group, the
  # namespaces and the name. Not `ip netns exec`: it mounts a new /sys, without /sys/fs/cgroup, and
  # slurmd 22.05 then refuses to start ("No filesystem mounted on /sys/fs/cgroup", "Unable to
  # initialize cgroup plugin") even with proctrack/linuxproc and task/none. So the network namespace
  # by nsenter, and in a mount namespace of its own the node's hosts file over /etc/hosts.
  sh -c 'echo $$ >"$1/cgroup.procs" && exec nsenter --net="/run/netns/$2" unshare --mount --uts sh -c \
           "mount --bind /etc/netns/$2/hosts /etc/hosts && hostname $2 && exec slurmd -N $2"' \
    start-slurmd "$group" "$node" >/dev/null 2>&1
}

stop_node_processes() {  # every process of the node: slurmd, slurmstepds, jobs
  local node=$1 group pid; group=$(cgroup_of "$node")
  [ -d "$group" ] || return 0
  echo THAWED >"$group/freezer.state"
  pid=$(slurmd_pid "$node") && kill -TERM "$pid" 2>/dev/null || true
  wait_for 10 "slurmd of $node to stop" sh -c "! grep -qx '${pid:-0}' '$group/cgroup.procs'" || true
  for pid in $(cgroup_pids "$node"); do kill -9 "$pid" 2>/dev/null || true; done
  wait_for 10 "the processes of $node to end" sh -c "[ -z \"\$(cat '$group/cgroup.procs')\" ]" || true
}

resume_if_needed() {  # a node DOWN, DRAINED or FUTURE is resumed, as an admin does
  local state; state=$(node_state "$1")
  case "$state" in
    "") die "slurmctld does not know $1: run ci/slurm.sh, which declares the nodes in slurm.conf" ;;
    *down* | *drain* | *fail* | *future*) log "$1 is $state: resuming it"
                   scontrol update nodename="$1" state=resume >/dev/null 2>&1 || true ;;
  esac
}

slurmds_up() {  # slurmds_up [NODE...]: every node by default
  local node group pid since=()
  [ $# -gt 0 ] || set -- "${NODES[@]}"
  for node in "$@"; do
    group=$(cgroup_of "$node")
    mkdir -p "$group"
    [ "$(cat "$group/freezer.state")" = THAWED ] || { log "thawing $node"; echo THAWED >"$group/freezer.state"; }
    resume_if_needed "$node"
    since+=("")
    if pid=$(slurmd_pid "$node") && ! cmp -s "/proc/$pid/root/etc/hosts" "/etc/netns/$node/hosts"; then
      log "slurmd of $node (pid $pid) no longer sees /etc/netns/$node/hosts (/etc/hosts was replaced?); restarting it"
      kill -TERM "$pid" 2>/dev/null || true
      wait_for 10 "slurmd of $node to stop" sh -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
    fi
    if ! slurmd_pid "$node" >/dev/null; then
      log "starting slurmd on $node"
      since[-1]=$(date +%s)
      start_slurmd "$node" || log "slurmd of $node failed to start: $(tail -n 1 "$(per_node "$(config SlurmdLogFile)" "$node")")"
    fi
  done
  local i=0
  for node in "$@"; do
    if ! wait_for 60 "$node to serve" serving "$node" "${since[$i]}"; then
      resume_if_needed "$node"   # set DOWN while it was coming back
      wait_for 30 "$node to serve" serving "$node" "${since[$i]}" ||
        die "$node is $(node_state "$node"); see $(per_node "$(config SlurmdLogFile)" "$node")"
    fi
    i=$((i + 1))
  done
}

slurmds_down() {
  local node
  for node in "${NODES[@]}"; do
    if [ -n "$(cgroup_pids "$node")" ]; then log "stopping $node"; fi
    stop_node_processes "$node"
    rmdir "$(cgroup_of "$node")" 2>/dev/null || true
    # DOWN ends what Slurm still holds there, as it would after SlurmdTimeout.
    scontrol update nodename="$node" state=down reason="ci/slurm-multihost.sh down" >/dev/null 2>&1 || true
  done
}

jobs_on_partition() { squeue -h -p "$PARTITION" -o %i 2>/dev/null | sort -u; }

cancel_jobs() {  # cancel_jobs SECONDS: the jobs of the partition, waited for that long
  local ids; ids=$(jobs_on_partition | xargs)
  [ -n "$ids" ] || return 0
  log "cancelling the jobs left in partition $PARTITION: $ids"
  # shellcheck disable=SC2086
  scancel $ids 2>/dev/null || true
  wait_for "$1" "the jobs of partition $PARTITION to leave" sh -c "[ -z \"\$(squeue -h -p '$PARTITION' -o %i)\" ]"
}

# ------------------------------------------------------------------------------------------ main

[ "$(id -u)" = 0 ] || die "run as root"
[ -d "$FREEZER" ] || die "no cgroup-v1 freezer hierarchy at $FREEZER"
scontrol ping 2>/dev/null | grep -q 'is UP' || die "slurmctld does not answer: run ci/slurm.sh first"
scontrol show partition "$PARTITION" >/dev/null 2>&1 || die "no partition $PARTITION in slurm.conf: run ci/slurm.sh first"

case "${1:-up}" in
  up)
    start=$SECONDS
    network_up
    slurmds_up
    cancel_jobs 60   # nothing left from an earlier run (e.g. jobs of a node that died)
    log "up in $((SECONDS - start)) s: $(sinfo -h -N -p "$PARTITION" -o '%N %T %c' | xargs)"
    cat <<ENV
export SHEEPDOG_TEST_SLURM_NODES="${NODES[*]}"
export SHEEPDOG_TEST_SLURM_SUBMIT_ADDRESS=$SUBMIT_ADDRESS
export SHEEPDOG_TEST_SLURM_PARTITION=$PARTITION
export SHEEPDOG_TEST_SLURM_BRIDGE=$BRIDGE
export SHEEPDOG_TEST_SLURM_FREEZER=$FREEZER/sheepdog-
ENV
    ;;
  down)
    start=$SECONDS
    cancel_jobs 10 || true   # jobs of a cut node stay until it is DOWN, below
    slurmds_down
    [ -z "$(jobs_on_partition)" ] || log "jobs left in partition $PARTITION: $(jobs_on_partition | xargs)"
    network_down
    log "down in $((SECONDS - start)) s"
    ;;
  restore)
    shift
    [ $# -gt 0 ] || set -- "${NODES[@]}"
    for node in "$@"; do
      printf '%s\n' "${NODES[@]}" | grep -qx -- "$node" || die "restore: unknown node $node (nodes: ${NODES[*]})"
    done
    start=$SECONDS
    network_up   # idempotent: brings every veth (back) up
    slurmds_up "$@"
    log "restored $* in $((SECONDS - start)) s"
    ;;
  *)
    die "usage: $0 [up|down|restore [NODE...]]"
    ;;
esac
