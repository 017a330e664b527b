#!/usr/bin/env bash
# Bring up a one-node Son of Grid Engine on Debian, as root, from whatever state the machine is in:
# packages missing or installed, daemons dead, old jobs in the spool, a cell made under another
# hostname. Ends with the daemons up, the queue configured for tests and no job left.
# Prints the environment to use (SGE_ROOT, SGE_CELL, DRMAA_LIBRARY_PATH) as shell exports.
set -euo pipefail

export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
host=$(hostname)
common=$SGE_ROOT/$SGE_CELL/common
log() { echo "[gridengine] $*" >&2; }

install_packages() {
  if dpkg -s gridengine-master gridengine-exec gridengine-client gridengine-drmaa1.0 >/dev/null 2>&1; then
    return
  fi
  log "installing Son of Grid Engine packages"
  for pkg in gridengine-common gridengine-client gridengine-master; do
    cat <<DEB | debconf-set-selections
$pkg shared/gridenginemaster string $host
$pkg shared/gridenginecell string default
$pkg shared/gridengineconfig boolean true
DEB
  done
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    gridengine-master gridengine-exec gridengine-client gridengine-drmaa1.0 >/dev/null
}

stop_daemons() {
  /etc/init.d/gridengine-exec stop >/dev/null 2>&1 || true
  /etc/init.d/gridengine-master stop >/dev/null 2>&1 || true
  pkill -9 -x sge_execd 2>/dev/null || true
  pkill -9 -x sge_qmaster 2>/dev/null || true
  pkill -9 -x sge_shepherd 2>/dev/null || true
}

rebuild_cell_if_foreign() {
  local act=""
  [ -f "$common/act_qmaster" ] && act=$(cat "$common/act_qmaster")
  if [ "$act" != "$host" ]; then
    log "cell configured for '${act:-nothing}', rebuilding it for '$host'"
    stop_daemons
    rm -rf "${SGE_ROOT:?}/$SGE_CELL" /var/spool/gridengine/qmaster /var/spool/gridengine/execd
    for pkg in gridengine-common gridengine-client gridengine-master; do
      echo "$pkg shared/gridenginemaster string $host" | debconf-set-selections
    done
    DEBIAN_FRONTEND=noninteractive dpkg-reconfigure gridengine-common gridengine-client gridengine-master >/dev/null 2>&1 || true
    if [ ! -f "$common/act_qmaster" ]; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall gridengine-common gridengine-master >/dev/null
    fi
  fi
}

. "$(dirname "$0")/lib.sh"

edit_with() {  # edit_with SED_SCRIPT qconf -mXXX ...: run a qconf editor command non-interactively
  local script=$1; shift
  local editor; editor=$(mktemp)
  printf '#!/bin/sh\nsed -i %q "$1"\n' "$script" >"$editor"
  chmod +x "$editor"
  EDITOR=$editor "$@" >/dev/null
  rm -f "$editor"
}

# What a site's cell has, for the resource tests (memory=, cores=, gpus=): a parallel environment
# smp whose slots all come from one host, attached to all.q; h_vmem consumable per slot, with a
# capacity of 64G on this host and 4G for a job that asks for none (a default of 0 would be a
# limit of 0: no Python could start); a GPU-like complex gpu, counted per job, 2 on this host; and a
# project, sheepdog.
# Idempotent, and safe on a running cell: changes only what differs. `bash ci/gridengine.sh
# site-resources` applies just these to a running cluster, without restarting its daemons.
parallel_environment() {  # before all.q, which names it
  qconf -sp smp >/dev/null 2>&1 && return
  log "adding the parallel environment smp"
  local file; file=$(mktemp)
  # shellcheck disable=SC2016
  printf '%s\n' 'pe_name smp' 'slots 9999' 'user_lists NONE' 'xuser_lists NONE' 'start_proc_args NONE' \
    'stop_proc_args NONE' 'allocation_rule $pe_slots' 'control_slaves FALSE' 'job_is_first_task TRUE' \
    'urgency_slots min' 'accounting_summary FALSE' 'qsort_args NONE' >"$file"
  qconf -Ap "$file" >/dev/null
  rm -f "$file"
}

site_resources() {  # once the execution host exists
  local tmp; tmp=$(mktemp -d)
  # name shortcut type relop requestable consumable default urgency
  qconf -sc | grep -v '^#' | awk '$1 != "h_vmem" && $1 != "gpu"' >"$tmp/complexes"
  printf '%-19s %-10s %-9s %-5s %-11s %-10s %-8s %s\n' h_vmem h_vmem MEMORY '<=' YES YES 4G 0 \
    gpu gpu INT '<=' YES JOB 0 0 >>"$tmp/complexes"
  if [ "$(qconf -sc | grep -v "^#" | awk '$1 == "h_vmem" || $1 == "gpu"' | sort | xargs)" != \
       "$(awk '$1 == "h_vmem" || $1 == "gpu"' "$tmp/complexes" | sort | xargs)" ]; then
    log "making h_vmem consumable and adding the complex gpu"
    qconf -Mc "$tmp/complexes" >/dev/null
  fi
  local values; values=$(qconf -se "$host" | awk '$1 == "complex_values" {print $2}')
  if [ "$values" != "gpu=2,h_vmem=64G" ] && [ "$values" != "h_vmem=64G,gpu=2" ]; then
    log "host $host offers h_vmem=64G and gpu=2"
    qconf -mattr exechost complex_values h_vmem=64G,gpu=2 "$host" >/dev/null
  fi
  if ! qconf -sprj sheepdog >/dev/null 2>&1; then
    log "adding the project sheepdog"
    printf '%s\n' 'name sheepdog' 'oticket 0' 'fshare 0' 'acl NONE' 'xacl NONE' >"$tmp/project"
    qconf -Aprj "$tmp/project" >/dev/null
  fi
  if qconf -sq all.q >/dev/null 2>&1 && ! qconf -sq all.q | awk '$1 == "pe_list"' | grep -qw smp; then
    log "attaching smp to all.q"
    qconf -aattr queue pe_list smp all.q >/dev/null
  fi
  rm -rf "$tmp"
}

[ "${1:-}" = site-resources ] && { parallel_environment; site_resources; exit 0; }

install_packages
rebuild_cell_if_foreign
stop_daemons

# qmaster refuses clients whose address reverse-resolves to another name (127.0.0.1 -> localhost).
echo "$host localhost" >"$common/host_aliases"

log "starting qmaster"
/etc/init.d/gridengine-master start >/dev/null 2>&1 || true
wait_for 60 "qmaster" qstat -f

qconf -as "$host" >/dev/null 2>&1 || true
qconf -ah "$host" >/dev/null 2>&1 || true

# Root may run jobs; scheduler reacts within a second.
edit_with 's/^min_uid .*/min_uid 0/; s/^min_gid .*/min_gid 0/' qconf -mconf global
edit_with 's/^schedule_interval .*/schedule_interval 0:0:1/; s/^flush_submit_sec .*/flush_submit_sec 1/; s/^flush_finish_sec .*/flush_finish_sec 1/' qconf -msconf

parallel_environment
tmp=$(mktemp -d)
printf 'group_name @allhosts\nhostlist %s\n' "$host" >"$tmp/hgrp"
qconf -Ahgrp "$tmp/hgrp" >/dev/null 2>&1 || qconf -Mhgrp "$tmp/hgrp" >/dev/null
qconf -sq 2>/dev/null | sed \
  -e 's/^qname .*/qname all.q/' -e 's/^hostlist .*/hostlist @allhosts/' \
  -e 's/^slots .*/slots 8/' -e 's/^load_thresholds .*/load_thresholds NONE/' \
  -e 's/^pe_list .*/pe_list smp/' -e 's/^shell .*/shell \/bin\/sh/' >"$tmp/queue"
if qconf -sq all.q >/dev/null 2>&1; then qconf -Mq "$tmp/queue" >/dev/null; else qconf -Aq "$tmp/queue" >/dev/null; fi
rm -rf "$tmp"

log "starting execd"
/etc/init.d/gridengine-exec start >/dev/null 2>&1 || true
wait_for 60 "execution host to report load" sh -c "qhost -h '$host' | awk 'NR>3 && \$4 != \"-\" {ok=1} END {exit !ok}'"
site_resources

# No job left from an earlier run; queue out of any error state.
if [ -n "$(qstat -u '*' 2>/dev/null)" ]; then
  qdel -f -u '*' >/dev/null 2>&1 || true
  wait_for 60 "old jobs to leave" sh -c '[ -z "$(qstat -u "*")" ]'
fi
qmod -c all.q >/dev/null 2>&1 || true
qmod -e all.q >/dev/null 2>&1 || true

log "up: $(qstat -f | awk 'NR==3 {print $1, $3}')"
cat <<ENV
export SGE_ROOT=$SGE_ROOT
export SGE_CELL=$SGE_CELL
export DRMAA_LIBRARY_PATH=/usr/lib/gridengine-drmaa/lib/libdrmaa.so.1.0
export GLIBC_TUNABLES=glibc.rtld.optional_static_tls=4096
ENV
