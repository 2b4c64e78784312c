#!/usr/bin/env bash
# GPU benchmarks of LoRA and offload, in one device call after `bash .gpu-deps/device-build.sh`
# (../shared/gpu/README.md), from the project root. PARTS picks what runs (default: all):
#   lora      LoRA fine-tuning, one GPU: dstrain vs transformers + PEFT, same shape, targets,
#             rank, batch, sequence length and checkpointing, and the bound the base's matrix
#             products and attention set (tests/bench/lora_gemm_bound.py) -> lora.jsonl
#             (LORA_SHAPES: default "1b 8b"; LORA_CKPT: dstrain's policies, default "full";
#             "selective:K" recomputes K decoder layers, train.recompute_layers; LORA_CKPT_1B
#             overrides it for the 1B shape; LORA_EXTRA: more dstrain arguments, e.g. a profile
#             window, summarised by tests/bench/profile_summary.py; LORA_NO_BOUND=1 skips the bound)
#   adam      `dstrain bench adam` vs torch.optim.AdamW on this host's CPUs -> adam.json
#   offload   the largest Llama shape fully fine-tuned on one GPU with its optimizer state and
#             parameters in host memory (OFFLOAD_SHAPE: 13b or 7b; OFFLOAD_RATIO: offload.ratio
#             values, default 1.0) -> offload.jsonl
#   aio       `dstrain bench aio` vs dd with O_DIRECT on the same file -> aio.json
#   nvme      a ~2.7B Llama shape fully fine-tuned on one GPU with its optimizer state on NVMe
#             (offload.optimizer = nvme under /tmp, parameters in host memory), against the
#             disk's own bound: dd's direct read and write rates over the plan's bytes -> nvme.json
set -u
OUT=${OUT:-/tmp/gpu-out}
LORA_EXTRA=${LORA_EXTRA:-}
PARTS=${PARTS:-lora adam offload aio nvme}
mkdir -p "$OUT"
source .gpu-deps/env.sh
BIN=build-gpu/dstrain
has() { [[ " $PARTS " == *" $1 "* ]]; }

run() {  # run NAME THREADS ARGS...: one single-rank training run, metrics kept as $OUT/NAME.jsonl
  local name=$1 threads=$2; shift 2
  timeout 420 mpirun --bind-to none -x OMP_NUM_THREADS=$threads -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE \
    -np 1 $BIN "$@" --set run.dir=/tmp/runs/$name --set log.progress_bar=false > "$OUT/$name.log" 2>&1
  echo "$name rc=$?" | tee -a "$OUT/summary.txt"
  cp /tmp/runs/$name/metrics.jsonl "$OUT/$name.jsonl" 2>/dev/null
  tail -n 3 "$OUT/$name.log"
}

summarise() {  # summarise NAME EXTRA_JSON: median tokens/s after 3 warm-up steps, peak memory
  python3 - "$OUT/$1.jsonl" "$2" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l][3:]
out = json.loads(sys.argv[2])
if rows:
    out.update({"tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows),
                "step_time_s": statistics.median(r["step_time_s"] for r in rows),
                "peak_mem_gib": max(r["gpu_mem_peak_bytes"] for r in rows) / 2**30,
                "host_rss_peak_gib": max(r["host_rss_peak_bytes"] for r in rows) / 2**30,
                "final_loss": rows[-1]["loss"]})
print(json.dumps(out))
PY
}

SHAPE_8B="--set model.vocab_size=128256 --set model.hidden_size=4096 --set model.intermediate_size=14336
  --set model.num_layers=32 --set model.num_heads=32 --set model.num_kv_heads=8 --set model.rope_theta=500000"
SHAPE_13B="--set model.vocab_size=32000 --set model.hidden_size=5120 --set model.intermediate_size=13824
  --set model.num_layers=40 --set model.num_heads=40 --set model.num_kv_heads=40"
SHAPE_7B="--set model.vocab_size=32000 --set model.hidden_size=4096 --set model.intermediate_size=11008
  --set model.num_layers=32 --set model.num_heads=32 --set model.num_kv_heads=32"

if has lora; then
  # rank 16, alpha 32, every linear layer, seq 2048, one sequence per step, activation
  # checkpointing on both sides; dstrain keeps the frozen base whole (stage 0, one GPU).
  lora="--config configs/bench-1b.toml --set zero.stage=0 --set train.global_batch=1 --set train.seq_len=2048
    --set train.steps=10 --set lora.enabled=true --set lora.rank=16 --set lora.alpha=32 --set lora.targets=all-linear"
  : > "$OUT/lora.jsonl"
  for shape in ${LORA_SHAPES:-1b 8b}; do
    extra=""; [ "$shape" = 8b ] && extra="$SHAPE_8B"
    ckpts=${LORA_CKPT:-full}; [ "$shape" = 1b ] && ckpts=${LORA_CKPT_1B:-$ckpts}
    for ckpt in $ckpts; do
      policy=${ckpt%%:*}; layers=-1; [ "$policy" != "$ckpt" ] && layers=${ckpt#*:}
      run lora_dstrain_${shape}_${policy}$layers 16 $lora $extra --set train.activation_checkpointing=$policy \
        --set train.recompute_layers=$layers $LORA_EXTRA
      if [ -f /tmp/runs/lora_dstrain_${shape}_${policy}$layers/profile/rank0.json ]; then
        python3 tests/bench/profile_summary.py /tmp/runs/lora_dstrain_${shape}_${policy}$layers/profile/rank0.json \
          > "$OUT/lora_profile_${shape}_${policy}$layers.json" 2>&1
      fi
      summarise lora_dstrain_${shape}_${policy}$layers "{\"peer\": \"dstrain\", \"shape\": \"$shape\", \
        \"activation_checkpointing\": \"$policy\", \"recompute_layers\": $layers}" >> "$OUT/lora.jsonl"
    done
    [ -n "${LORA_NO_BOUND:-}" ] || timeout 120 python3 tests/bench/lora_gemm_bound.py --shape $shape --seq 2048 >> "$OUT/lora.jsonl" \
      2> "$OUT/lora_bound_$shape.log"
    timeout 300 python3 tests/bench/peft_lora.py --shape $shape --seq 2048 --rank 16 --alpha 32 --steps 10 \
      --grad-ckpt > "$OUT/lora_peft_$shape.log" 2>&1
    echo "lora_peft_$shape rc=$?" | tee -a "$OUT/summary.txt"
    grep '^{' "$OUT/lora_peft_$shape.log" >> "$OUT/lora.jsonl"
  done
  cat "$OUT/lora.jsonl"
fi

if has adam; then
  DSTRAIN_PYTHON=python3 timeout 300 bash tests/bench/adam_vs_torch.sh build-gpu 256000000 0 10 \
    > "$OUT/adam.log" 2>&1
  echo "adam rc=$?" | tee -a "$OUT/summary.txt"
  tail -n 1 "$OUT/adam.log" | tee "$OUT/adam.json"
fi

if has offload; then
  # OFFLOAD_OVERLAP: offload.overlap_step values to run (the host AdamW overlapping the next
  # forward, or after backward as one block); the pinned copy bandwidth of this machine in both
  # directions comes first, for the PCIe bound.
  shape=${OFFLOAD_SHAPE:-13b}
  dims=$SHAPE_13B; [ "$shape" = 7b ] && dims=$SHAPE_7B
  threads=$(nproc)
  timeout 120 python3 - <<'PY' | tee "$OUT/pcie.json"
import json, torch
n = 1 << 30
host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
dev = torch.empty(n, dtype=torch.uint8, device="cuda")
out = {}
for name, dst, src in (("h2d_gbps", dev, host), ("d2h_gbps", host, dev)):
    dst.copy_(src); torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5): dst.copy_(src, non_blocking=True)
    end.record(); torch.cuda.synchronize()
    out[name] = 5 * n / (start.elapsed_time(end) / 1e3) / 1e9
print(json.dumps(out))
PY
  # offload.ratio on the GPU: fp32 tiny model at stage 3, the losses with half the units on the
  # device and half on the host against the run without offload; then the plan's advice here.
  tiny="--config configs/tiny.toml --set train.steps=8 --set checkpoint.enabled=false --set zero.stage=3"
  run ratio_none 4 $tiny
  run ratio_half 4 $tiny --set offload.optimizer=cpu --set offload.params=cpu --set offload.ratio=0.5
  python3 - "$OUT/ratio_none.jsonl" "$OUT/ratio_half.jsonl" <<'PY' | tee "$OUT/ratio_equality.json"
import json, sys
a, b = ([json.loads(l)["loss"] for l in open(p) if '"loss"' in l] for p in sys.argv[1:3])
print(json.dumps({"steps": len(a), "max_rel_diff": max(abs(x - y) / abs(x) for x, y in zip(a, b)) if a and len(a) == len(b) else None}))
PY
  gpu_gib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1 | awk '{print $1/1024}')
  $BIN plan --config configs/bench-1b.toml $dims --set zero.stage=3 --set train.global_batch=1 \
    --set train.seq_len=2048 --set train.activation_checkpointing=full --set offload.optimizer=cpu \
    --set offload.params=cpu --gpu-mem $gpu_gib 2>&1 | tail -n 4 | tee "$OUT/offload_plan.txt"
  : > "$OUT/offload.jsonl"
  for overlap in ${OFFLOAD_OVERLAP:-true}; do
    for ratio in ${OFFLOAD_RATIO:-1.0}; do
      name=offload_${shape}_${overlap}_$ratio
      run $name $threads --config configs/bench-1b.toml $dims --set zero.stage=3 \
        --set train.global_batch=1 --set train.seq_len=2048 --set train.steps=${OFFLOAD_STEPS:-6} \
        --set train.activation_checkpointing=full --set offload.optimizer=cpu --set offload.params=cpu \
        --set offload.overlap_step=$overlap --set offload.ratio=$ratio
      summarise $name "{\"run\": \"offload\", \"shape\": \"$shape\", \"threads\": $threads, \
        \"overlap_step\": $overlap, \"ratio\": $ratio}" | tee -a "$OUT/offload.jsonl"
    done
  done
fi

if has aio; then
  f=/tmp/dstrain-aio.dat
  timeout 300 $BIN bench aio --file $f --file-mib 4096 --block-kib 1024 4096 --queue-depth 8 32 \
    > "$OUT/aio.log" 2>&1
  echo "aio rc=$?" | tee -a "$OUT/summary.txt"
  # The disk's own figure: dd with O_DIRECT, the same size, 4 MiB blocks.
  { dd if=/dev/zero of=$f bs=4M count=1024 oflag=direct conv=fsync 2>&1 | tail -n 1
    dd if=$f of=/dev/null bs=4M iflag=direct 2>&1 | tail -n 1; } > "$OUT/aio_dd.log"
  rm -f $f
  tail -n 1 "$OUT/aio.log"; cat "$OUT/aio_dd.log"
  # And against fio (the static build that tests/gpu/stage_extra.sh stages), cell by cell.
  if [ -x .gpu-deps/bin/fio ]; then
    PATH=$PWD/.gpu-deps/bin:$PATH BLOCK_KIB="${AIO_BLOCK_KIB:-128 1024 4096}" QUEUE_DEPTHS="${AIO_DEPTHS:-8 32}" \
      REPEAT=${AIO_REPEAT:-3} timeout 400 bash tests/bench/aio_vs_fio.sh build-gpu /tmp/dstrain-aio-vs-fio.dat \
      ${AIO_FILE_MIB:-2048} 1 > "$OUT/aio_vs_fio.log" 2>&1
    echo "aio_vs_fio rc=$?" | tee -a "$OUT/summary.txt"
    tail -n 1 "$OUT/aio_vs_fio.log" > "$OUT/aio_vs_fio.json"
  fi
fi

if has nvme; then
  dims="--set model.vocab_size=32000 --set model.hidden_size=2560 --set model.intermediate_size=6912
    --set model.num_layers=32 --set model.num_heads=20 --set model.num_kv_heads=20"
  args="--config configs/bench-1b.toml $dims --set zero.stage=3 --set train.global_batch=1
    --set train.seq_len=2048 --set train.activation_checkpointing=full --set offload.optimizer=nvme
    --set offload.params=cpu --set offload.nvme_dir=/tmp/dstrain-nvme"
  $BIN plan $args --json > "$OUT/nvme_plan.json" 2>&1
  f=/tmp/dstrain-dd.dat
  { dd if=/dev/zero of=$f bs=4M count=2048 oflag=direct conv=fsync 2>&1 | tail -n 1
    dd if=$f of=/dev/null bs=4M iflag=direct 2>&1 | tail -n 1; } > "$OUT/nvme_dd.log"
  # fio's mixed sequential read/write (half each, 1 MiB, depth 16): the disk serving both
  # directions at once, as the swapper's reads of the next unit and writes of the last one do.
  if [ -x .gpu-deps/bin/fio ]; then
    .gpu-deps/bin/fio --name=mixed --filename=$f --size=8G --bs=1M --iodepth=16 --rw=rw \
      --rwmixread=50 --direct=1 --ioengine=io_uring --end_fsync=1 --output-format=json \
      > "$OUT/nvme_fio_mixed.json" 2> "$OUT/nvme_fio_mixed.err"
  fi
  rm -f $f
  run nvme_2p7b $(nproc) $args --set train.steps=${NVME_STEPS:-4}
  python3 - "$OUT/nvme_plan.json" "$OUT/nvme_dd.log" "$OUT/nvme_2p7b.jsonl" "$OUT/nvme_fio_mixed.json" <<'PY' | tee "$OUT/nvme.json"
import json, re, statistics, sys
plan = json.load(open(sys.argv[1]))
rates = [float(m) * (1e9 if u == "G" else 1e6) for m, u in re.findall(r"([0-9.]+) ([GM])B/s", open(sys.argv[2]).read())]
rows = [json.loads(l) for l in open(sys.argv[3]) if '"loss"' in l][1:]
nvme_bytes = plan.get("nvme_bytes_per_step_per_rank")
out = {"dd_write_Bps": rates[0] if rates else None, "dd_read_Bps": rates[1] if len(rates) > 1 else None,
       "nvme_bytes_per_step": nvme_bytes}
if rows and nvme_bytes and len(rates) > 1:
    step = statistics.median(r["step_time_s"] for r in rows)
    bound = nvme_bytes / 2 / rates[0] + nvme_bytes / 2 / rates[1]  # half written, half read
    out.update({"step_time_s": step, "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows),
                "bound_s": bound, "share_of_bound": bound / step,
                "peak_mem_gib": max(r["gpu_mem_peak_bytes"] for r in rows) / 2**30})
    try:  # the mixed bound: every byte at fio's combined read + write rate
        job = json.load(open(sys.argv[4]))["jobs"][0]
        mixed = (job["read"]["bw_bytes"] + job["write"]["bw_bytes"])
        out.update({"fio_mixed_Bps": mixed, "mixed_bound_s": nvme_bytes / mixed,
                    "share_of_mixed_bound": nvme_bytes / mixed / step})
    except (OSError, ValueError, KeyError, IndexError):
        pass
print(json.dumps(out))
PY
fi
