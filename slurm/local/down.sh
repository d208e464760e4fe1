#!/usr/bin/env bash
# Stop the cluster started by up.sh: `scontrol shutdown`, then only the daemons whose pids up.sh
# recorded under DIR/pids (munged only if up.sh started it), waiting until each one is gone.
#   slurm/local/down.sh [--dir DIR] [--timeout SECONDS]
set -uo pipefail
DIR="${HPC_SR_SLURM_DIR:-/tmp/hpc_sr_slurm}"
TIMEOUT=30
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    *) echo "down.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ -d "$DIR" ]] || { echo "down.sh: nothing to stop ($DIR does not exist)"; exit 0; }
export SLURM_CONF="$DIR/slurm.conf"

running() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }

wait_gone() {  # pid name
  local deadline=$((SECONDS + TIMEOUT))
  while running "$1"; do
    if (( SECONDS >= deadline )); then
      echo "down.sh: $2 (pid $1) still alive after ${TIMEOUT}s; SIGKILL" >&2
      kill -KILL "$1" 2>/dev/null; sleep 0.5; return
    fi
    sleep 0.2
  done
}

[[ -f "$SLURM_CONF" ]] && timeout 15 scontrol shutdown >/dev/null 2>&1
shopt -s nullglob
for f in "$DIR"/pids/slurm*.pid "$DIR"/pids/munged.pid; do
  pid="$(cat "$f" 2>/dev/null || true)"
  name="$(basename "$f" .pid)"
  if running "$pid"; then
    # make sure the pid is still the daemon we started (not a recycled pid)
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    case "$comm" in slurmctld|slurmd|munged) kill -TERM "$pid" 2>/dev/null ;; *) rm -f "$f"; continue ;; esac
    wait_gone "$pid" "$name"
  fi
  rm -f "$f"
done
echo "down.sh: stopped (state left in $DIR)"
