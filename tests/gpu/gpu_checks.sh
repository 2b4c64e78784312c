#!/usr/bin/env bash
# GPU checks and benchmarks, in one device call (../shared/gpu/README.md), from the project root
# after `bash .gpu-deps/device-build.sh`. Writes JSON and logs under $OUT:
#   nccl.log            NCCL communicator tests (ctest -L gpu)
#   equality.json       fp32 per-step losses on GPUs: 1 rank stage 0 vs 2 ranks stages 0 and 3, and the CPU
#   kernels.log         fused kernels (RoPE, SwiGLU, chunked cross-entropy, whole model) vs the ATen path
#   profile.json        where the GPU time of two profiled steps of the ~1B bench goes (torch profiler)
#   bench.jsonl         bf16 ~1B Llama shape, seq 4096: dstrain stage 3 vs PyTorch FSDP2 (eager and
#                       torch.compile), 1 and 2 GPUs, with the share of dstrain's step spent waiting
#                       on communication
#   bench8b.jsonl       the Llama-3-8B shape on 2 GPUs, the same activation policy on both sides
#   kbench.jsonl        `dstrain bench kernels`: each CUDA kernel against the ATen path it replaces
#   perf_table.md       docs/performance.md's dstrain-vs-FSDP2 tables from the three above
#                       (tests/bench/perf_table.py)
#   fault.jsonl         tests/gpu/fault_check.sh on 2 GPUs, bench-1b at stage 3,
#                       run.collective_timeout_s = 20: how the job ended after a rank stopped or died
#   bench8b1.jsonl      the 8B shape cut to BENCH8B_LAYERS layers on one GPU, dstrain vs FSDP2
#   fused_ab.jsonl      dstrain with train.fused_weight_grad on and off, 8B layer shape and ~1B, one
#                       GPU (tokens/s and peak memory; the mfu field is per-FLOP, not MFU)
# PARTS picks what runs (default: all): nccl kernels equality profile kbench bench bench8b comm
# fault (bench8b1 and fused_ab only when named). Issue 10's comparison on 2 GPUs is
# PARTS="kbench bench bench8b"; where one call's 10 minutes do not hold it, split the parts over
# calls (perf_table.py takes their OUTs together).
# FSDP2_COMPILE=0 leaves out the torch.compile runs of FSDP2.
set -u
OUT=${OUT:-/tmp/gpu-out}
PARTS=${PARTS:-nccl kernels equality profile kbench bench bench8b comm fault}
has() { [[ " $PARTS " == *" $1 "* ]]; }
mkdir -p "$OUT"
source .gpu-deps/env.sh
BIN=build-gpu/dstrain
MPIRUN="mpirun --bind-to none -x OMP_NUM_THREADS=4 -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE"
ngpu=$(nvidia-smi -L | wc -l)
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpus.csv"

if has nccl; then
  (cd build-gpu && timeout 180 ctest -L gpu --output-on-failure) > "$OUT/nccl.log" 2>&1
  echo "nccl tests rc=$?" | tee -a "$OUT/summary.txt"
fi

if has kernels; then
  build-gpu/tests/runtime/model/model_tests --gtest_filter='Fused*:*FusedOps*' > "$OUT/kernels.log" 2>&1
  echo "kernel tests rc=$?" | tee -a "$OUT/summary.txt"
  grep -E "^\[ +(OK|FAILED|SKIPPED) +\]" "$OUT/kernels.log"
fi

# Each CUDA kernel against the ATen path it replaces (CUDA events, best of 10).
if has kbench; then
  timeout 120 $BIN bench kernels --params 268435456 --iters 10 > "$OUT/kbench.log" 2>&1
  echo "bench kernels rc=$?" | tee -a "$OUT/summary.txt"
  grep '^{' "$OUT/kbench.log" > "$OUT/kbench.jsonl"
  cat "$OUT/kbench.jsonl"
fi

run() {  # run NAME RANKS ARGS...: one training run, its metrics kept as $OUT/NAME.jsonl
  local name=$1 ranks=$2; shift 2
  timeout 240 $MPIRUN -np "$ranks" $BIN "$@" --set run.dir=/tmp/runs/$name --set log.progress_bar=false \
    > "$OUT/$name.log" 2>&1
  echo "$name rc=$?" | tee -a "$OUT/summary.txt"
  cp /tmp/runs/$name/metrics.jsonl "$OUT/$name.jsonl" 2>/dev/null
}

small="--config configs/tiny.toml --set train.steps=8 --set checkpoint.enabled=false"
if has equality; then
run eq_cpu_np1_s0 1 $small --set run.device=cpu
run eq_gpu_np1_s0 1 $small --set run.device=cuda
if [ "$ngpu" -ge 2 ]; then
  run eq_gpu_np2_s0 2 $small --set run.device=cuda
  run eq_gpu_np2_s3 2 $small --set run.device=cuda --set zero.stage=3
  run eq_gpu_np2_s3_full 2 $small --set run.device=cuda --set zero.stage=3 \
    --set train.activation_checkpointing=full
  # LoRA at stage 3 with keyed dropout, saved asynchronously from pinned memory, then resumed.
  run lora_gpu_np2_s3 2 $small --set run.device=cuda --set zero.stage=3 --set lora.enabled=true \
    --set lora.targets=all-linear --set lora.dropout=0.1 --set checkpoint.enabled=true \
    --set checkpoint.async=true --set checkpoint.every=4
fi
python3 tests/gpu/loss_equality.py "$OUT" eq_gpu_np1_s0 eq_cpu_np1_s0 eq_gpu_np2_s0 eq_gpu_np2_s3 \
  eq_gpu_np2_s3_full > "$OUT/equality.json"
cat "$OUT/equality.json"
fi

# Two profiled steps of the ~1B bench on one GPU: GPU time by kernel kind, idle share.
if has profile; then
  # PROFILE_ARGS: another shape (default the ~1B bench).
  run profile_dstrain_g1 1 ${PROFILE_ARGS:---config configs/bench-1b.toml --set train.global_batch=1} \
    --set train.steps=6 --set run.profile_start=4 --set run.profile_steps=2
  python3 tests/bench/profile_summary.py /tmp/runs/profile_dstrain_g1/profile/rank0.json \
    > "$OUT/profile.json" 2>&1
  cat "$OUT/profile.json"
fi

# bench_summary FLOPS_PER_TOKEN RUN...: dstrain's JSON line per run (median of the steps after
# the third), then the peers' lines from their logs.
bench_summary() {
  python3 - "$OUT" "$@" <<'PY'
import json, sys, os, statistics
out, fpt = sys.argv[1], float(sys.argv[2])
for name in sys.argv[3:]:
    p = os.path.join(out, name + ".jsonl")
    if name.startswith("bench_dstrain") and os.path.exists(p):
        g = int(name.rsplit("_g", 1)[1])
        rows = [json.loads(l) for l in open(p) if '"loss"' in l][3:]
        if rows:
            tps = statistics.median(r["tokens_per_s"] for r in rows) / g
            ac = next((a for a in ("full", "selective") if f"_{a}_" in name), "none")
            print(json.dumps({"peer": "dstrain", "run": name, "world": g, "ac": ac,
                              "tokens_per_s_per_gpu": tps, "mfu": tps * fpt / 989e12,
                              # the share of the step when compute stood still waiting for a
                              # collective (CUDA events around every wait)
                              "comm_exposed_share": sum(r.get("comm_wait_s", 0) for r in rows)
                                                    / sum(r["step_time_s"] for r in rows),
                              "peak_mem_gib": max(r["gpu_mem_peak_bytes"] for r in rows) / 2**30,
                              # allocator churn: the caching allocator's cudaMalloc/cudaFree calls
                              # and retries during the measured steps (0 when every block is reused)
                              "driver_calls_measured": rows[-1].get("gpu_driver_calls", 0)
                                                       - rows[0].get("gpu_driver_calls", 0),
                              "alloc_retries": rows[-1].get("gpu_alloc_retries", 0)}))
    p = os.path.join(out, name + ".log")
    if not name.startswith("bench_dstrain") and os.path.exists(p):
        for l in open(p):
            if l.startswith("{"):
                print(l.strip())
PY
}

fsdp2() {  # fsdp2 NAME GPUS ARGS...
  local name=$1 g=$2; shift 2
  timeout 300 torchrun --nproc_per_node "$g" tests/bench/fsdp2_llama.py "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$?" | tee -a "$OUT/summary.txt"
}

# fsdp2_both EAGER COMPILED GPUS ARGS...: FSDP2 eager, then with torch.compile unless
# FSDP2_COMPILE=0; the names of the runs made go to $peers.
fsdp2_both() {
  local eager=$1 compiled=$2 g=$3; shift 3
  fsdp2 "$eager" "$g" "$@"
  peers=$eager
  if [ "${FSDP2_COMPILE:-1}" = 1 ]; then
    fsdp2 "$compiled" "$g" "$@" --compile
    peers="$peers $compiled"
  fi
}

# bf16 ~1B shape: dstrain, FSDP2 eager and FSDP2 + torch.compile, same global work per GPU
# (micro-batch 1 per GPU), no activation checkpointing.
if has bench; then
names=""
for g in 1 2; do
  [ "$g" -le "$ngpu" ] || continue
  run bench_dstrain_g$g $g --config configs/bench-1b.toml --set train.global_batch=$g
  fsdp2_both bench_fsdp2_g$g bench_fsdp2c_g$g $g --shape 1b
  names="$names bench_dstrain_g$g $peers"
done
n1b=$(( 2048 * 32000 * 2 + 22 * (2048 * 2048 * 2 + 2048 * 256 * 2 + 3 * 2048 * 5632 + 2 * 2048) + 2048 ))
bench_summary $(( 6 * n1b + 12 * 22 * 2048 * 4096 )) $names > "$OUT/bench.jsonl"
cat "$OUT/bench.jsonl"
fi

# The Llama-3-8B shape on 2 GPUs, the same activation policy on both sides: BENCH8B_AC lists the
# policies (none | full; default none: `dstrain plan` puts the uncheckpointed step at 101 GiB
# per GPU on two, which an H200 holds, and MFU counts no recomputation).
if has bench8b && [ "$ngpu" -ge 2 ]; then
  names8b=""
  for ac in ${BENCH8B_AC:-none}; do
    run bench8b_dstrain_${ac}_g2 2 --config configs/bench-8b.toml --set train.activation_checkpointing=$ac
    mv "$OUT/bench8b_dstrain_${ac}_g2.jsonl" "$OUT/bench_dstrain8b_${ac}_g2.jsonl" 2>/dev/null
    fsdp2_both bench8b_fsdp2_${ac}_g2 bench8b_fsdp2c_${ac}_g2 2 --shape 8b --ac $ac --steps 10
    names8b="$names8b bench_dstrain8b_${ac}_g2 $peers"
  done
  n8b=$(( 4096 * 128256 * 2 + 32 * (4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336 + 2 * 4096) + 4096 ))
  bench_summary $(( 6 * n8b + 12 * 32 * 4096 * 4096 )) $names8b > "$OUT/bench8b.jsonl"
  cat "$OUT/bench8b.jsonl"
fi

# The 8B shape cut to BENCH8B_LAYERS decoder layers (default 8) on ONE GPU, no activation
# checkpointing on either side: the 8B layer shape's compute-side efficiency where no two-GPU
# machine is at hand (not issue 10's two-GPU figure) -> bench8b1.jsonl.
if has bench8b1; then
  L=${BENCH8B_LAYERS:-8}
  run bench_dstrain8bL${L}_none_g1 1 --config configs/bench-8b.toml --set model.num_layers=$L \
    --set train.global_batch=1 --set train.activation_checkpointing=none --set train.steps=12
  fsdp2_both bench8bL${L}_fsdp2_none_g1 bench8bL${L}_fsdp2c_none_g1 1 --shape 8b --layers "$L" \
    --ac none --steps 12
  names8l="bench_dstrain8bL${L}_none_g1 $peers"
  n8l=$(( 4096 * 128256 * 2 + L * (4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336 + 2 * 4096) + 4096 ))
  bench_summary $(( 6 * n8l + 12 * L * 4096 * 4096 )) $names8l > "$OUT/bench8b1.jsonl"
  cat "$OUT/bench8b1.jsonl"
fi

# train.fused_weight_grad on and off, one GPU, the same shapes as bench8b1 and bench: what the
# weight gradients written in place by the matrix products (base/grad_sink.h) are worth, against
# autograd's compute-dtype gradients assembled and widened -> fused_ab.jsonl.
if has fused_ab; then
  L=${BENCH8B_LAYERS:-8}
  ab=""
  for f in true false; do
    run bench_dstrain8bL${L}_fused_${f}_g1 1 --config configs/bench-8b.toml \
      --set model.num_layers=$L --set train.global_batch=1 --set train.activation_checkpointing=none \
      --set train.steps=12 --set train.fused_weight_grad=$f
    run bench_dstrain1b_fused_${f}_g1 1 --config configs/bench-1b.toml --set train.global_batch=1 \
      --set train.fused_weight_grad=$f
    ab="$ab bench_dstrain8bL${L}_fused_${f}_g1 bench_dstrain1b_fused_${f}_g1"
  done
  bench_summary 1 $ab > "$OUT/fused_ab.jsonl"
  cat "$OUT/fused_ab.jsonl"
fi

# The tables of docs/performance.md, from bench.jsonl, bench8b.jsonl, bench8b1.jsonl and
# kbench.jsonl.
if has bench || has bench8b || has bench8b1 || has kbench; then
  python3 tests/bench/perf_table.py "$OUT" --date "$(date -u +%F)" > "$OUT/perf_table.md"
  cat "$OUT/perf_table.md"
fi

# Collectives on 2 GPUs: dstrain's NCCL communicator against torch.distributed (NCCL), fp32, the
# same sizes, iterations and bus-bandwidth formulas. comm.jsonl: one line per op and size with
# both bus bandwidths and ratio = dstrain / torch (issue 3's goal: >= 0.95 from 64 MiB up).
if [ "$ngpu" -ge 2 ] && has comm; then
  comm_args="--sizes-mib 1 4 16 64 256 1024 --iters 20"
  timeout 240 $MPIRUN -np 2 $BIN bench comm --device cuda $comm_args > "$OUT/comm_dstrain.log" 2>&1
  echo "comm dstrain rc=$?" | tee -a "$OUT/summary.txt"
  timeout 240 torchrun --nproc_per_node 2 tests/bench/torch_comm_bench.py $comm_args \
    > "$OUT/comm_torch.log" 2>&1
  echo "comm torch rc=$?" | tee -a "$OUT/summary.txt"
  python3 - "$OUT" <<'PY' > "$OUT/comm.jsonl"
import json, sys, os
out = sys.argv[1]
def rows(name):
    p = os.path.join(out, name)
    if not os.path.exists(p):
        return {}
    last = None
    for l in open(p):
        if l.startswith("{") and '"bench"' in l:  # dstrain's JSON has its keys sorted
            last = json.loads(l)
    return {(r["op"], r["mib"]): r["busbw_gbps"] for r in last["results"]} if last else {}
ours, torch = rows("comm_dstrain.log"), rows("comm_torch.log")
for key in sorted(set(ours) | set(torch), key=lambda k: (k[0], k[1])):
    a, b = ours.get(key), torch.get(key)
    print(json.dumps({"op": key[0], "mib": key[1], "dstrain_busbw_gbps": a, "torch_busbw_gbps": b,
                      "ratio": a / b if a and b else None}))
PY
  cat "$OUT/comm.jsonl"
fi

# A peer that stops or dies inside NCCL collectives, each rank on a GPU of its own
# (tests/gpu/fault_check.sh has the cases): the job ends non-zero, never a hang.
if [ "$ngpu" -ge 2 ] && has fault; then
  OUT=$OUT bash tests/gpu/fault_check.sh --config configs/bench-1b.toml --set train.global_batch=2 \
    --set zero.stage=3 --set run.collective_timeout_s=20
fi
