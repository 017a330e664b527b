#!/usr/bin/env bash
# Bring up a one-node Slurm on Debian, as root and without systemd, beside the Grid Engine of
# ci/gridengine.sh, from whatever state the machine is in: packages missing or installed, daemons
# dead or alive, old jobs in the spool, the node DOWN or DRAINED. Builds DRMAA for Slurm
# (slurm-drmaa) from its source tarball into a fixed prefix outside the repository, once per tarball.
# Ends with munge, slurmctld and slurmd up, the node idle and no job left.
# Prints the environment to use as shell exports. It does not export DRMAA_LIBRARY_PATH (that one
# belongs to Grid Engine): a Slurm client sets DRMAA_LIBRARY_PATH=$SLURM_DRMAA_LIBRARY_PATH.
# Exits 3, with one line on stderr, when Slurm cannot be tested (no slurm-drmaa and no tarball).
# SLURM_DRMAA_TARBALL and SLURM_DRMAA_PREFIX override the source and the install prefix.
set -euo pipefail

host=$(hostname)
here=$(cd "$(dirname "$0")" && pwd)
# Beside the project (../shared/third_party), or where the project's machines keep it.
tarball=${SLURM_DRMAA_TARBALL:-$here/../../shared/third_party/slurm-drmaa-1.1.6.tar.gz}
[ -f "$tarball" ] || [ -n "${SLURM_DRMAA_TARBALL:-}" ] || tarball=/work/shared/third_party/slurm-drmaa-1.1.6.tar.gz
prefix=${SLURM_DRMAA_PREFIX:-/opt/slurm-drmaa}
conf=/etc/slurm/slurm.conf
gres=/etc/slurm/gres.conf
state=/var/lib/slurm/slurmctld
slurmd_timeout=30
multi_nodes='snode[1-3]'           # ci/slurm-multihost.sh starts them
multi_addresses='10.78.0.[11-13]'
log() { echo "[slurm] $*" >&2; }

. "$(dirname "$0")/lib.sh"

check_tarball() {
  if [ ! -f "$tarball" ] && [ ! -f "$prefix/lib/libdrmaa.so" ]; then
    echo "[slurm] Slurm cannot be tested: DRMAA for Slurm is not installed in $prefix and its source $tarball is missing" >&2
    exit 3
  fi
}

install_packages() {
  if dpkg -s slurm-wlm slurmctld slurmd slurm-client munge libslurm-dev gcc make >/dev/null 2>&1; then
    return
  fi
  log "installing Slurm and munge packages"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    slurm-wlm slurmctld slurmd slurm-client munge libslurm-dev gcc make >/dev/null
}

build_drmaa() {  # once per tarball and libslurm version; the stamp says which
  local sum want have="" build
  if [ ! -f "$tarball" ]; then
    log "source tarball missing, using the slurm-drmaa already in $prefix"
    return
  fi
  sum=$(sha256sum "$tarball" | cut -d' ' -f1)
  want="$sum libslurm-dev=$(dpkg-query -W -f='${Version}' libslurm-dev)"
  [ -f "$prefix/.built-from" ] && have=$(cat "$prefix/.built-from")
  if [ "$have" = "$want" ] && [ -f "$prefix/lib/libdrmaa.so" ]; then
    return
  fi
  log "building slurm-drmaa from $(basename "$tarball") into $prefix"
  build=$(mktemp -d)
  tar -xzf "$tarball" -C "$build" --strip-components=1
  (cd "$build" && ./configure -q --prefix="$prefix" && make -s -j"$(nproc)" && make -s install) \
    >"$build.log" 2>&1 || { log "slurm-drmaa build failed; see $build.log"; exit 1; }
  rm -rf "$build" "$build.log"
  echo "$want" >"$prefix/.built-from"
}

write_configuration() {  # prints "changed" when slurm.conf differs from what the daemons run with
  local new; new=$(mktemp)
  mkdir -p /etc/slurm "$prefix/etc"
  cat >"$new" <<CONF
# Written by sheepdog_drmaa's ci/slurm.sh: a one-node test cluster. Edits are overwritten.
ClusterName=sheepdog
SlurmctldHost=$host
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$state
# Per node (%n: the node's name), so that the nodes of ci/slurm-multihost.sh, each a slurmd of its own
# on this one machine, do not share a spool, a pid file or a log with this one (node $host).
SlurmdSpoolDir=/var/lib/slurm/slurmd/%n
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
# No systemd and no cgroup controllers here.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Memory use is sampled every second and a job over its --mem is killed (no cgroups here to do it).
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
MpiDefault=none
# Cores and memory are consumed: a job takes one core and DefMemPerCPU MB unless it asks for more,
# so 8 one-core jobs run at once, as on the Grid Engine test queue. The node declares 8 GB and two
# GPU-like generic resources (see gres.conf), as a site's node would.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
GresTypes=gpu
SlurmdParameters=config_overrides
# Start array tasks at once instead of every 3 s.
SchedulerParameters=batch_sched_delay=0
# Seconds a finished job's record stays (purged on a 60 s tick after that). Once it is gone,
# slurm-drmaa makes up the exit information ("exit 0", or "aborted"), so the client must reap
# every job within this time; reaping is slow (one controller query per unreaped job per wait),
# and at 30 s half of a 300-task array came back "exit 0" instead of "exit 3". Slurm's default.
MinJobAge=300
ReturnToService=2
# A node that does not answer for this long is set DOWN (default 300 s; measured: DOWN 41-52 s after a
# node is cut off) and its running jobs NODE_FAIL (then requeued, as JobRequeue=1 by default), so that a
# multi-host test sees it happen within its bounds.
SlurmdTimeout=$slurmd_timeout
NodeName=$host CPUs=8 RealMemory=8000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
# The three nodes of ci/slurm-multihost.sh (network namespaces on this machine), in a partition of
# their own that is not the default: jobs that do not ask for it never go there. Until that script
# starts them they are listed DOWN (not responding) by sinfo; once their slurmd registers,
# ReturnToService=2 puts them back. (Not State=FUTURE, which hides them: slurmctld
# puts FUTURE nodes back to FUTURE whenever it restarts, even after they registered.)
NodeName=$multi_nodes NodeAddr=$multi_addresses CPUs=4 RealMemory=4000 State=UNKNOWN
PartitionName=multi Nodes=$multi_nodes Default=NO MaxTime=INFINITE State=UP
CONF
  # Slurm drops a gpu without device files ("Removing file-less GPU"), so two stand-ins for GPUs:
  # character devices like /dev/null (with task/none nothing is bound to them; they are counted).
  local i
  for i in 0 1; do
    [ -c "/dev/sheepdog-gpu$i" ] || mknod -m 666 "/dev/sheepdog-gpu$i" c 1 3
  done
  printf '# Written by sheepdog_drmaa'"'"'s ci/slurm.sh: two GPU-like resources (stand-in devices).\nNodeName=%s Name=gpu File=/dev/sheepdog-gpu[0-1]\n' \
    "$host" >"$new.gres"
  if cmp -s "$new" "$conf" && cmp -s "$new.gres" "$gres"; then
    rm -f "$new" "$new.gres"
  else
    mv "$new" "$conf"
    mv "$new.gres" "$gres"
    chmod 644 "$conf" "$gres"
    echo changed
  fi
  # Blocking waits poll Slurm every second instead of every 10 s.
  echo 'pool_delay: 1,' >"$prefix/etc/slurm_drmaa.conf"
}

munge_up() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating the munge key"
    mungekey --create --keyfile=/etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 600 /etc/munge/munge.key
  munge_up && return
  log "starting munge"
  pkill -x munged 2>/dev/null || true
  rm -f /run/munge/munged.pid
  mkdir -p /run/munge && chown munge:munge /run/munge
  /etc/init.d/munge start >/dev/null 2>&1 || true
  if ! wait_for 10 "munged" munge_up; then
    # A munged killed hard leaves its socket and lock behind: --force takes them over.
    runuser -u munge -- /usr/sbin/munged --force
    wait_for 10 "munged" munge_up
  fi
}

controller_up() { scontrol ping | grep -q 'is UP'; }

# This node's slurmd: the one in this network namespace (the nodes of ci/slurm-multihost.sh run
# theirs in namespaces of their own, and are left alone unless the configuration changed).
own_slurmd() {
  local pid own; own=$(readlink /proc/self/ns/net)
  for pid in $(pgrep -x slurmd); do
    [ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" = "$own" ] && { echo "$pid"; return 0; }
  done
  return 1
}

stop_slurm() {  # every slurmd (those of ci/slurm-multihost.sh's nodes too: it restarts them) and slurmctld
  local pid
  for pid in $(pgrep -x slurmd) $(pgrep -x slurmctld); do kill "$pid" 2>/dev/null || true; done
  wait_for 15 "Slurm daemons to stop" sh -c '! pgrep -x slurmd && ! pgrep -x slurmctld' || {
    for pid in $(pgrep -x slurmd) $(pgrep -x slurmctld); do kill -9 "$pid" 2>/dev/null || true; done
  }
}

start_slurm() {
  mkdir -p /run/slurm /var/log/slurm "$state" "/var/lib/slurm/slurmd/$host"
  chown slurm:slurm /run/slurm /var/log/slurm "$state"
  if ! pgrep -x slurmctld >/dev/null; then
    log "starting slurmctld"
    rm -f /run/slurm/slurmctld.pid
    slurmctld
    if ! wait_for 20 "slurmctld" controller_up; then
      log "slurmctld did not come up on its saved state ($(tail -n 1 /var/log/slurm/slurmctld.log)); starting it afresh"
      pkill -9 -x slurmctld 2>/dev/null || true
      slurmctld -c -i
      wait_for 20 "slurmctld" controller_up
    fi
  fi
  if ! own_slurmd >/dev/null; then
    log "starting slurmd"
    rm -f "/run/slurm/slurmd-$host.pid"
    slurmd
  fi
}

node_state() { sinfo -h -N -n "$host" -o %T 2>/dev/null; }

node_idle() {
  case "$(node_state)" in idle | mixed | allocated) return 0 ;; *) return 1 ;; esac
}

cancel_all_jobs() {
  [ -z "$(squeue -h -o %i)" ] && return
  log "cancelling $(squeue -h -r -o %i | wc -l) job(s) left from earlier runs"
  scancel --full --quiet --user=root || true
  squeue -h -o %i | xargs -r scancel --quiet || true
  wait_for 60 "old jobs to leave" sh -c '[ -z "$(squeue -h -o %i)" ]'
}

smoke_test() {  # a 2-task array runs and finishes
  local id out; out=$(mktemp -d)
  id=$(sbatch --parsable --chdir=/tmp --array=1-2 --output="$out/%a" --wrap 'echo $SLURM_ARRAY_JOB_ID.$SLURM_ARRAY_TASK_ID')
  wait_for 30 "a 2-task test array to finish" sh -c "[ -z \"\$(squeue -h -j $id -o %i)\" ] && [ -s $out/1 ] && [ -s $out/2 ]"
  rm -rf "$out"
}

check_tarball
install_packages
build_drmaa
changed=$(write_configuration)
start_munge
if [ -n "$changed" ]; then
  log "configuration written to $conf; restarting Slurm's daemons"
  stop_slurm
elif pgrep -x slurmctld >/dev/null && ! controller_up; then
  log "slurmctld is running but does not answer; restarting Slurm's daemons"
  stop_slurm
fi
start_slurm

wait_for 30 "node $host to register" sh -c "sinfo -h -N -n '$host' -o %T | grep -qv -e '^$' -e 'unknown' -e '\\*\$'"
case "$(node_state)" in
  *down* | *drain* | *fail* | *inval*)
    log "node $host is $(node_state), resuming it"
    scontrol update nodename="$host" state=resume || true ;;
esac
cancel_all_jobs
wait_for 60 "node $host to be idle" node_idle
smoke_test

log "up: node $host $(node_state), $(sinfo -h -N -n "$host" -o %c) CPUs, slurm-drmaa in $prefix"
cat <<ENV
export SLURM_DRMAA_LIBRARY_PATH=$prefix/lib/libdrmaa.so
export SHEEPDOG_SLURM_DRMAA_LIBRARY=$prefix/lib/libdrmaa.so
export SLURM_DRMAA_CONF=$prefix/etc/slurm_drmaa.conf
ENV
