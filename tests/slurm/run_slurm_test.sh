#!/bin/bash
# A real Slurm on this machine: munged, slurmctld and slurmd with a generated slurm.conf (this
# host the only node), then launch/slurm/dstrain-1node.sbatch for a tiny 2-rank CPU run.
#   part 1: the job completes and metrics.jsonl reaches the last step;
#   part 2: a second job is sent USR1 (as --signal=B:USR1@120 would) mid-run; it must commit a
#           checkpoint, exit 75, be requeued, resume and end with part 1's final loss.
# Usage: run_slurm_test.sh DSTRAIN_BIN [SOURCE_DIR]. Exit 0 pass, 1 fail, 77 cannot run here.
# DSTRAIN_SLURM_PART=1 runs part 1 only.
set -u
kSkip=77
bin=$(realpath "${1:?usage: run_slurm_test.sh DSTRAIN_BIN [SOURCE_DIR]}")
src=$(realpath "${2:-$(dirname "$0")/../..}")
steps=${DSTRAIN_SLURM_STEPS:-40}
job_timeout=${DSTRAIN_SLURM_JOB_TIMEOUT:-300}

skip() { echo "SKIP: $*"; exit $kSkip; }
fail() { echo "FAIL: $*"; exit 1; }

[ -x "$bin" ] || skip "no dstrain binary at $bin"
command -v mpirun >/dev/null || skip "no mpirun"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
    || ! command -v sbatch >/dev/null; then
  [ "$(id -u)" -eq 0 ] || skip "slurm-wlm/munge are not installed and installing them needs root"
  command -v apt-get >/dev/null || skip "slurm-wlm/munge are not installed and there is no apt-get"
  echo "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y --no-install-recommends slurm-wlm munge \
      || { apt-get update && apt-get install -y --no-install-recommends slurm-wlm munge; }; } \
      >/tmp/dstrain-slurm-apt.log 2>&1 || skip "apt-get install slurm-wlm munge failed (/tmp/dstrain-slurm-apt.log)"
fi
# slurmd must start job steps as the submitting user and munged must read a root-owned key.
[ "$(id -u)" -eq 0 ] || skip "the daemons of this single-machine cluster need root"

tmp=$(mktemp -d /tmp/dstrain-slurm.XXXXXX)
cleanup() {
  # Daemons started here, by their pid files: slurmd first so no step outlives its daemon.
  for f in "$tmp"/slurmd.pid "$tmp"/slurmctld.pid "$tmp"/munged.pid; do
    [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null
  done
  sleep 1
  if [ -z "${DSTRAIN_SLURM_KEEP:-}" ]; then rm -rf "$tmp"; else echo "kept $tmp"; fi
}
trap cleanup EXIT

# munge, with its own key, socket and state, so that no system munged is needed or disturbed.
mkdir -p "$tmp/munge"
chmod 700 "$tmp/munge"
dd if=/dev/urandom of="$tmp/munge/munge.key" bs=1 count=1024 status=none
chmod 400 "$tmp/munge/munge.key"
munged --key-file="$tmp/munge/munge.key" --socket="$tmp/munge/munge.sock" \
    --pid-file="$tmp/munged.pid" --log-file="$tmp/munge/munged.log" \
    --seed-file="$tmp/munge/munged.seed" --force \
    || skip "munged does not start here ($(tail -n 3 "$tmp/munge/munged.log" 2>/dev/null))"

host=$(hostname -s)
# nproc honours OMP_NUM_THREADS (1 under `make test`); Slurm needs the hardware count.
cpus=$(getconf _NPROCESSORS_ONLN)
port=$((20000 + RANDOM % 20000))
mkdir -p "$tmp/ctld" "$tmp/spool" "$tmp/jobs"
: > "$tmp/plugstack.conf"
cat > "$tmp/slurm.conf" <<CONF
ClusterName=dstraintest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$tmp/munge/munge.sock
StateSaveLocation=$tmp/ctld
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/slurmctld.log
SlurmdLogFile=$tmp/slurmd.log
PlugStackConfig=$tmp/plugstack.conf
# Containers usually lack a writable cgroup tree: track processes by parent pid, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=10
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus State=UNKNOWN
PartitionName=dstrain Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$tmp/slurm.conf

slurmctld -c -f "$SLURM_CONF" || skip "slurmctld does not start here ($(tail -n 3 "$tmp/slurmctld.log" 2>/dev/null))"
slurmd -f "$SLURM_CONF" -N "$host" || skip "slurmd does not start here ($(tail -n 3 "$tmp/slurmd.log" 2>/dev/null))"
for _ in $(seq 60); do
  state=$(sinfo -h -n "$host" -o %t 2>/dev/null)
  [ "$state" = idle ] && break
  sleep 1
done
[ "$state" = idle ] || skip "node $host is not idle after 60 s (state '$state'; $(tail -n 3 "$tmp/slurmd.log"))"
echo "slurm is up: node $host, $cpus CPUs, $(sinfo --version)"

# The job's environment: 2 ranks on a small shared machine, as the ctest MPI tests run them.
export DSTRAIN_BIN=$bin
export DSTRAIN_MPIRUN_ARGS="--allow-run-as-root --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 -x OMP_NUM_THREADS"
export OMP_NUM_THREADS=1

# submit NAME RUN_DIR: sbatch the 1-node script for the tiny run; prints the job id.
submit() {
  sbatch --parsable --job-name="$1" --ntasks-per-node=2 --cpus-per-task=1 --gpus-per-node=0 \
      --time=10 --output="$tmp/jobs/$1.out" --chdir="$src" \
      "$src/launch/slurm/dstrain-1node.sbatch" --config "$src/configs/tiny.toml" \
      --set run.device=cpu --set "train.steps=$steps" --set "run.dir=$2" --set log.every=5
}
job_field() { scontrol show job "$1" -o 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p"; }
# wait_job ID: until the job has ended for good; prints its final state.
wait_job() {
  local state=""
  for _ in $(seq "$job_timeout"); do
    state=$(job_field "$1" JobState)
    case "$state" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE) break ;; esac
    sleep 1
  done
  echo "$state"
}
# field KEY: the value of KEY in the JSON line on stdin (metrics.jsonl lines are flat).
field() { sed -n "s/.*\"$1\": *\([^,}]*\).*/\1/p"; }
# last_loss FILE: "STEP LOSS" of the last training step in metrics.jsonl FILE.
last_loss() { local l; l=$(grep '"loss"' "$1" | tail -n 1); echo "$(field step <<< "$l") $(field loss <<< "$l")"; }

# Part 1: an ordinary job runs to the end.
run1=$tmp/run-plain
job1=$(submit plain "$run1") || fail "sbatch refused the job"
state=$(wait_job "$job1")
echo "--- job $job1 output"; cat "$tmp/jobs/plain.out" 2>/dev/null
[ "$state" = COMPLETED ] || fail "job $job1 ended $state ($(job_field "$job1" ExitCode))"
[ -s "$run1/metrics.jsonl" ] || fail "no $run1/metrics.jsonl"
read -r step1 loss1 <<< "$(last_loss "$run1/metrics.jsonl")"
[ "$step1" = "$steps" ] || fail "plain run ended at step '$step1', not $steps"
first_loss=$(grep '"loss"' "$run1/metrics.jsonl" | head -n 1 | field loss)
awk -v a="$first_loss" -v b="$loss1" 'BEGIN { exit !(b < a) }' || fail "loss did not fall: $first_loss -> $loss1"
echo "part 1 ok: job $job1 COMPLETED, step $step1, loss $first_loss -> $loss1"
[ "${DSTRAIN_SLURM_PART:-}" = 1 ] && exit 0

# Part 2: USR1 to the batch shell mid-run, as --signal=B:USR1@120 sends it before the limit.
run2=$tmp/run-signalled
job2=$(submit signalled "$run2") || fail "sbatch refused the job"
for _ in $(seq "$job_timeout"); do
  s=$(grep '"loss"' "$run2/metrics.jsonl" 2>/dev/null | tail -n 1 | field step)
  [ -n "$s" ] && [ "$s" -ge $((steps / 4)) ] && break
  sleep 0.2
done
if [ -z "$s" ] || [ "$s" -ge "$steps" ]; then fail "could not catch job $job2 mid-run (step '$s')"; fi
scancel --batch --signal=USR1 "$job2" || fail "scancel --signal=USR1 $job2 failed"
echo "sent USR1 to job $job2 at step $s"
state=$(wait_job "$job2")
echo "--- job $job2 output"; cat "$tmp/jobs/signalled.out" 2>/dev/null
grep -q '"event": *"checkpoint"' "$run2/metrics.jsonl" \
    || fail "no checkpoint was committed after USR1 (is SIGUSR1 handled by dstrain?)"
grep -q 'checkpoint committed, requeueing' "$tmp/jobs/signalled.out" || fail "the job did not exit 75 and requeue"
restarts=$(job_field "$job2" Restarts)
[ "${restarts:-0}" -ge 1 ] || fail "job $job2 was not requeued (Restarts=$restarts)"
[ "$state" = COMPLETED ] || fail "requeued job $job2 ended $state ($(job_field "$job2" ExitCode))"
grep -q '"event": *"resume"' "$run2/metrics.jsonl" || fail "the requeued job did not resume from the checkpoint"
read -r step2 loss2 <<< "$(last_loss "$run2/metrics.jsonl")"
[ "$step2" = "$steps" ] || fail "signalled run ended at step '$step2', not $steps"
[ "$loss2" = "$loss1" ] || fail "signalled run's final loss $loss2 differs from the plain run's $loss1"
echo "part 2 ok: job $job2 checkpointed on USR1, requeued ($restarts restart), final loss $loss2 = $loss1"
echo PASS
