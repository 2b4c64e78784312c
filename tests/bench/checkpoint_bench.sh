#!/usr/bin/env bash
# Checkpoint save and load bandwidth against fio on the same disk, and the training stall of an
# asynchronous save against a synchronous one, on a ~100M-parameter Llama.
#
#   [EVERY=N] tests/bench/checkpoint_bench.sh BUILD_DIR [SCRATCH_DIR] [RANKS] [DEVICE]
#
# Trains 4 x EVERY steps (EVERY defaults to 1) with a checkpoint every EVERY steps, once
# synchronously and once with checkpoint.async = true, then resumes from the last checkpoint (a
# load and no training). Times come from metrics.jsonl: `stall_s` of the 2nd and 3rd checkpoint
# events (steady state: the first async save also allocates its host copy, the last one waits for
# its write at the end of training; both are printed too; `async_commit_s` is the part of the
# steady-state stall spent at the commit), and `load_s` of the resume event: the
# whole resume, which reads every block once with direct I/O and verifies it as it loads (the
# log's "read and verified in X s" line is the read alone, with its direct-I/O share). An asynchronous
# save hides its write only behind the training steps until the next save: on a GPU, where a step
# of this model takes milliseconds, EVERY must cover the write time.
#
# The disk reference is fio on the same directory in RANKS parallel jobs: writes of the same
# number of bytes with O_DIRECT and an fsync at the end of each file (as the checkpoint does);
# reads of the checkpoint's own rank files with O_DIRECT, once just before and once just after the
# resume (the mean is the reference). The page
# cache is dropped before each of the three reads (when /proc/sys/vm/drop_caches can be written;
# "caches_dropped" says whether it could), so all of them read the disk. Prints one JSON.
set -euo pipefail

build=$(realpath "${1:?usage: $0 BUILD_DIR [SCRATCH_DIR] [RANKS] [DEVICE]}")
scratch=${2:-/tmp/dstrain_checkpoint_bench}
ranks=${3:-2}
device=${4:-cpu}
every=${EVERY:-1}
dstrain="$build/launch/dstrain"
[[ -x "$dstrain" ]] || dstrain="$build/dstrain"
mpirun_cmd=(mpirun --oversubscribe --allow-run-as-root --bind-to none -np "$ranks")

if ! command -v fio > /dev/null; then
  apt-get install -y fio > /dev/null 2>&1 || echo "fio is missing and could not be installed: dd instead" >&2
fi

rm -rf "$scratch"
mkdir -p "$scratch"
cat > "$scratch/bench.toml" <<TOML
[run]
device = "$device"
[model]
vocab_size = 32000
hidden_size = 768
intermediate_size = 2048
num_layers = 8
num_heads = 12
num_kv_heads = 12
[train]
steps = $((4 * every))
global_batch = $ranks
micro_batch = 1
seq_len = 64
[zero]
stage = 3
[checkpoint]
every = $every
keep = 3
TOML

train() {  # run_dir, extra args...
  local dir=$1
  shift
  "${mpirun_cmd[@]}" "$dstrain" --config "$scratch/bench.toml" --set run.dir="$dir" "$@" \
    > "$dir.log" 2>&1 || { cat "$dir.log" >&2; exit 1; }
}

drop_caches() {  # prints 1 when the page cache could be dropped, 0 otherwise
  sync
  if (echo 3 > /proc/sys/vm/drop_caches) 2> /dev/null; then echo 1; else echo 0; fi
}

train "$scratch/sync" --set checkpoint.async=false
train "$scratch/async" --set checkpoint.async=true
ckpt="$scratch/sync/checkpoints/$(printf step-%08d $((4 * every)))"

bytes=$(du -sb "$ckpt" | cut -f1)
per_job=$(( (bytes + ranks - 1) / ranks ))
mkdir -p "$scratch/fio"
fio_json() {  # rw, extra args...
  local rw=$1
  shift
  fio --name=ckpt --directory="$scratch/fio" --rw="$rw" --bs=4M --size="$per_job" \
    --numjobs="$ranks" --group_reporting --ioengine=psync --direct=1 --output-format=json "$@"
}
# Reads read the checkpoint's own rank files, one job each: the same bytes at the same place on
# the disk as the resume (this VM's disk serves recently written data faster than older data).
fio_read_ckpt() {
  local jobs=()
  for f in "$ckpt"/rank-*.h5; do jobs+=(--name="$(basename "$f")" --filename="$f"); done
  fio --rw=read --bs=4M --ioengine=psync --direct=1 --group_reporting --output-format=json "${jobs[@]}"
}
dd_json() {  # rw: the same jobs with dd (direct I/O, conv=fsync on writes), in fio's JSON shape
  local rw=$1 start end
  start=$(date +%s.%N)
  if [[ $rw == write ]]; then
    for ((j = 0; j < ranks; ++j)); do
      dd if=/dev/zero of="$scratch/fio/ckpt.$j" bs=4M count=$((per_job >> 22)) oflag=direct conv=fsync status=none &
    done
  else
    for f in "$ckpt"/rank-*.h5; do dd if="$f" of=/dev/null bs=4M iflag=direct status=none & done
  fi
  wait
  end=$(date +%s.%N)
  local io=$(((per_job >> 22 << 22) * ranks))
  [[ $rw == write ]] || io=$(stat -c %s "$ckpt"/rank-*.h5 | awk '{s += $1} END {print s}')
  echo "{\"jobs\": [{\"$rw\": {\"io_bytes\": $io, \"runtime\": $("${PYTHON:-python3}" -c "print(($end - $start) * 1000)")}}]}"
}
disk() {  # write | read: the reference, with fio when there is one
  if command -v fio > /dev/null; then
    if [[ $1 == write ]]; then fio_json write --end_fsync=1; else fio_read_ckpt; fi
  else
    dd_json "$1"
  fi
}
tool=$(command -v fio > /dev/null && echo fio || echo dd)
disk write > "$scratch/fio_write.json"
# This disk's read bandwidth drifts from minute to minute: the reference reads just before and
# just after the resume, every one of the three from a dropped page cache.
dropped_before_read=$(drop_caches)
disk read > "$scratch/fio_read_before.json"
dropped_before_resume=$(drop_caches)
train "$scratch/load" --resume "$ckpt"
read_s=$(sed -n 's/.* read and verified in \([0-9.]*\) s .*/\1/p' "$scratch/load.log" | tail -1)
direct_pct=$(sed -n 's/.* read and verified in .*, \([0-9.]*\)% with direct I\/O.*/\1/p' "$scratch/load.log" | tail -1)
dropped_after_resume=$(drop_caches)
disk read > "$scratch/fio_read_after.json"

"${PYTHON:-python3}" - "$scratch" "$bytes" "$ranks" "$device" "$tool" "$every" "${read_s:-nan}" \
  "$((dropped_before_resume && dropped_before_read && dropped_after_resume))" "${direct_pct:-nan}" <<'PY'
import json, sys
scratch, nbytes, ranks, device, tool = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
every, read_s, dropped, direct_pct = int(sys.argv[6]), float(sys.argv[7]), sys.argv[8] == "1", float(sys.argv[9])
def event(run, kind, step):
    for line in open(f"{scratch}/{run}/metrics.jsonl"):
        j = json.loads(line)
        if j.get("event") == kind and j["step"] == step:
            return j
    raise SystemExit(f"{run}: no {kind} event at step {step}")
def stall(run, step):
    return event(run, "checkpoint", step)["stall_s"]
sync_s = (stall("sync", 2 * every) + stall("sync", 3 * every)) / 2
async_s = (stall("async", 2 * every) + stall("async", 3 * every)) / 2
# The part of the async stall spent at the commit (waiting for the writer, agreement, index); the
# rest is the save's start and the wait for its copy of the state before the next optimizer step.
async_commit_s = (event("async", "checkpoint", 2 * every)["commit_s"] +
                  event("async", "checkpoint", 3 * every)["commit_s"]) / 2
load_s = event("load", "resume", 4 * every)["load_s"]
def fio_gbps(name, rw):
    job = json.load(open(f"{scratch}/{name}"))["jobs"][0][rw]
    return job["io_bytes"] / (job["runtime"] / 1000.0) / 1e9  # runtime in ms, fsync included
fio_w = fio_gbps("fio_write.json", "write")
fio_r_before = fio_gbps("fio_read_before.json", "read")
fio_r_after = fio_gbps("fio_read_after.json", "read")
fio_r = (fio_r_before + fio_r_after) / 2
save = nbytes / sync_s / 1e9
resume = nbytes / load_s / 1e9
print(json.dumps({
    "device": device, "ranks": ranks, "checkpoint_every": every, "disk_tool": tool, "checkpoint_bytes": nbytes,
    "caches_dropped": dropped,
    "sync_save_s": round(sync_s, 3), "async_stall_s": round(async_s, 3),
    "async_stall_over_sync": round(async_s / sync_s, 4), "async_commit_s": round(async_commit_s, 3),
    "async_first_save_stall_s": round(stall("async", every), 3),
    "async_last_save_stall_s": round(stall("async", 4 * every), 3),
    "save_GBps": round(save, 3), "fio_write_direct_fsync_GBps": round(fio_w, 3),
    "save_over_fio": round(save / fio_w, 3),
    "resume_s": round(load_s, 3), "read_and_verify_s": round(read_s, 3), "direct_io_percent": direct_pct,
    "resume_read_GBps": round(resume, 3), "fio_read_direct_GBps": round(fio_r, 3),
    "fio_read_before_after_GBps": [round(fio_r_before, 3), round(fio_r_after, 3)],
    "resume_read_over_fio": round(resume / fio_r, 3)}, indent=1))
PY
