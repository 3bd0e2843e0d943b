#!/usr/bin/env bash
# Stop the daemons that tests/cluster/slurm_up.sh started (recorded in $STATE_DIR), and nothing else.
# Jobs still in the queue are cancelled first, but only when this script owns the controller.
set -uo pipefail
STATE_DIR=${CONTRA_SLURM_STATE:-/run/contra-slurm}
log() { echo "slurm_down: $*" >&2; }
[ -d "$STATE_DIR" ] || { log "nothing to stop"; exit 0; }

if [ -f "$STATE_DIR/slurmctld.pid" ] && [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
  scancel --full $(squeue -h -o %i) 2>/dev/null || true   # our controller, so these are our jobs
  for _ in $(seq 1 30); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
fi

# order: node daemons, controller, accounting, database, munge last
for name in $(cd "$STATE_DIR" && ls slurmd-*.pid 2>/dev/null | sed 's/\.pid$//') \
            slurmctld slurmdbd mariadbd munged; do
  f="$STATE_DIR/$name.pid"
  [ -f "$f" ] || continue
  read -r pid comm < "$f"
  # the pid must still be the process we started (same command name), never a recycled pid
  if [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$comm" ]; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { log "$name ($pid) ignores SIGTERM, sending SIGKILL"; kill -9 "$pid"; }
    log "stopped $name ($pid)"
  fi
  rm -f "$f"
done
rmdir "$STATE_DIR" 2>/dev/null || true
