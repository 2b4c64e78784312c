#!/usr/bin/env bash
# The NCCL paths of several ranks on ONE GPU (tests/gpu/shared_gpu_rank.sh: a host id per rank,
# sockets on loopback), for a machine with fewer GPUs than a test needs ranks: correctness and
# faults only, never speed. From the project root after `bash .gpu-deps/device-build.sh`, in one
# device call. Writes under $OUT (every log in logs.tgz, few files as the device tool asks):
#   summary.txt                 each run's exit code; the NCCL tests' per-test results
#   nccl_np2.log, nccl_np4.log  (in logs.tgz) the NCCL communicator tests on 2 and 4 ranks
#   equality.json               fp32 per-step losses, tiny model: 1 rank stage 0 on the GPU vs 2
#                               ranks (stages 0 and 3), 4 ranks (stage 3) and 4 ranks as 2 "nodes"
#                               x 2 with zero.shard_group = node (stages 2 and 3; NCCL node and
#                               replica communicators split off the world's), each the largest
#                               relative difference; topology lines of the hybrid runs
#   fault.jsonl                 tests/gpu/fault_check.sh on 2 ranks sharing the GPU, tiny model at
#                               stage 3, run.collective_timeout_s = 10 (FAULT_CASES, FAULT_LIMIT_S)
#   nonblocking.jsonl           the bf16 ~1B bench on one GPU (its own GPU, no sharing) with the
#                               communicators non-blocking (dstrain's default) and blocking
#                               (NCCL_COMM_BLOCKING=1): tokens/s of each, the cost of the
#                               background launch NCCL makes per non-blocking collective
# PARTS picks what runs (default: all): nccl equality fault nonblocking.
set -u
OUT=${OUT:-/tmp/gpu-out}
PARTS=${PARTS:-nccl equality fault nonblocking}
has() { [[ " $PARTS " == *" $1 "* ]]; }
mkdir -p "$OUT"
LOGS=$(mktemp -d /tmp/gpu-shared-logs.XXXXXX)
trap 'tar czf "$OUT/logs.tgz" -C "$LOGS" .' EXIT
source .gpu-deps/env.sh
BIN=build-gpu/dstrain
SHARE=tests/gpu/shared_gpu_rank.sh
MPIRUN="mpirun --bind-to none -x OMP_NUM_THREADS=2 -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE"

if has nccl; then
  for np in 2 4; do
    timeout 240 $MPIRUN -np $np $SHARE build-gpu/tests/sharding/nccl_mpi_tests \
      > "$LOGS/nccl_np$np.log" 2>&1
    echo "nccl tests np$np rc=$?" | tee -a "$OUT/summary.txt"
    grep -E "^\[ +(OK|FAILED|SKIPPED) +\]" "$LOGS/nccl_np$np.log" | sed 's/ ([0-9]* ms)//' | sort \
      | uniq -c | tee -a "$OUT/summary.txt"
  done
fi

run() {  # run NAME RANKS ARGS...: one tiny training run on the shared GPU
  local name=$1 ranks=$2; shift 2
  local launch="$MPIRUN -np $ranks $SHARE"
  [ "$ranks" = 1 ] && launch="$MPIRUN -np 1"
  timeout 200 $launch $BIN --config configs/tiny.toml --set train.steps=8 \
    --set checkpoint.enabled=false --set run.device=cuda --set log.every=1 \
    --set log.progress_bar=false --set run.dir=/tmp/runs/$name "$@" > "$LOGS/$name.log" 2>&1
  echo "$name rc=$?" | tee -a "$OUT/summary.txt"
  cp /tmp/runs/$name/metrics.jsonl "$LOGS/$name.jsonl" 2>/dev/null
}

if has equality; then
  run ref_np1_s0 1
  run np2_s0 2
  run np2_s3 2 --set zero.stage=3
  run np4_s3 4 --set zero.stage=3
  DSTRAIN_TEST_RANKS_PER_NODE=2 run np4_node_s3 4 --set zero.stage=3 --set zero.shard_group=node
  DSTRAIN_TEST_RANKS_PER_NODE=2 run np4_node_s2 4 --set zero.stage=2 --set zero.shard_group=node
  python3 tests/gpu/loss_equality.py "$LOGS" ref_np1_s0 np2_s0 np2_s3 np4_s3 np4_node_s3 \
    np4_node_s2 --topology np4_node_s3 np4_node_s2 > "$OUT/equality.json"
  cat "$OUT/equality.json"
fi

# Faults on two ranks sharing the GPU (tests/gpu/fault_check.sh has the cases).
if has fault; then
  OUT=$OUT LOGS=$LOGS FAULT_LAUNCH=$SHARE bash tests/gpu/fault_check.sh --config configs/tiny.toml \
    --set zero.stage=3 --set run.collective_timeout_s=10
fi

# Non-blocking communicators make NCCL launch each collective from a thread of its own; the bf16
# ~1B bench on one GPU, non-blocking (default) against blocking, shows what that costs.
if has nonblocking; then
  : > "$OUT/nonblocking.jsonl"
  for mode in nonblocking blocking; do
    env_set=""; [ "$mode" = blocking ] && env_set="-x NCCL_COMM_BLOCKING=1"
    [ "$mode" = blocking ] && export NCCL_COMM_BLOCKING=1
    rm -rf /tmp/runs/ab_$mode
    timeout 200 $MPIRUN $env_set -np 1 $BIN --config configs/bench-1b.toml --set train.steps=14 \
      --set log.progress_bar=false --set run.dir=/tmp/runs/ab_$mode > "$LOGS/ab_$mode.log" 2>&1
    echo "ab_$mode rc=$?" | tee -a "$OUT/summary.txt"
    unset NCCL_COMM_BLOCKING
    python3 - "$mode" /tmp/runs/ab_$mode/metrics.jsonl <<'PY' >> "$OUT/nonblocking.jsonl"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[2]) if '"loss"' in l][3:]
print(json.dumps({"mode": sys.argv[1], "steps": len(rows),
                  "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows) if rows else None,
                  "step_time_s": statistics.median(r["step_time_s"] for r in rows) if rows else None}))
PY
  done
  cat "$OUT/nonblocking.jsonl"
fi
