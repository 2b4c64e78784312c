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
#   fault.jsonl                 a rank stopped (SIGSTOP) or killed (SIGKILL) mid-training, 2
#                               ranks, run.collective_timeout_s = 10: exit code, seconds from the
#                               signal to mpirun's end, whether the watchdog's message came, and
#                               the processes' states while the job ended (fault_*.ps)
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
  python3 - "$LOGS" <<'PY' > "$OUT/equality.json"
import json, os, sys
out = sys.argv[1]
def losses(n):
    p = os.path.join(out, n + ".jsonl")
    return [json.loads(l)["loss"] for l in open(p) if '"loss"' in l] if os.path.exists(p) else None
ref = losses("ref_np1_s0")
res = {"reference": "ref_np1_s0", "losses": ref}
for n in ["np2_s0", "np2_s3", "np4_s3", "np4_node_s3", "np4_node_s2"]:
    l = losses(n)
    res[n] = (None if not l or not ref or len(l) != len(ref)
              else max(abs(a - b) / abs(b) for a, b in zip(l, ref)))
for n in ["np4_node_s3", "np4_node_s2"]:
    p = os.path.join(out, n + ".log")
    res[n + "_topology"] = next((l.strip() for l in open(p) if l.startswith("topology:")), None) \
        if os.path.exists(p) else None
print(json.dumps(res))
PY
  cat "$OUT/equality.json"
fi

rank_pid() {  # rank_pid R: the pid of dstrain's rank R
  for pid in $(pgrep -f "$BIN --config"); do
    if tr '\0' '\n' < /proc/$pid/environ 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$1"; then
      echo "$pid"; return
    fi
  done
}
snapshot() {  # the state and kernel wait channel of mpirun and every dstrain process
  for pid in $(pgrep -f "mpirun|$BIN --config"); do
    [ -r /proc/$pid/stat ] || continue
    echo "$(date +%s.%N) pid $pid state $(awk '{print $3}' /proc/$pid/stat) wchan $(cat /proc/$pid/wchan 2>/dev/null) $(tr '\0' ' ' < /proc/$pid/cmdline | cut -c1-60)"
  done
}
stacks() {  # stacks PID: every thread's name, state and kernel wait, and gdb's backtraces if any
  local pid=$1
  echo "== pid $pid: $(tr '\0' ' ' < /proc/$pid/cmdline | cut -c1-80)"
  for t in /proc/$pid/task/*; do
    echo "-- tid ${t##*/} $(cat $t/comm) state $(awk '{print $3}' $t/stat) wchan $(cat $t/wchan 2>/dev/null)"
    head -6 $t/stack 2>/dev/null | sed 's/^/     /'
  done
  if [ -x /tmp/eu/usr/bin/eu-stack ]; then
    LD_LIBRARY_PATH=/tmp/eu/usr/lib/x86_64-linux-gnu timeout 60 /tmp/eu/usr/bin/eu-stack -p "$pid" \
      2>&1 | head -400
  else
    echo "(no eu-stack: bash tests/gpu/stage_extra.sh stages it)"
  fi
}
if has fault; then
  for f in .gpu-deps/tools/*.deb; do [ -f "$f" ] && dpkg -x "$f" /tmp/eu; done
  : > "$OUT/fault.jsonl"
  # STOP and KILL: the signal at a random point of training (on a shared GPU a stopped rank's
  # spinning NCCL kernel can starve the other rank's compute, a hang no timeout of a collective
  # sees). SELFSTOP: rank 1 stops itself at the start of step 5 (DSTRAIN_TEST_STOP_AT), its GPU
  # idle, while rank 0 goes on into the step's first collective: a peer stopped inside a
  # collective as on GPUs of their own. Times count from the signal (SELFSTOP: from step 4's log).
  for sig in ${FAULT_CASES:-SELFSTOP STOP KILL}; do
    rm -rf /tmp/runs/fault_$sig
    stop_at=""; [ "$sig" = SELFSTOP ] && stop_at="1:5"
    env ${stop_at:+DSTRAIN_TEST_STOP_AT=$stop_at} timeout ${FAULT_LIMIT_S:-150} $MPIRUN -np 2 $SHARE $BIN \
      --config configs/tiny.toml --set run.device=cuda \
      --set train.steps=1000000 --set zero.stage=3 --set run.collective_timeout_s=10 \
      --set checkpoint.enabled=false --set log.every=1 --set log.progress_bar=false \
      --set run.dir=/tmp/runs/fault_$sig > "$LOGS/fault_$sig.log" 2>&1 &
    job=$!
    for _ in $(seq 1 900); do  # until training has logged a few steps
      n=$(grep -c '"loss"' /tmp/runs/fault_$sig/metrics.jsonl 2>/dev/null)
      [ "${n:-0}" -ge 4 ] && break
      sleep 0.1
    done
    victim=$(rank_pid 1)
    if [ -z "$victim" ]; then
      echo "fault_$sig: no rank 1 to signal (the run ended early?)" | tee -a "$OUT/summary.txt"
      wait $job; continue
    fi
    signalled=$(date +%s.%N)
    [ "$sig" != SELFSTOP ] && kill -$sig "$victim"
    # Every 2 s until the job ends: who is still there, and where in the kernel. Once, 8 s
    # after the survivor's message, every thread of every rank still there (fault_*.stacks).
    said=""
    while kill -0 $job 2>/dev/null; do
      snapshot >> "$LOGS/fault_$sig.ps"
      if [ -z "$said" ] && grep -q "did not" "$LOGS/fault_$sig.log"; then said=$(date +%s); fi
      # Or 20 s after the signal, whatever the log says.
      [ -z "$said" ] && [ "$(python3 -c "import time; print(int(time.time() - $signalled >= 12))")" = 1 ] \
        && said=$(date +%s)
      if [ -n "$said" ] && [ "$said" != done ] && [ $(( $(date +%s) - said )) -ge 8 ]; then
        for pid in $(pgrep -f "$BIN --config"); do stacks "$pid"; done > "$LOGS/fault_$sig.stacks" 2>&1
        said=done
      fi
      sleep 2
    done
    wait $job
    rc=$?
    ended=$(date +%s.%N)
    left=$(pgrep -f "$BIN --config" | tr '\n' ' ')
    kill -KILL "$victim" 2>/dev/null
    python3 -c "import json,sys; print(json.dumps({'signal': sys.argv[1], 'exit_code': int(sys.argv[2]),
      'seconds_to_end': float(sys.argv[4]) - float(sys.argv[3]),
      'watchdog_message': open(sys.argv[5], errors='replace').read().count('did not') > 0,
      'processes_left': sys.argv[6]}))" \
      "$sig" "$rc" "$signalled" "$ended" "$LOGS/fault_$sig.log" "$left" >> "$OUT/fault.jsonl"
    grep -E "dstrain: |error" "$LOGS/fault_$sig.log" | head -5 | tee -a "$OUT/summary.txt"
  done
  cat "$OUT/fault.jsonl"
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
