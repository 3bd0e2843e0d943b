#!/usr/bin/env bash
# The GPU path check (issue 14): on a fresh GPU machine, set up the project, write a small
# synthetic dataset, pretrain MoCo (the paper's configs/pretrain/multiview.yaml: ResNet-50,
# batch 128, K = 65536) at 112 and 224 px with bf16 autocast and channels_last under torchrun
# (nccl between ranks when there are several GPUs), stop a pretraining run with SIGUSR1 and
# resume it, fine-tune from the pretrained checkpoint (configs/finetune/full.yaml, 224 px) and
# evaluate; print pairs/s, samples/s, the data-wait share, peak GPU memory, PASS/FAIL per check
# and a closing table. Exit 0 only when every check passed within the time budget.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]          # default OUT_DIR: runs/gpu-check
#   CONTRA_GPU_CHECK_DEVICE=cpu CONTRA_GPU_CHECK_VENV=.venv bash benchmarks/gpu_check.sh /tmp/gc
#
# Environment (all optional):
#   CONTRA_GPU_CHECK_DEVICE   cuda (default) | cpu: the CPU dry run (gloo, 2 ranks, resnet18,
#                             32/48 px, 4 steps) that validates this script without a GPU
#   CONTRA_GPU_CHECK_VENV     use this virtual environment (its bin/python) as it is
#   CONTRA_GPU_CHECK_SETUP    auto (default): reuse .venv, else `make setup`, else (no package
#                             index reachable) the machine's python3 that has torch, with the
#                             repo on PYTHONPATH | system: go straight to that fallback
#   CONTRA_GPU_CHECK_BUDGET_S overall limit in seconds (default 470 on cuda, 900 on cpu); every
#                             phase runs under `timeout` with what is left
#   CONTRA_GPU_CHECK_RANKS    ranks (default: the number of GPUs; 2 on cpu)
#   CONTRA_GPU_CHECK_WORKERS  DataLoader workers per rank (default: cores / ranks - 1)
#   CONTRA_GPU_CHECK_STEPS    pretraining steps per image size (default 50; 4 on cpu)
#   CONTRA_GPU_CHECK_TRACKING auto (default: MLflow in the resume run when mlflow imports) | 0 | 1
#
# What it writes: OUT_DIR/data (the synthetic dataset, reused by a rerun with the same
# settings), OUT_DIR/runs/<phase> (run directories), OUT_DIR/logs/<phase>.log,
# OUT_DIR/stats/<phase> (per-step records), OUT_DIR/results/<phase>.json, and
# OUT_DIR/summary.txt + summary.json (the closing table and every figure).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
MODE=${CONTRA_GPU_CHECK_DEVICE:-cuda}
case $MODE in cuda|cpu) ;; *) echo "CONTRA_GPU_CHECK_DEVICE must be cuda or cpu, not $MODE" >&2; exit 2 ;; esac
OUT=${1:-runs/gpu-check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
START=$(date +%s)
if [[ $MODE == cuda ]]; then BUDGET=${CONTRA_GPU_CHECK_BUDGET_S:-470}; else BUDGET=${CONTRA_GPU_CHECK_BUDGET_S:-900}; fi
DEADLINE=$((START + BUDGET))
LOGS=$OUT/logs RESULTS=$OUT/results STATS=$OUT/stats RUNS=$OUT/runs DATA=$OUT/data
rm -rf "$LOGS" "$RESULTS" "$STATS" "$RUNS" "$OUT/summary.txt" "$OUT/summary.json"
mkdir -p "$LOGS" "$RESULTS" "$STATS" "$RUNS"
CHECKER=$REPO/benchmarks/gpu_check.py
PIDS=() SMI_PID=""

say() { echo "[gpu-check $(date +%H:%M:%S) +$(($(date +%s) - START))s] $*"; }
phase() { say "=== $1: $2"; }
now() { date +%s; }
# seconds a phase may take: min(its cap, what is left of the budget - 5); fails when < 10
phase_timeout() {
    local left=$((DEADLINE - $(now) - 5))
    local t=$(( $1 < left ? $1 : left ))
    ((t >= 10)) || return 1
    echo "$t"
}
# a phase that could not run: one FAIL result
phase_failed() {  # name reason
    echo "[gpu-check] FAIL  $1: $2"
    printf '{"phase": "%s", "ok": false, "checks": [{"check": "phase ran", "ok": false, "detail": "%s"}], "metrics": {}}\n' \
        "$1" "${2//\"/\'}" >"$RESULTS/$1.json"
}
tail_log() { echo "----- last lines of $1 -----"; tail -n "${2:-25}" "$1" || true; echo "-----"; }
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    smi_stop
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# ------------------------------------------------------------------------- mode settings
NCPU=$(nproc)
if [[ $MODE == cuda ]]; then
    NGPU=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
    RANKS=${CONTRA_GPU_CHECK_RANKS:-$(( NGPU > 0 ? NGPU : 1 ))}
    DEV=(device=cuda amp=bf16 channels_last=true)
    ARCH=resnet50 SIZES=(112 224) BATCH=128 QUEUE=65536
    STEPS=${CONTRA_GPU_CHECK_STEPS:-50} WARMUP=10 LOG_EVERY=5 THREADS=2
    RESUME_SIZE=112 RESUME_STEPS=40 RESUME_EVERY=10 MONITOR=(monitor.frames=64 monitor.instance_pairs=64)
    # one epoch must hold every step (a new epoch restarts the DataLoader workers): 24 sequences
    # × 8 cameras × frames ≥ batch × steps; 40 frames (the default) give 7,680 pairs = 60 steps
    NEED=$(( BATCH * (STEPS > RESUME_STEPS ? STEPS : RESUME_STEPS) ))
    FRAMES=$(( (NEED + 191) / 192 > 40 ? (NEED + 191) / 192 : 40 ))
    SYNTH=(sequences=24 "frames=$FRAMES" test_sequences=2 freihand_train=256 freihand_eval=64
           "workers=$(( NCPU > 1 ? NCPU - 1 : 1 ))")
    FT_SIZE=224 FT_BATCH=16 FT_STEPS=50 FT_WARMUP=10 FT_EVAL_BATCH=64
    EXTRA_MODEL=()
    CAP_SETUP=240 CAP_ENV=60 CAP_SYNTH=120 CAP_PRETRAIN=100 CAP_RESUME=150 CAP_FINETUNE=100
else
    RANKS=${CONTRA_GPU_CHECK_RANKS:-2}
    DEV=(device=cpu amp=none channels_last=false)
    ARCH=resnet18 SIZES=(32 48) BATCH=16 QUEUE=256
    STEPS=${CONTRA_GPU_CHECK_STEPS:-4} WARMUP=1 LOG_EVERY=1 THREADS=1
    SYNTH=(sequences=2 frames=8 test_sequences=1 subjects=2 backgrounds=6 freihand_train=16
           freihand_eval=8 freihand_subjects=2 workers=2)
    RESUME_SIZE=32 RESUME_STEPS=8 RESUME_EVERY=2 MONITOR=(monitor.frames=16 monitor.instance_pairs=16)
    FT_SIZE=32 FT_BATCH=8 FT_STEPS=4 FT_WARMUP=1 FT_EVAL_BATCH=8
    EXTRA_MODEL=(model.dilate_last=false)
    CAP_SETUP=300 CAP_ENV=120 CAP_SYNTH=240 CAP_PRETRAIN=240 CAP_RESUME=360 CAP_FINETUNE=240
fi
if [[ -n ${CONTRA_GPU_CHECK_WORKERS:-} ]]; then WORKERS=$CONTRA_GPU_CHECK_WORKERS
elif [[ $MODE == cuda ]]; then WORKERS=$(( NCPU / RANKS - 1 > 0 ? NCPU / RANKS - 1 : 1 ))
else WORKERS=1; fi
say "mode $MODE, $NCPU CPUs, $RANKS rank(s), $WORKERS DataLoader workers per rank, budget ${BUDGET}s, out $OUT"

# -------------------------------------------------------------------------------- set-up
DEPS='import torch, torchvision, numpy, scipy, yaml, PIL, tqdm, matplotlib'
usable() { [[ -x $1 ]] && "$1" -c "$DEPS; import contra" >/dev/null 2>&1; }
PY="" SETUP_HOW=""
setup_python() {
    if [[ -n ${CONTRA_GPU_CHECK_VENV:-} ]]; then
        if usable "$CONTRA_GPU_CHECK_VENV/bin/python"; then
            PY=$CONTRA_GPU_CHECK_VENV/bin/python SETUP_HOW="the given venv $CONTRA_GPU_CHECK_VENV"
            return 0
        fi
        echo "[gpu-check] FAIL  setup: $CONTRA_GPU_CHECK_VENV/bin/python cannot import contra and torch"
        return 1
    fi
    if usable "$REPO/.venv/bin/python"; then
        PY=$REPO/.venv/bin/python SETUP_HOW="the existing .venv"
        return 0
    fi
    local t rc=0
    if [[ ${CONTRA_GPU_CHECK_SETUP:-auto} != system ]] && t=$(phase_timeout $CAP_SETUP); then
        say "no usable .venv: the README's set-up (make setup: pip install -c constraints.txt -e '.[dev]'), at most ${t}s"
        if command -v make >/dev/null; then
            timeout --kill-after=10 "$t" env PIP_DEFAULT_TIMEOUT=15 PIP_RETRIES=1 \
                make -C "$REPO" setup >"$LOGS/setup.log" 2>&1 || rc=$?
        else  # the same two commands as the Makefile
            # shellcheck disable=SC2016  # expanded by the inner bash
            timeout --kill-after=10 "$t" env PIP_DEFAULT_TIMEOUT=15 PIP_RETRIES=1 bash -c '
                py=$(command -v python3.11 || command -v python3)
                { test -x .venv/bin/python || "$py" -m venv .venv; } &&
                .venv/bin/python -m pip install --quiet --disable-pip-version-check \
                    -c constraints.txt -e ".[dev]" && touch .venv/.contra-installed' \
                >"$LOGS/setup.log" 2>&1 || rc=$?
        fi
        if ((rc == 0)) && usable "$REPO/.venv/bin/python"; then
            PY=$REPO/.venv/bin/python SETUP_HOW="make setup (a new .venv)"
            return 0
        fi
        say "make setup failed (exit $rc): no package index here? falling back to the machine's python"
        tail_log "$LOGS/setup.log" 8
    fi
    local cand p
    for cand in python3.11 python3 python; do
        p=$(command -v "$cand") || continue
        if "$p" -c "$DEPS" >/dev/null 2>&1; then
            export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
            PY=$p SETUP_HOW="fallback: $p with PYTHONPATH=$REPO (contra not installed)"
            return 0
        fi
    done
    echo "[gpu-check] FAIL  setup: no python with torch, torchvision, numpy, scipy, pyyaml, pillow, tqdm, matplotlib"
    return 1
}

phase setup "Python environment"
if ! setup_python; then
    phase_failed setup "no usable Python environment (see $LOGS/setup.log)"
    exit 1
fi
say "python: $PY ($SETUP_HOW), set-up took $(($(now) - START))s"
case ${CONTRA_GPU_CHECK_TRACKING:-auto} in
    1) TRACK=1 ;;
    0) TRACK=0 ;;
    *) if "$PY" -c 'import mlflow' >/dev/null 2>&1; then TRACK=1; else TRACK=0; fi ;;
esac
CONTRA=("$PY" -m contra.cli)
TORCHRUN=("$PY" -m torch.distributed.run --standalone "--nproc-per-node=$RANKS")
printf '{"phase": "setup", "ok": true, "checks": [{"check": "python environment", "ok": true, "detail": "%s"}], "metrics": {"wall_s": %d}}\n' \
    "$PY: $SETUP_HOW" "$(($(now) - START))" >"$RESULTS/setup.json"
echo "[gpu-check] PASS  setup: python environment ($PY: $SETUP_HOW; MLflow in the resume run: $TRACK)"

# ---------------------------------------------------------------------------------- env
phase env "torch, CUDA, bf16, ${MODE/cuda/nccl}"
[[ $MODE == cuda ]] || say "(cpu mode: gloo)"
T0=$(now) rc=0
MAX_SIZE=${SIZES[-1]}
# the largest pretraining batch: per rank, 2 views × 3 × S² float32, 2 prefetched per worker
SHM_NEED=$(( WORKERS * RANKS * 2 * (BATCH / RANKS) * 2 * 3 * MAX_SIZE * MAX_SIZE * 4 ))
if t=$(phase_timeout $CAP_ENV); then
    timeout --kill-after=10 "$t" "$PY" "$CHECKER" env --mode "$MODE" --results "$RESULTS" \
        --started "$T0" --shm-need "$SHM_NEED" 2>&1 | tee "$LOGS/env.log" || rc=$?
else rc=124; fi
if ((rc != 0)); then
    [[ -f $RESULTS/env.json ]] || phase_failed env "exit $rc"
    say "the environment check failed: nothing else can run"
    "$PY" "$CHECKER" table --results "$RESULTS" --out "$OUT" --mode "$MODE" --total $(($(now) - START)) \
        --budget "$BUDGET" --expect setup,env || true
    exit 1
fi

# -------------------------------------------------------------------------------- synth
phase synth "synthetic HanCo + FreiHAND (${SYNTH[*]})"
T0=$(now) rc=0 reused=0
SIGNATURE="${SYNTH[*]} seed=0"
if [[ -f $DATA/gpu_check_synth.txt && $(cat "$DATA/gpu_check_synth.txt") == "$SIGNATURE" ]]; then
    reused=1
    say "reusing $DATA (written by an earlier run with the same settings)"
elif t=$(phase_timeout $CAP_SYNTH); then
    rm -f "$DATA/gpu_check_synth.txt"
    timeout --kill-after=10 "$t" "${CONTRA[@]}" synth --config configs/synth.yaml --out "$DATA" \
        --seed 0 overwrite=true "${SYNTH[@]}" >"$LOGS/synth.log" 2>&1 || rc=$?
    if ((rc == 0)); then echo "$SIGNATURE" >"$DATA/gpu_check_synth.txt"; else tail_log "$LOGS/synth.log"; fi
else rc=124; fi
"$PY" "$CHECKER" synth-summary --data "$DATA" --results "$RESULTS" --code $rc --wall $(($(now) - T0)) \
    --batch $BATCH --steps $(( STEPS > RESUME_STEPS ? STEPS : RESUME_STEPS )) --reused $reused || true
SYNTH_OK=$((rc == 0))

# ------------------------------------------------------------------------------ sampler
smi_start() {  # nvidia-smi memory.used every 200 ms (device-wide, CUDA context included)
    : >"$1"
    if [[ $MODE == cuda ]] && command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 200 \
            >"$1" 2>/dev/null &
        SMI_PID=$!
    fi
}
smi_stop() {
    if [[ -n ${SMI_PID:-} ]]; then
        kill "$SMI_PID" 2>/dev/null || true
        wait "$SMI_PID" 2>/dev/null || true
        SMI_PID=""
    fi
}

# one training phase under torchrun through the recorder: name stage unit steps warmup batch
# size cap [overrides...]
train_phase() {
    local name=$1 stage=$2 unit=$3 steps=$4 warmup=$5 batch=$6 size=$7 cap=$8
    shift 8
    local t rc=0 t0
    t0=$(now)
    if ! t=$(phase_timeout "$cap"); then phase_failed "$name" "no time left in the ${BUDGET}s budget"; return 0; fi
    smi_start "$STATS/$name.smi"
    timeout --kill-after=20 "$t" "${TORCHRUN[@]}" "$CHECKER" stage "$stage" --stats "$STATS/$name" -- \
        "$@" >"$LOGS/$name.log" 2>&1 || rc=$?
    smi_stop
    ((rc == 0)) || tail_log "$LOGS/$name.log"
    "$PY" "$CHECKER" train-summary --phase "$name" --stats "$STATS/$name" --run-dir "$RUNS/$name" \
        --results "$RESULTS" --mode "$MODE" --unit "$unit" --arch "$ARCH" --smi "$STATS/$name.smi" \
        --code $rc --wall $(($(now) - t0)) --steps "$steps" --warmup "$warmup" --batch "$batch" \
        --size "$size" --init-expected "${INIT_EXPECTED:-0}" || true
}

pretrain_args() {  # run_dir size steps [more overrides]: sets PARGS
    local run=$1 size=$2 steps=$3
    shift 3
    PARGS=(--config configs/pretrain/multiview.yaml "run_dir=$run" "data_root=$DATA/hanco" epochs=0
        "max_steps=$steps" "batch_size=$BATCH" "workers=$WORKERS" "threads=$THREADS" "${DEV[@]}"
        progress=false "log_every=$LOG_EVERY" "pairs.image_size=$size" "model.arch=$ARCH"
        "moco.queue_size=$QUEUE" checkpoint.keep_every=0 "${EXTRA_MODEL[@]}" "$@")
}

# ----------------------------------------------------------------------------- pretrain
LAST_PRETRAIN=""
for SIZE in "${SIZES[@]}"; do
    NAME=pretrain-$SIZE
    phase "$NAME" "MoCo $ARCH at $SIZE px, batch $BATCH, $STEPS steps, ${DEV[*]}"
    if ((!SYNTH_OK)); then phase_failed "$NAME" "no synthetic data"; continue; fi
    pretrain_args "$RUNS/$NAME" "$SIZE" "$STEPS" checkpoint.every_steps=0 tracking.enabled=false \
        monitor.every_epochs=0
    train_phase "$NAME" pretrain pairs "$STEPS" "$WARMUP" "$BATCH" "$SIZE" $CAP_PRETRAIN "${PARGS[@]}"
    [[ -f $RUNS/$NAME/checkpoints/last.pt ]] && LAST_PRETRAIN=$RUNS/$NAME/checkpoints/last.pt
done

# ------------------------------------------------------------------------------- resume
# ranks with torchrun's variables (as contra's tests and SLURM tasks start them), so that every
# rank's exit code is seen: torchrun itself turns a worker's 75 into its own failure
launch_ranks() {  # log_prefix args...
    local prefix=$1 r port
    shift
    port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    PIDS=()
    for ((r = 0; r < RANKS; r++)); do
        (export RANK=$r WORLD_SIZE=$RANKS LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port
         [[ $RANKS -gt 1 ]] && export OMP_NUM_THREADS=1
         exec "$PY" -m contra.pretrain "$@") >"$prefix.rank$r.log" 2>&1 &
        PIDS+=($!)
    done
}
alive() { local p; for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
wait_ranks() {  # deadline (epoch s): sets CODES
    local deadline=$1 p rc
    while alive; do
        if (($(now) >= deadline)); then
            say "deadline: stopping ranks ${PIDS[*]}"
            for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
            sleep 10
            for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
            break
        fi
        sleep 0.5
    done
    CODES=()
    for p in "${PIDS[@]}"; do rc=0; wait "$p" || rc=$?; CODES+=("$rc"); done
    PIDS=()
}

NAME=resume
phase $NAME "SIGUSR1 after the step-$RESUME_EVERY checkpoint, exit 75, restart to step $RESUME_STEPS ($RESUME_SIZE px)"
T0=$(now)
if ((!SYNTH_OK)); then phase_failed $NAME "no synthetic data"
elif ! t=$(phase_timeout $CAP_RESUME); then phase_failed $NAME "no time left in the ${BUDGET}s budget"
else
    RUN=$RUNS/$NAME
    if ((TRACK)); then TRACKING=true; else TRACKING=false; fi
    pretrain_args "$RUN" "$RESUME_SIZE" "$RESUME_STEPS" "checkpoint.every_steps=$RESUME_EVERY" \
        "tracking.enabled=$TRACKING" monitor.every_epochs=1 "${MONITOR[@]}"
    ARGS=("${PARGS[@]}")
    DL=$(($(now) + t))
    smi_start "$STATS/$NAME.smi"
    launch_ranks "$LOGS/$NAME-1" "${ARGS[@]}"
    SIGNALLED=0
    while alive && (($(now) < DL)); do
        if [[ -f $RUN/checkpoints/last.pt ]]; then
            kill -USR1 "${PIDS[-1]}" 2>/dev/null && SIGNALLED=1
            say "checkpoint at step $RESUME_EVERY written: SIGUSR1 → rank $((RANKS - 1)) (pid ${PIDS[-1]})"
            break
        fi
        sleep 0.1
    done
    wait_ranks "$DL"
    FIRST="${CODES[*]}"
    say "stopped run: exit codes $FIRST"
    [[ -f $RUN/run.json ]] && cp "$RUN/run.json" "$RUN/run.first.json"
    [[ $FIRST == *75* ]] || tail_log "$LOGS/$NAME-1.rank0.log"
    launch_ranks "$LOGS/$NAME-2" "${ARGS[@]}"
    wait_ranks "$DL"
    SECOND="${CODES[*]}"
    smi_stop
    say "restarted run: exit codes $SECOND"
    [[ $SECOND == 0* ]] || tail_log "$LOGS/$NAME-2.rank0.log"
    "$PY" "$CHECKER" resume-summary --run-dir "$RUN" --results "$RESULTS" --first-codes "$FIRST" \
        --second-codes "$SECOND" --log2 "$LOGS/$NAME-2.rank0.log" --signalled $SIGNALLED \
        --every $RESUME_EVERY --steps $RESUME_STEPS --log-every $LOG_EVERY --wall $(($(now) - T0)) \
        --monitor 1 --tracking $TRACK || true
fi

# ----------------------------------------------------------------------------- finetune
NAME=finetune-$FT_SIZE
phase $NAME "MANO regression, $ARCH at $FT_SIZE px, batch $FT_BATCH, $FT_STEPS steps, from ${LAST_PRETRAIN:-scratch}"
if ((!SYNTH_OK)); then phase_failed $NAME "no synthetic data"
else
    if [[ -n $LAST_PRETRAIN ]]; then INIT=(init.mode=moco "init.weights=$LAST_PRETRAIN" init.freeze=none) INIT_EXPECTED=1
    else INIT=(init.mode=scratch) INIT_EXPECTED=1; fi  # expected but missing: the check fails
    train_phase $NAME finetune samples $FT_STEPS $FT_WARMUP $FT_BATCH $FT_SIZE $CAP_FINETUNE \
        --config configs/finetune/full.yaml "run_dir=$RUNS/$NAME" "data.root=$DATA/freihand" \
        mano_root=standin "max_steps=$FT_STEPS" "batch_size=$FT_BATCH" "workers=$WORKERS" \
        "threads=$THREADS" "${DEV[@]}" progress=false "log_every=$LOG_EVERY" \
        "data.image_size=$FT_SIZE" "model.arch=$ARCH" "${EXTRA_MODEL[@]}" "${INIT[@]}" \
        eval.every_steps=0 "eval.batch_size=$FT_EVAL_BATCH" checkpoint.every_steps=0 \
        tracking.enabled=false
fi

# -------------------------------------------------------------------------------- table
phase summary "all phases"
EXPECT=setup,env,synth
for SIZE in "${SIZES[@]}"; do EXPECT+=,pretrain-$SIZE; done
EXPECT+=,resume,finetune-$FT_SIZE
rc=0
"$PY" "$CHECKER" table --results "$RESULTS" --out "$OUT" --mode "$MODE" --total $(($(now) - START)) \
    --budget "$BUDGET" --expect "$EXPECT" || rc=$?
say "done in $(($(now) - START))s; summary in $OUT/summary.txt, logs in $LOGS"
exit $rc
