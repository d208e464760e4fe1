#!/usr/bin/env bash
# Start a one-host SLURM cluster (munged + slurmctld + 1 or 2 slurmd on 127.0.0.1) for hpc_sr tests.
#
#   sudo slurm/local/up.sh [--nodes 1|2] [--dir DIR] [--timeout SECONDS]
#   source DIR/env.sh        # SLURM_CONF=DIR/slurm.conf, PATH with the sacct stand-in first
#   slurm/local/down.sh [--dir DIR]
#
# Needs root and Debian's slurm-wlm + munge (apt-get install -y slurm-wlm munge). Leaves /etc/slurm
# alone; every state, spool, log and pid file lives under DIR (default $HPC_SR_SLURM_DIR or
# /tmp/hpc_sr_slurm). Node names hpcsr1[,hpcsr2] are added to /etc/hosts (127.0.0.1) when they do not
# resolve. Idempotent: a running cluster with the same node count is left as it is.
set -euo pipefail

KIT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="${HPC_SR_SLURM_DIR:-/tmp/hpc_sr_slurm}"
NODES=1
TIMEOUT=60
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nodes) NODES="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "up.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ "$NODES" == 1 || "$NODES" == 2 ]] || { echo "up.sh: --nodes must be 1 or 2, got $NODES" >&2; exit 2; }
[[ "$(id -u)" == 0 ]] || { echo "up.sh: must run as root (slurmd/munged)" >&2; exit 2; }
for exe in slurmctld slurmd munged scontrol sinfo; do
  command -v "$exe" >/dev/null || [[ -x "/usr/sbin/$exe" ]] || {
    echo "up.sh: $exe not found; apt-get install -y slurm-wlm munge" >&2; exit 2; }
done
export PATH="/usr/sbin:$PATH"

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
CONF="$DIR/slurm.conf"
NAMES=(); for i in $(seq 1 "$NODES"); do NAMES+=("hpcsr$i"); done
export SLURM_CONF="$CONF"

log() { echo "up.sh: $*" >&2; }

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_env() {
  local tmp="$DIR/.env.sh.tmp"
  mkdir -p "$DIR/bin"
  ln -sfn "$KIT/sacct" "$DIR/bin/sacct"
  cat > "$tmp" <<ENV
# written by slurm/local/up.sh; source it to use the one-host cluster
export SLURM_CONF="$CONF"
export HPC_SR_SLURM_DIR="$DIR"
export HPC_SR_SLURM_NODES="$(IFS=,; echo "${NAMES[*]}")"
case ":\$PATH:" in *":$DIR/bin:"*) ;; *) export PATH="$DIR/bin:\$PATH" ;; esac
ENV
  mv -f "$tmp" "$DIR/env.sh"
}

wait_idle() {
  local deadline=$((SECONDS + TIMEOUT)) states
  while :; do
    states="$(sinfo -h -N -o '%N %t' 2>/dev/null | sort -u || true)"
    local idle=0
    for n in "${NAMES[@]}"; do grep -qE "^$n (idle|mix|alloc)" <<<"$states" && idle=$((idle + 1)); done
    [[ "$idle" == "$NODES" ]] && return 0
    if (( SECONDS >= deadline )); then
      log "nodes not idle after ${TIMEOUT}s: ${states:-no answer from slurmctld}; logs in $DIR/log"
      return 1
    fi
    sleep 0.5
  done
}

# ---- already up?
if alive "$DIR/slurmctld.pid" && scontrol ping >/dev/null 2>&1; then
  have="$(cat "$DIR/nodes" 2>/dev/null || echo 0)"
  if [[ "$have" != "$NODES" ]]; then
    log "a cluster with $have node(s) is running in $DIR; run slurm/local/down.sh first"; exit 1
  fi
  write_env; wait_idle; log "already up ($NODES node(s)); source $DIR/env.sh"; exit 0
fi

mkdir -p "$DIR/ctld" "$DIR/log" "$DIR/pids"
for n in "${NAMES[@]}"; do mkdir -p "$DIR/spool/$n"; done

# ---- node names must resolve (MASTER_ADDR is the first node of the job)
for n in "${NAMES[@]}"; do
  getent hosts "$n" >/dev/null || echo "127.0.0.1 $n" >> /etc/hosts
done

# ---- slurm.conf from the template
CPUS="$(nproc --all)"  # not nproc: it obeys OMP_NUM_THREADS=1 and a 2-task job would wait forever
node_lines=""
port=6818
for n in "${NAMES[@]}"; do
  node_lines+="NodeName=$n NodeHostname=localhost NodeAddr=127.0.0.1 Port=$port CPUs=$CPUS RealMemory=4000 State=UNKNOWN"$'\n'
  port=$((port + 1))
done
sed -e "s#@STATE@#$DIR#g" -e "s#@CTLD_PORT@#6817#" -e "s#@SLURMD_PORT@#6818#" \
    -e "/@NODES@/{
r /dev/stdin
d
}" "$KIT/slurm.conf.template" <<<"$node_lines" > "$CONF.tmp"
mv -f "$CONF.tmp" "$CONF"
echo "$NODES" > "$DIR/nodes"

# ---- munged (reuse a running one; otherwise start ours and record its pid)
if ! (munge -n | unmunge) >/dev/null 2>&1; then
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged 2>>"$DIR/log/munged.stderr" || true  # logs: /var/log/munge
  for _ in $(seq 1 50); do [[ -s /run/munge/munged.pid ]] && break; sleep 0.1; done
  [[ -s /run/munge/munged.pid ]] || { log "munged did not start; see $DIR/log/munged.stderr and /var/log/munge/munged.log"; exit 1; }
  cp /run/munge/munged.pid "$DIR/pids/munged.pid"
fi

# ---- slurmctld and slurmd (they daemonise and write their own pid files under DIR)
rm -f "$DIR/slurmctld.pid"
slurmctld -f "$CONF" -i  # state (job ids) persists under DIR/ctld: no job id reuse in runs/*/slurm
for n in "${NAMES[@]}"; do
  alive "$DIR/slurmd.$n.pid" || slurmd -f "$CONF" -N "$n"
done
for _ in $(seq 1 100); do alive "$DIR/slurmctld.pid" && break; sleep 0.1; done
cp "$DIR/slurmctld.pid" "$DIR/pids/slurmctld.pid"
for n in "${NAMES[@]}"; do
  for _ in $(seq 1 100); do alive "$DIR/slurmd.$n.pid" && break; sleep 0.1; done
  cp "$DIR/slurmd.$n.pid" "$DIR/pids/slurmd.$n.pid"
done

write_env
wait_idle
log "up: $NODES node(s) (${NAMES[*]}), $CPUS CPUs each; source $DIR/env.sh"
