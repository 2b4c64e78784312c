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
# its write at the end of training; both are printed too), `load_s` of the resume event. An
# asynchronous save hides its write only behind the training steps until the next save: on a GPU,
# where a step of this model takes milliseconds, EVERY must cover the write time. fio writes the same bytes, RANKS jobs in parallel, with fsync at the end of each file
# (as the checkpoint does), then reads them back buffered (as the resume does). Prints one JSON.
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

train "$scratch/sync" --set checkpoint.async=false
train "$scratch/async" --set checkpoint.async=true
ckpt="$scratch/sync/checkpoints/$(printf step-%08d $((4 * every)))"
train "$scratch/load" --resume "$ckpt"

bytes=$(du -sb "$ckpt" | cut -f1)
per_job=$(( (bytes + ranks - 1) / ranks ))
mkdir -p "$scratch/fio"
fio_json() {  # rw, extra args...
  local rw=$1
  shift
  fio --name=ckpt --directory="$scratch/fio" --rw="$rw" --bs=4M --size="$per_job" \
    --numjobs="$ranks" --group_reporting --ioengine=psync --output-format=json "$@"
}
dd_json() {  # rw: the same jobs with dd (conv=fsync on writes), in fio's JSON shape
  local rw=$1 start end
  start=$(date +%s.%N)
  for ((j = 0; j < ranks; ++j)); do
    if [[ $rw == write ]]; then
      dd if=/dev/zero of="$scratch/fio/ckpt.$j" bs=4M count=$((per_job >> 22)) conv=fsync status=none &
    else
      dd if="$scratch/fio/ckpt.$j" of=/dev/null bs=4M status=none &
    fi
  done
  wait
  end=$(date +%s.%N)
  echo "{\"jobs\": [{\"$rw\": {\"io_bytes\": $(((per_job >> 22 << 22) * ranks)), \"runtime\": $("${PYTHON:-python3}" -c "print(($end - $start) * 1000)")}}]}"
}
if command -v fio > /dev/null; then
  fio_json write --end_fsync=1 > "$scratch/fio_write.json"
  fio_json read > "$scratch/fio_read.json"
  tool=fio
else
  dd_json write > "$scratch/fio_write.json"
  dd_json read > "$scratch/fio_read.json"
  tool=dd
fi

"${PYTHON:-python3}" - "$scratch" "$bytes" "$ranks" "$device" "$tool" "$every" <<'PY'
import json, sys
scratch, nbytes, ranks, device, tool = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
every = int(sys.argv[6])
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
load_s = event("load", "resume", 4 * every)["load_s"]
def fio_gbps(name, rw):
    job = json.load(open(f"{scratch}/{name}"))["jobs"][0][rw]
    return job["io_bytes"] / (job["runtime"] / 1000.0) / 1e9  # runtime in ms, fsync included
fio_w = fio_gbps("fio_write.json", "write")
fio_r = fio_gbps("fio_read.json", "read")
save = nbytes / sync_s / 1e9
load = nbytes / load_s / 1e9
print(json.dumps({
    "device": device, "ranks": ranks, "checkpoint_every": every, "disk_tool": tool, "checkpoint_bytes": nbytes,
    "sync_save_s": round(sync_s, 3), "async_stall_s": round(async_s, 3),
    "async_stall_over_sync": round(async_s / sync_s, 4),
    "async_first_save_stall_s": round(stall("async", every), 3),
    "async_last_save_stall_s": round(stall("async", 4 * every), 3),
    "save_GBps": round(save, 3), "fio_write_fsync_GBps": round(fio_w, 3),
    "save_over_fio": round(save / fio_w, 3),
    "load_s": round(load_s, 3), "load_GBps": round(load, 3), "fio_read_GBps": round(fio_r, 3),
    "load_over_fio": round(load / fio_r, 3)}, indent=1))
PY
