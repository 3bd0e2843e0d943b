# shellcheck shell=bash
# Shared body of the stage batch scripts (slurm/pretrain.sbatch, slurm/finetune.sbatch).
#
# Sourced, not run: a batch script keeps its own #SBATCH header and help, then calls
#
#   contra_stage STAGE DEFAULT_CONFIG "$@"
#
# which runs `python -m contra.STAGE --config CONFIG [key=value ...] run_dir=RUN_DIR` as one srun
# task per rank and turns the stage's exit code into the job's fate: 0 finished, 75 (checkpointed
# after a signal) `scontrol requeue`, anything else a one-line error naming the checkpoint kept.
# It reads the variables the batch scripts document: CONFIG, RUN_DIR, PYTHON, MAX_REQUEUES.

EXIT_PREEMPTED=75   # contra.preempt.EXIT_PREEMPTED: "checkpointed because of a signal, requeue me"

contra_stage() {
  local stage=$1 default_config=$2
  shift 2
  CONFIG=${CONFIG:-$default_config}
  PYTHON=${PYTHON:-python}
  MAX_REQUEUES=${MAX_REQUEUES:-20}
  RESTARTS=${SLURM_RESTART_COUNT:-0}

  # The run directory must be the same in every requeued run of this job (the job id does not
  # change).  A run_dir=DIR override wins; else RUN_DIR, else runs/STAGE-<jobid>, passed on.
  local arg run_dir_arg=""
  for arg in "$@"; do
    case $arg in run_dir=*) run_dir_arg=${arg#run_dir=} ;; esac
  done
  if [ -n "$run_dir_arg" ]; then
    RUN_DIR=$run_dir_arg
  else
    RUN_DIR=${RUN_DIR:-runs/${stage}-${SLURM_JOB_ID}}
    set -- "$@" "run_dir=${RUN_DIR}"
  fi

  if [ ! -f "$CONFIG" ]; then
    echo "contra: error: config $CONFIG not found (set CONFIG=FILE; cwd $(pwd))" >&2
    exit 2
  fi

  _contra_stage_env
  echo "=== $(date -Is) job ${SLURM_JOB_ID} (${SLURM_JOB_NAME}) restart ${RESTARTS}:" \
       "${SLURM_JOB_NUM_NODES} node(s) ${SLURM_JOB_NODELIST}, ${SLURM_NTASKS} task(s)," \
       "master ${MASTER_ADDR}:${MASTER_PORT}"
  echo "=== config ${CONFIG}, run dir ${RUN_DIR}, overrides: $*"
  [ -f "${RUN_DIR}/checkpoints/last.pt" ] && echo "=== resuming from ${RUN_DIR}/checkpoints/last.pt"

  # srun returns the highest task exit code: 0 when all finished, 75 when they checkpointed on a
  # signal.  A task killed by a signal makes SLURM terminate the whole step (srun: 128+signal).
  srun --unbuffered "$PYTHON" -u -m "contra.${stage}" --config "$CONFIG" "$@"
  _contra_stage_outcome "$stage" $?
}

# Rendezvous and per-task environment, the same for every stage.
_contra_stage_env() {
  # Rank 0 runs on the first node; the port is a function of the job id, so it is the same after
  # a requeue and different for jobs that share a node.
  MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
  MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
  export MASTER_ADDR MASTER_PORT

  # One thread pool per task, sized to its CPUs; NCCL reports failures instead of hanging.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
  export PYTHONUNBUFFERED=1
}

# _contra_stage_outcome STAGE RC: finish, requeue (75) or fail with what to do next; never returns.
_contra_stage_outcome() {
  local stage=$1 rc=$2 why
  case $rc in
    0)
      echo "=== $(date -Is) finished: ${RUN_DIR}/checkpoints/last.pt"
      exit 0
      ;;
    "$EXIT_PREEMPTED")
      if [ "$RESTARTS" -ge "$MAX_REQUEUES" ]; then
        echo "contra: error: checkpointed after a signal, but the job was already requeued ${RESTARTS}" \
             "times (MAX_REQUEUES=${MAX_REQUEUES}); resubmit with run_dir=${RUN_DIR} to continue" >&2
        exit "$rc"
      fi
      echo "=== $(date -Is) checkpointed on a signal: requeueing job ${SLURM_JOB_ID}" \
           "(resumes from ${RUN_DIR}/checkpoints/last.pt)"
      if scontrol requeue "$SLURM_JOB_ID"; then   # SLURM ends this script and reschedules the job
        exit 0
      fi
      echo "contra: error: scontrol requeue ${SLURM_JOB_ID} failed; resubmit with" \
           "run_dir=${RUN_DIR} to continue" >&2
      exit "$rc"
      ;;
    2)  # a user error: the failing task printed its one `contra: error:` line already
      echo "=== $(date -Is) stopped on the contra: error above (exit 2); fix it and resubmit" >&2
      if [ -f "${RUN_DIR}/checkpoints/last.pt" ]; then
        echo "=== the last checkpoint ${RUN_DIR}/checkpoints/last.pt is kept; resume with:" \
             "CONFIG=${CONFIG} sbatch ... slurm/${stage}.sbatch run_dir=${RUN_DIR} ..." >&2
      fi
      exit "$rc"
      ;;
    *)
      if [ "$rc" -gt 128 ]; then why="a task was killed by signal $((rc - 128))"; else why="a task exited with code $rc"; fi
      echo "contra: error: training failed: ${why} (see the task errors above)." >&2
      if [ -f "${RUN_DIR}/checkpoints/last.pt" ]; then
        echo "contra: the last checkpoint ${RUN_DIR}/checkpoints/last.pt is kept; resume with:" \
             "CONFIG=${CONFIG} sbatch ... slurm/${stage}.sbatch run_dir=${RUN_DIR} ..." >&2
      fi
      exit "$rc"
      ;;
  esac
}
