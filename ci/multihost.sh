#!/usr/bin/env bash
# Bring up, beside the running one-node Grid Engine of ci/gridengine.sh, three execution hosts on
# this one machine: each a network namespace (node1..node3) with its own address on a bridge, its
# own hostname (UTS namespace), its own /etc/hosts view, and its own sge_execd and spool, started
# inside a cgroup-v1 freezer group (/sys/fs/cgroup/freezer/sheepdog-nodeN) so that a test can
# freeze or kill every process of a node. The nodes serve their own queue, nodes.q, which takes
# only jobs that request the forced complex (-l multihost=1); all.q and its host are not touched.
#
#   bash ci/multihost.sh [up]   build what is missing (idempotent; a second run takes seconds)
#   bash ci/multihost.sh down   stop the nodes and remove everything this script added
#   bash ci/multihost.sh restore [NODE...]   bring cut nodes back, as an admin would (link up, thaw,
#                               restart a dead or unheard execd); their jobs are left alone. ~1-10 s
#
# Needs root and a running qmaster: run it after ci/gridengine.sh, whose `pkill -x sge_execd` (like
# `/etc/init.d/gridengine-exec stop`, which matches every sge_execd binary) also kills the nodes'
# execds; a later run of this script restarts what died. Logs to stderr; `up` prints on stdout only
# the exports a test needs (SHEEPDOG_TEST_NODES, _SUBMIT_ADDRESS, _NODE_QUEUE, _NODE_RESOURCE, ...).
set -euo pipefail

export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
unset SGE_EXECD_PIDFILE
common=$SGE_ROOT/$SGE_CELL/common

NODES=(node1 node2 node3)
BRIDGE=sheepdog0
BRIDGE_MAC=02:77:00:00:00:01   # fixed: a bridge otherwise takes its lowest port MAC, which changes
PREFIX=10.77.0
SUBMIT_ADDRESS=$PREFIX.1
QUEUE=nodes.q
HOSTGROUP=@nodes
COMPLEX=multihost
COMPLEX_SHORTCUT=mhost
SLOTS=4
SPOOL=/var/spool/gridengine/multihost
FREEZER=/sys/fs/cgroup/freezer
MARK_BEGIN="# BEGIN sheepdog multihost (ci/multihost.sh)"
MARK_END="# END sheepdog multihost"

log() { echo "[multihost] $*" >&2; }
die() { log "$*"; exit 1; }

node_index() { echo "${1#node}"; }
node_address() { echo "$PREFIX.$((10 + $(node_index "$1")))"; }
node_gid_range() { local i; i=$(node_index "$1"); echo "$((20000 + 1000 * i))-$((20000 + 1000 * i + 99))"; }
cgroup_of() { echo "$FREEZER/sheepdog-$1"; }

. "$(dirname "$0")/lib.sh"

write_if_changed() {  # write_if_changed FILE CONTENT: in place (same inode: bind mounts keep seeing it)
  local file=$1 content=$2
  [ -n "$content" ] || die "refusing to write an empty $file"
  if [ ! -f "$file" ] || [ "$(cat "$file")" != "$content" ]; then
    printf '%s\n' "$content" >"$file"
  fi
}

set_root_hosts() {  # set_root_hosts CONTENT: /etc/hosts replaced atomically (rename), never seen empty
  local content=$1 old; old=$(cat /etc/hosts)
  [ "$old" = "$content" ] && return 0
  # Every line outside our block must survive: other users of this machine resolve through it.
  [ "$(strip_block <<<"$content")" = "$(strip_block <<<"$old")" ] || die "refusing to rewrite /etc/hosts: lines outside the marked block would change"
  [ -n "$(strip_block <<<"$content")" ] || die "refusing to write /etc/hosts without its own entries"
  cp -p /etc/hosts "$tmp/hosts.new"
  printf '%s\n' "$content" >"$tmp/hosts.new"
  mv -f "$tmp/hosts.new" /etc/hosts
}

qmaster_name() { cat "$common/act_qmaster"; }

qc() {  # qc QCONF-ARGS...: qconf, quiet unless it fails
  local out
  out=$(qconf "$@" 2>&1) || { log "qconf $* failed: $out"; return 1; }
}

# ---------------------------------------------------------------------------------------- network

hosts_entries() {
  local node
  for node in "${NODES[@]}"; do printf '%s %s\n' "$(node_address "$node")" "$node"; done
}

strip_block() { awk -v b="$MARK_BEGIN" -v e="$MARK_END" '$0 == b {skip=1} !skip {print} $0 == e {skip=0}'; }

network_up() {
  namespaces_up
  local node

  # The root view must name every node (qmaster resolves the execds' addresses); each node's view
  # (bind-mounted over /etc/hosts by `ip netns exec`) must resolve the qmaster's name to the bridge
  # address, since 127.0.0.1 inside a node is the node's own loopback.
  local block base names
  block=$(hosts_entries)
  base=$(strip_block </etc/hosts)
  set_root_hosts "$base"$'\n'"$MARK_BEGIN"$'\n'"$block"$'\n'"$MARK_END"
  names=$(qmaster_name)
  [ "$(hostname)" = "$names" ] || names="$names $(hostname)"
  for node in "${NODES[@]}"; do
    mkdir -p "/etc/netns/$node"
    write_if_changed "/etc/netns/$node/hosts" "$(printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n%s %s\n%s' \
      "$SUBMIT_ADDRESS" "$names" "$block")"
  done
}

network_down() {
  namespaces_down
  if grep -qxF "$MARK_BEGIN" /etc/hosts; then
    log "removing the nodes from /etc/hosts"
    set_root_hosts "$(strip_block </etc/hosts)"
  fi
}

# ------------------------------------------------------------------------------------ Grid Engine

qconf_file() {  # qconf_file NAME CONTENT-ON-STDIN: a file named NAME (qconf -Aconf takes the host from it)
  local file=$tmp/$1
  cat >"$file"
  echo "$file"
}

complex_line() { printf '%-19s %-10s BOOL      ==    FORCED      NO         FALSE    0\n' "$COMPLEX" "$COMPLEX_SHORTCUT"; }

gridengine_up() {
  # A FORCED boolean: only jobs that ask -l multihost=1 may run in a queue that offers it.
  if ! qconf -sc | awk -v c="$COMPLEX" '$1 == c {found=1} END {exit !found}'; then
    log "adding the forced complex $COMPLEX"
    { qconf -sc | grep -v '^#'; complex_line; } >"$tmp/complexes"
    qc -Mc "$tmp/complexes"
  fi

  local node file
  for node in "${NODES[@]}"; do
    if ! qconf -se "$node" >/dev/null 2>&1; then
      log "adding execution host $node"
      file=$(printf 'hostname %s\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' "$node" |
        qconf_file "exechost-$node")
      qc -Ae "$file"
    fi
    qconf -sh 2>/dev/null | grep -qx "$node" || qc -ah "$node"
    # Own spool; a distinct gid_range: all nodes share one kernel, and Grid Engine tracks a job's
    # processes by an additional group id taken from this range.
    if [ "$(qconf -sconf "$node" 2>/dev/null | awk '$1 == "gid_range" || $1 == "execd_spool_dir" {print $1, $2}' | sort)" != \
         "$(printf 'execd_spool_dir %s\ngid_range %s\n' "$SPOOL" "$(node_gid_range "$node")")" ]; then
      log "host configuration of $node: spool $SPOOL/$node, gid_range $(node_gid_range "$node")"
      qconf -dconf "$node" >/dev/null 2>&1 || true
      file=$(printf 'mailer /usr/bin/mail\nxterm /usr/bin/xterm\nexecd_spool_dir %s\ngid_range %s\n' \
        "$SPOOL" "$(node_gid_range "$node")" | qconf_file "$node")
      qc -Aconf "$file"
    fi
  done

  file=$(printf 'group_name %s\nhostlist %s\n' "$HOSTGROUP" "${NODES[*]}" | qconf_file hostgroup)
  if [ "$(qconf -shgrp "$HOSTGROUP" 2>/dev/null | awk '$1 == "hostlist" {$1=""; print}' | xargs -n1 | sort | xargs)" != \
       "$(printf '%s\n' "${NODES[@]}" | sort | xargs)" ]; then
    log "host group $HOSTGROUP: ${NODES[*]}"
    qconf -Ahgrp "$file" >/dev/null 2>&1 || qc -Mhgrp "$file"
  fi

  qconf -sq 2>/dev/null | sed \
    -e "s/^qname .*/qname $QUEUE/" -e "s/^hostlist .*/hostlist $HOSTGROUP/" \
    -e "s/^slots .*/slots $SLOTS/" -e 's/^load_thresholds .*/load_thresholds NONE/' \
    -e 's/^pe_list .*/pe_list smp/' -e 's/^shell .*/shell \/bin\/sh/' \
    -e "s/^complex_values .*/complex_values $COMPLEX=TRUE/" >"$tmp/queue"
  if ! qconf -sq "$QUEUE" >/dev/null 2>&1; then
    log "adding queue $QUEUE on $HOSTGROUP ($SLOTS slots per node, only for -l $COMPLEX=1)"
    qc -Aq "$tmp/queue"
  elif [ "$(qconf -sq "$QUEUE" | awk '$1 ~ /^(hostlist|slots|load_thresholds|pe_list|shell|complex_values)$/' | xargs)" != \
         "$(awk '$1 ~ /^(hostlist|slots|load_thresholds|pe_list|shell|complex_values)$/' "$tmp/queue" | xargs)" ]; then
    log "updating queue $QUEUE"
    qc -Mq "$tmp/queue"
  fi
}

jobs_on_nodes() {  # ids of the jobs that Grid Engine places in the nodes' queue (any state)
  qstat -u '*' -q "$QUEUE" 2>/dev/null | awk 'NR > 2 {print $1}' | sort -u
}

gridengine_down() {
  local ids node
  ids=$(jobs_on_nodes | xargs)
  if [ -n "$ids" ]; then
    log "deleting the jobs left on the nodes: $ids"
    # shellcheck disable=SC2086
    qdel -f $ids >/dev/null 2>&1 || true
    wait_for 30 "the nodes' jobs to leave" sh -c "[ -z \"\$(qstat -u '*' -q '$QUEUE' 2>/dev/null)\" ]" || true
  fi
  if qconf -sq "$QUEUE" >/dev/null 2>&1; then log "removing queue $QUEUE"; qc -dq "$QUEUE"; fi
  if qconf -shgrp "$HOSTGROUP" >/dev/null 2>&1; then qc -dhgrp "$HOSTGROUP"; fi
  for node in "${NODES[@]}"; do
    if qconf -se "$node" >/dev/null 2>&1; then log "removing execution host $node"; qc -de "$node"; fi
    if qconf -sh 2>/dev/null | grep -qx "$node"; then qc -dh "$node"; fi
    if qconf -ss 2>/dev/null | grep -qx "$node"; then qc -ds "$node"; fi
    if qconf -sconf "$node" >/dev/null 2>&1; then qc -dconf "$node"; fi
  done
  if qconf -sc | awk -v c="$COMPLEX" '$1 == c {found=1} END {exit !found}'; then
    log "removing the complex $COMPLEX"
    qconf -sc | grep -v '^#' | awk -v c="$COMPLEX" '$1 != c' >"$tmp/complexes"
    qc -Mc "$tmp/complexes"
  fi
}

# ----------------------------------------------------------------------------------------- execds

cgroup_pids() { [ -f "$(cgroup_of "$1")/cgroup.procs" ] && cat "$(cgroup_of "$1")/cgroup.procs" || true; }

execd_pid() {  # the node's sge_execd, found through its freezer group
  local pid
  for pid in $(cgroup_pids "$1"); do
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = sge_execd ] && { echo "$pid"; return 0; }
  done
  return 1
}

registered() {  # the node's execd answers and qmaster hears it (its queue instance is not in state u)
  # qmaster notices a dead execd only after minutes, so its view alone can be stale: ask execd too.
  timeout 5 qping -info "$1" 6445 execd 1 >/dev/null 2>&1 || return 1
  qstat -f -q "$QUEUE@$1" 2>/dev/null | awk -v q="$QUEUE@$1" '$1 == q {found=1; if ($6 ~ /u/) bad=1} END {exit !(found && !bad)}'
}

start_execd() {
  local node=$1 group; group=$(cgroup_of "$node")
  mkdir -p "$SPOOL/$node"
  chown sgeadmin:sgeadmin "$SPOOL" "$SPOOL/$node"
  # Join the freezer group before `ip netns exec`, which remounts /sys for the namespace and hides
  # /sys/fs/cgroup; execd, its shepherds and the jobs inherit the group, the namespaces and the name.
  sh -c 'echo $$ >"$1/cgroup.procs" && exec ip netns exec "$2" unshare --uts sh -c "hostname $2 && exec /usr/lib/gridengine/sge_execd"' \
    start-execd "$group" "$node" >/dev/null 2>&1
}

stop_node_processes() {  # every process of the node: execd, shepherds, jobs
  local node=$1 group pid; group=$(cgroup_of "$node")
  [ -d "$group" ] || return 0
  echo THAWED >"$group/freezer.state"
  pid=$(execd_pid "$node") && kill -TERM "$pid" 2>/dev/null || true
  wait_for 10 "execd of $node to stop" sh -c "! grep -qx '${pid:-0}' '$group/cgroup.procs'" || true
  for pid in $(cgroup_pids "$node"); do kill -9 "$pid" 2>/dev/null || true; done
  wait_for 10 "the processes of $node to end" sh -c "[ -z \"\$(cat '$group/cgroup.procs')\" ]" || true
}

execds_up() {  # execds_up [NODE...]: every node by default
  local node group pid
  [ $# -gt 0 ] || set -- "${NODES[@]}"
  for node in "$@"; do
    group=$(cgroup_of "$node")
    mkdir -p "$group"
    [ "$(cat "$group/freezer.state")" = THAWED ] || { log "thawing $node"; echo THAWED >"$group/freezer.state"; }
    if pid=$(execd_pid "$node"); then
      if registered "$node"; then continue; fi
      # After a long cut execd stops trying to register for minutes: restart it.
      log "execd of $node (pid $pid) is not heard by qmaster; restarting it"
      kill -TERM "$pid" 2>/dev/null || true
      wait_for 10 "execd of $node to stop" sh -c "! kill -0 $pid" || kill -9 "$pid" 2>/dev/null || true
    fi
    log "starting execd on $node"
    start_execd "$node"
  done
  for node in "$@"; do
    wait_for 60 "execd of $node to register" registered "$node" ||
      die "execd of $node did not register; see $SPOOL/$node/messages and /tmp/execd_messages.*"
  done
}

execds_down() {
  local node
  for node in "${NODES[@]}"; do
    if [ -n "$(cgroup_pids "$node")" ]; then log "stopping $node"; fi
    stop_node_processes "$node"
    rmdir "$(cgroup_of "$node")" 2>/dev/null || true
  done
  rm -rf "$SPOOL"
}

# ------------------------------------------------------------------------------------------ main

[ "$(id -u)" = 0 ] || die "run as root"
[ -f "$common/act_qmaster" ] || die "no Grid Engine cell at $SGE_ROOT/$SGE_CELL: run ci/gridengine.sh first"
[ -d "$FREEZER" ] || die "no cgroup-v1 freezer hierarchy at $FREEZER"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

case "${1:-up}" in
  up)
    qstat >/dev/null 2>&1 || die "qmaster does not answer: run ci/gridengine.sh first"
    start=$SECONDS
    network_up
    gridengine_up
    execds_up
    # Nothing left from an earlier run on the nodes (e.g. jobs of a node that died), queue usable.
    ids=$(jobs_on_nodes | xargs)
    if [ -n "$ids" ]; then
      log "deleting jobs left on the nodes: $ids"
      # shellcheck disable=SC2086
      qdel -f $ids >/dev/null 2>&1 || true
      wait_for 60 "old jobs to leave the nodes" sh -c "[ -z \"\$(qstat -u '*' -q '$QUEUE' 2>/dev/null)\" ]"
    fi
    qmod -c "$QUEUE" >/dev/null 2>&1 || true
    qmod -e "$QUEUE" >/dev/null 2>&1 || true
    log "up in $((SECONDS - start)) s: $(qstat -f -q "$QUEUE" | awk -v q="$QUEUE@" 'index($1, q) == 1 {printf "%s %s  ", $1, $3}')"
    cat <<ENV
export SGE_ROOT=$SGE_ROOT
export SGE_CELL=$SGE_CELL
export DRMAA_LIBRARY_PATH=/usr/lib/gridengine-drmaa/lib/libdrmaa.so.1.0
export GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096
export SHEEPDOG_TEST_NODES="${NODES[*]}"
export SHEEPDOG_TEST_SUBMIT_ADDRESS=$SUBMIT_ADDRESS
export SHEEPDOG_TEST_NODE_QUEUE=$QUEUE
export SHEEPDOG_TEST_NODE_RESOURCE="-l $COMPLEX=1"
export SHEEPDOG_TEST_NODE_BRIDGE=$BRIDGE
export SHEEPDOG_TEST_NODE_FREEZER=$FREEZER/sheepdog-
ENV
    ;;
  down)
    start=$SECONDS
    execds_down
    if qstat >/dev/null 2>&1; then gridengine_down; else log "qmaster does not answer: its configuration for the nodes is left"; fi
    network_down
    log "down in $((SECONDS - start)) s"
    ;;
  restore)
    shift
    [ $# -gt 0 ] || set -- "${NODES[@]}"
    for node in "$@"; do
      printf '%s\n' "${NODES[@]}" | grep -qx -- "$node" || die "restore: unknown node $node (nodes: ${NODES[*]})"
    done
    qstat >/dev/null 2>&1 || die "qmaster does not answer: run ci/gridengine.sh first"
    start=$SECONDS
    network_up   # idempotent: brings every veth (back) up
    execds_up "$@"
    log "restored $* in $((SECONDS - start)) s"
    ;;
  *)
    die "usage: $0 [up|down|restore [NODE...]]"
    ;;
esac
