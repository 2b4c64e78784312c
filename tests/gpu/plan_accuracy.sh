#!/usr/bin/env bash
# `dstrain plan` against the GPU: for each configuration, a few training steps on one GPU and the
# peak the CUDA caching allocator reports (gpu_mem_peak_bytes in metrics.jsonl: max allocated
# bytes, creation included), beside the plan's per-rank device peak for the same config. Run in
# one device call after `bash .gpu-deps/device-build.sh` (../shared/gpu/README.md), from the
# project root; about 4 minutes. Prints one JSON object per configuration, then a summary line:
#   {"name": ..., "predicted_bytes": P, "measured_bytes": M, "ratio": P / M}
#   {"summary": true, "configs": N, "within_10pct": K, "max_abs_error": max |ratio - 1|}
# The ninth run repeats 1B stage 2 with full checkpointing under CUDA_LAUNCH_BLOCKING=1: the host
# cannot run ahead of the device there, so the reductions the NCCL communicator holds are only the
# engine's window, which is what the plan counts (docs/plan.md, "Not modelled").
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
[ -f .gpu-deps/env.sh ] && source .gpu-deps/env.sh
BIN=${BIN:-build-gpu/dstrain}
: > "$OUT/plan_accuracy.jsonl"

ONE_B="--config configs/bench-1b.toml --set train.seq_len=2048 --set train.steps=3 --set optim.warmup_steps=0"
TINY="--config configs/tiny.toml --set run.device=cuda --set train.dtype=bf16 --set train.steps=3
  --set train.global_batch=4 --set model.hidden_size=512 --set model.intermediate_size=1408
  --set model.num_heads=8 --set model.num_kv_heads=4 --set model.vocab_size=32000 --set model.tie_embeddings=false"

measure() {  # measure NAME ARGS...: train one rank, plan the same config, print the comparison
  local name=$1; shift
  local dir=/tmp/plan-runs/$name
  rm -rf "$dir"
  timeout 150 mpirun --allow-run-as-root --bind-to none -x OMP_NUM_THREADS=8 -x LD_LIBRARY_PATH ${MPI_EXTRA:-} -np 1 \
    $BIN "$@" --set run.dir="$dir" --set log.progress_bar=false --set checkpoint.enabled=false \
    > "$OUT/plan_$name.log" 2>&1
  local rc=$?
  $BIN plan --json --world 1 "$@" --set run.dir="$dir" > "$OUT/plan_$name.json" 2>> "$OUT/plan_$name.log"
  python3 - "$name" "$rc" "$dir/metrics.jsonl" "$OUT/plan_$name.json" <<'PY' | tee -a "$OUT/plan_accuracy.jsonl"
import json, sys
name, rc, metrics, plan_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
out = {"name": name, "train_rc": rc}
try:
    rows = [json.loads(l) for l in open(metrics) if '"loss"' in l]
    out["measured_bytes"] = max(r["gpu_mem_peak_bytes"] for r in rows)
except (OSError, ValueError) as e:
    out["error"] = "no metrics: %s" % e
try:
    plan = json.load(open(plan_file))
    out["predicted_bytes"] = plan["device_bytes"]["peak"]
    out["parts"] = plan["device_bytes"]
except (OSError, ValueError, KeyError) as e:
    out["error"] = "no plan: %s" % e
if "measured_bytes" in out and "predicted_bytes" in out:
    out["ratio"] = round(out["predicted_bytes"] / out["measured_bytes"], 4)
print(json.dumps(out))
PY
}

measure 1b_stage0_none_mb1          $ONE_B --set zero.stage=0 --set train.micro_batch=1 --set train.global_batch=1
measure 1b_stage3_selective_mb2     $ONE_B --set zero.stage=3 --set train.micro_batch=2 --set train.global_batch=2 \
  --set train.activation_checkpointing=selective
measure 1b_stage2_full_mb2          $ONE_B --set zero.stage=2 --set train.micro_batch=2 --set train.global_batch=2 \
  --set train.activation_checkpointing=full
measure 1b_lora_stage0_none_mb2     $ONE_B --set zero.stage=0 --set train.micro_batch=2 --set train.global_batch=2 \
  --set lora.enabled=true --set lora.rank=16 --set lora.targets=all-linear
measure 1b_offload_cpu_stage3_full  $ONE_B --set zero.stage=3 --set train.micro_batch=1 --set train.global_batch=1 \
  --set train.activation_checkpointing=full --set offload.optimizer=cpu
measure tiny_stage0_none_mb4        $TINY --set zero.stage=0 --set train.micro_batch=4
measure tiny_stage3_selective_mb2   $TINY --set zero.stage=3 --set train.micro_batch=2 \
  --set train.activation_checkpointing=selective
measure tiny_lora_stage1_full_mb4   $TINY --set zero.stage=1 --set train.micro_batch=4 \
  --set train.activation_checkpointing=full --set lora.enabled=true --set lora.targets=q,v
MPI_EXTRA="-x CUDA_LAUNCH_BLOCKING=1" \
measure 1b_stage2_full_mb2_launch_blocking $ONE_B --set zero.stage=2 --set train.micro_batch=2 \
  --set train.global_batch=2 --set train.activation_checkpointing=full

python3 - "$OUT/plan_accuracy.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
errs = [abs(r["ratio"] - 1) for r in rows if "ratio" in r]
print(json.dumps({"summary": True, "configs": len(rows), "compared": len(errs),
                  "within_10pct": sum(e <= 0.10 for e in errs),
                  "max_abs_error": round(max(errs), 4) if errs else None}))
PY
