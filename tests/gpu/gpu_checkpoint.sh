#!/usr/bin/env bash
# Checkpoints of the ~1B shape (configs/bench-1b.toml, bf16, stage 3) on one GPU, against dd on
# the same directory, in one device call from the project root after the GPU build (build-gpu/).
# Under 4 minutes (BUDGET_S, default 225, bounds every command). Writes under $OUT:
#   checkpoint.jsonl   one JSON line per measurement, the last one the summary with the ratios
#   *.log, *.jsonl     each run's output and metrics.jsonl
# What it runs, in order (every command is printed first):
#   1. sync:   2 steps and one synchronous save at the end. Save time: its stall_s.
#   2. dd write of the checkpoint's byte count, oflag=direct conv=fsync, same directory.
#   3. resume: the sync run's last checkpoint loaded with --resume DIR (no training): load_s of
#              the resume event (index, plan, direct-I/O read, block CRCs, copy to the GPU).
#   4. dd read of the checkpoint's rank file, iflag=direct, once before and once after the
#              resume (mean; the page cache is dropped before each read when possible).
#   5. async:  2 x EVERY steps, checkpoint.async = true, a save every EVERY steps. The steady-state
#              stall is the 2nd save's own part (its copy reuses the pinned buffers the 1st
#              allocated) plus the 1st save's commit (taken at the 2nd save, after EVERY steps, so
#              a write that EVERY steps cover is hidden): stall_s - commit_s of save 2 + commit_s
#              of save 1. EVERY (default 40) must cover the write of the whole state; the JSON
#              says whether it did (writer_hidden).
# Environment: SCRATCH (default /tmp/dstrain_gpu_ckpt; needs ~45 GB free), EVERY, DD_BS (default
# 32M, the size of dstrain's own write requests), BIN (default build-gpu/dstrain), EXTRA (more
# --set options for every run, e.g. a small CPU shape to try the script out: run.device=cpu ...).
set -euo pipefail

OUT=${OUT:-/tmp/gpu-out}
SCRATCH=${SCRATCH:-/tmp/dstrain_gpu_ckpt}
EVERY=${EVERY:-40}
DD_BS=${DD_BS:-32M}
BIN=${BIN:-build-gpu/dstrain}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
[[ -f .gpu-deps/env.sh ]] && source .gpu-deps/env.sh
[[ -x "$BIN" ]] || { echo "no $BIN: build the GPU recipe first" >&2; exit 1; }
started=$SECONDS
BUDGET_S=${BUDGET_S:-225}  # every command runs under what is left of it, so the whole stays under 4 min

say() { echo "+ $*" >&2; }
left() {  # seconds left of BUDGET_S; fails once it is spent
  local s=$((BUDGET_S - (SECONDS - started)))
  (( s > 0 )) || { echo "out of time (BUDGET_S=$BUDGET_S)" >&2; exit 1; }
  echo "$s"
}
# One single-rank run of the 1B shape: run NAME ARGS...
run() {
  local name=$1 limit
  shift
  limit=$(left)
  local cmd=(timeout "$limit" mpirun --allow-run-as-root --bind-to none -x OMP_NUM_THREADS=8
             -x LD_LIBRARY_PATH -np 1 "$BIN" --config configs/bench-1b.toml
             --set run.dir="$SCRATCH/$name" --set log.progress_bar=false --set train.global_batch=2 ${EXTRA:-} "$@")
  say "${cmd[*]}"
  if ! "${cmd[@]}" > "$OUT/$name.log" 2>&1; then
    echo "$name failed (after $((SECONDS - started)) s); last lines:" >&2
    tail -n 20 "$OUT/$name.log" >&2
    exit 1
  fi
  cp "$SCRATCH/$name/metrics.jsonl" "$OUT/$name.jsonl"
}
drop_caches() {  # prints 1 when the page cache could be dropped, 0 otherwise
  sync
  if (echo 3 > /proc/sys/vm/drop_caches) 2> /dev/null; then echo 1; else echo 0; fi
}
timed() {  # prints the seconds COMMAND... took
  local t0 t1 limit
  limit=$(left)
  say "timeout $limit $*"
  t0=$(date +%s.%N)
  timeout "$limit" "$@"
  t1=$(date +%s.%N)
  "$PY" -c "print($t1 - $t0)"
}
emit() { echo "$1" | tee -a "$OUT/checkpoint.jsonl"; }

rm -rf "$SCRATCH"
mkdir -p "$SCRATCH"
free_gb=$(df -P -B1G "$SCRATCH" | awk 'NR == 2 {print $4}')
emit "{\"part\": \"setup\", \"scratch\": \"$SCRATCH\", \"free_GB\": $free_gb, \"every\": $EVERY, \"dd_bs\": \"$DD_BS\", \"gpu\": \"$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -1 || true)\"}"
(( free_gb >= ${MIN_FREE_GB:-45} )) || { echo "need ~45 GB free under $SCRATCH (two checkpoints and a dd file of ~13 GB each)" >&2; exit 1; }

# 1. Synchronous saves.
run sync --set train.steps=2 --set checkpoint.enabled=true --set checkpoint.every=2 \
  --set checkpoint.keep=1 --set checkpoint.async=false
ckpt="$SCRATCH/sync/checkpoints/$(printf step-%08d 2)"
bytes=$(du -sb "$ckpt" | cut -f1)
rank_file="$ckpt/rank-00000.h5"
rank_bytes=$(stat -c %s "$rank_file")

# 2. dd write: the same byte count (rounded up to whole DD_BS blocks), direct, fsync at the end.
bs_bytes=$(numfmt --from=iec "$DD_BS")
count=$(( (rank_bytes + bs_bytes - 1) / bs_bytes ))
dd_write_s=$(timed dd if=/dev/zero of="$SCRATCH/dd.bin" bs="$DD_BS" count="$count" oflag=direct conv=fsync status=none)
dd_write_bytes=$(stat -c %s "$SCRATCH/dd.bin")
rm -f "$SCRATCH/dd.bin"

# 3-4. Resume between two dd reads of the rank file it reads.
dropped1=$(drop_caches)
dd_read1_s=$(timed dd if="$rank_file" of=/dev/null bs="$DD_BS" iflag=direct status=none)
dropped2=$(drop_caches)
run resume --set train.steps=2 --set checkpoint.enabled=true --resume "$ckpt"
dropped3=$(drop_caches)
dd_read2_s=$(timed dd if="$rank_file" of=/dev/null bs="$DD_BS" iflag=direct status=none)
rm -rf "$SCRATCH/sync" "$SCRATCH/resume"

# 5. Asynchronous saves.
run async --set train.steps=$((2 * EVERY)) --set checkpoint.enabled=true \
  --set checkpoint.every="$EVERY" --set checkpoint.keep=1 --set checkpoint.async=true
rm -rf "$SCRATCH/async"

"$PY" - "$OUT" "$bytes" "$dd_write_bytes" "$dd_write_s" "$rank_bytes" "$dd_read1_s" "$dd_read2_s" \
  "$EVERY" "$((dropped1 && dropped2 && dropped3))" "$((SECONDS - started))" <<'PY' | tee -a "$OUT/checkpoint.jsonl"
import json, sys
out, nbytes, dd_w_bytes, dd_w_s, rank_bytes, dd_r1_s, dd_r2_s, every, dropped, wall = sys.argv[1:]
nbytes, dd_w_bytes, rank_bytes, every = int(nbytes), int(dd_w_bytes), int(rank_bytes), int(every)
dd_w_s, dd_r1_s, dd_r2_s = float(dd_w_s), float(dd_r1_s), float(dd_r2_s)
def events(run, kind):
    rows = [json.loads(l) for l in open(f"{out}/{run}.jsonl")]
    return {r["step"]: r for r in rows if r.get("event") == kind}
sync = events("sync", "checkpoint")
asy = events("async", "checkpoint")
load_s = events("resume", "resume")[2]["load_s"]
steps = [json.loads(l) for l in open(f"{out}/async.jsonl") if '"step_time_s"' in l]
step_s = sorted(r["step_time_s"] for r in steps)[len(steps) // 2]
sync_s = sync[2]["stall_s"]
first, second = asy[every], asy[2 * every]
# Save 1's commit waited for its writer only if EVERY steps did not cover the write.
steady = (second["stall_s"] - second["commit_s"]) + first["commit_s"]
GB = 1e9
dd_w = dd_w_bytes / dd_w_s / GB
dd_r = rank_bytes / ((dd_r1_s + dd_r2_s) / 2) / GB
print(json.dumps({
    "part": "summary", "checkpoint_bytes": nbytes, "sync_save_s": round(sync_s, 3),
"save_GBps": round(nbytes / sync_s / GB, 3),
    "dd_write_direct_fsync_GBps": round(dd_w, 3), "save_over_dd": round(nbytes / sync_s / GB / dd_w, 3),
    "resume_s": round(load_s, 3), "resume_GBps": round(nbytes / load_s / GB, 3),
    "dd_read_direct_GBps": round(dd_r, 3),
    "dd_read_before_after_GBps": [round(rank_bytes / dd_r1_s / GB, 3), round(rank_bytes / dd_r2_s / GB, 3)],
    "resume_over_dd": round(nbytes / load_s / GB / dd_r, 3), "caches_dropped": dropped == "1",
    "async_stall_s": round(steady, 3), "async_stall_over_sync": round(steady / sync_s, 4),
    "async_saves": [{k: round(v, 3) if isinstance(v, float) else v for k, v in e.items() if k != "path"}
                    for e in (first, second)],
    "writer_hidden": first["commit_s"] < 0.5 * sync_s, "median_step_s": round(step_s, 3),
    "every": every, "wall_s": int(wall)}))
PY
