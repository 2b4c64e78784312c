#!/usr/bin/env bash
# A peer that stops or dies mid-training on GPUs: two ranks of `dstrain ARGS...` (plus what every
# case needs: cuda, endless steps, a log line per step), rank 1 faulted after step 4, and how the
# job ended. From the project root on the GPU machine, after `bash .gpu-deps/device-build.sh`:
#   OUT=... [LOGS=...] [FAULT_LAUNCH=tests/gpu/shared_gpu_rank.sh] bash tests/gpu/fault_check.sh \
#     --config configs/tiny.toml --set zero.stage=3 --set run.collective_timeout_s=10
# Cases (FAULT_CASES, default all): STOP and KILL send the signal at a random point of training
# (on a shared GPU a stopped rank's spinning NCCL kernel can starve the other rank's compute);
# SELFSTOP makes rank 1 stop itself at the start of step 5 (DSTRAIN_TEST_STOP_AT), its GPU idle,
# while rank 0 goes on into the step's first collective: a peer stopped inside a collective.
# Writes $OUT/fault.jsonl (per case: exit code, seconds from the signal, or from step 4's log for
# SELFSTOP, to mpirun's end, whether a timeout message came, ranks left), appends the survivors'
# messages to $OUT/summary.txt, and keeps in $LOGS (default $OUT) each case's log, the processes'
# states every 2 s (fault_*.ps) and, 20 s after the fault or 8 s after the first timeout message,
# every thread's state and backtrace of the ranks still there (fault_*.stacks; eu-stack from
# tests/gpu/stage_extra.sh). FAULT_LIMIT_S (default 150) bounds each case.
set -u
OUT=${OUT:-/tmp/gpu-out}
LOGS=${LOGS:-$OUT}
mkdir -p "$OUT" "$LOGS"
source .gpu-deps/env.sh
BIN=build-gpu/dstrain
MPIRUN="mpirun --bind-to none -x OMP_NUM_THREADS=2 -x LD_LIBRARY_PATH -x NCCL_NVLS_ENABLE"
for f in .gpu-deps/tools/*.deb; do [ -f "$f" ] && dpkg -x "$f" /tmp/eu; done

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
stacks() {  # stacks PID: every thread's name, state, kernel stack, and eu-stack's backtraces
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

: > "$OUT/fault.jsonl"
for sig in ${FAULT_CASES:-SELFSTOP STOP KILL}; do
  rm -rf /tmp/runs/fault_$sig
  stop_at=""; [ "$sig" = SELFSTOP ] && stop_at="1:5"
  env ${stop_at:+DSTRAIN_TEST_STOP_AT=$stop_at} timeout ${FAULT_LIMIT_S:-150} \
    $MPIRUN -np 2 ${FAULT_LAUNCH:-} $BIN "$@" --set run.device=cuda --set train.steps=1000000 \
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
  stacks_at=$(( $(date +%s) + 20 ))  # 0 once taken
  while kill -0 $job 2>/dev/null; do
    snapshot >> "$LOGS/fault_$sig.ps"
    now=$(date +%s)
    if [ "$stacks_at" -gt 0 ]; then
      if grep -q "did not" "$LOGS/fault_$sig.log" && [ $(( now + 8 )) -lt "$stacks_at" ]; then
        stacks_at=$(( now + 8 ))
      fi
      if [ "$now" -ge "$stacks_at" ]; then
        for pid in $(pgrep -f "$BIN --config"); do stacks "$pid"; done > "$LOGS/fault_$sig.stacks" 2>&1
        stacks_at=0
      fi
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
