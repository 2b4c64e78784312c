#!/usr/bin/env bash
# Variable-length flash attention for packed batches (data.packing) on one GPU, from the project
# root after the project is built in build-gpu/ (as tests/gpu/gpu_checks.sh). Writes under $OUT:
#   varlen.log          varlen attention vs masked SDPA in bf16 (output, q/k/v gradients, GQA,
#                       sliding window) and a packed model step's loss and gradients, mask vs varlen
#   varlen_timing.json  one forward + backward of the ~1B shape (configs/bench-1b.toml), one
#                       packed 4096-slot row in bf16: mask path vs varlen path, ms per step
#   packed_1b.log/.jsonl  the trainer on configs/bench-1b.toml with data.packing = true (sft
#                       documents of 60..1000 byte tokens): end to end on the varlen path
#   varlen.json         the summary of the three
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
[ -f .gpu-deps/env.sh ] && source .gpu-deps/env.sh
TESTS=build-gpu/tests/runtime/model/model_tests
BIN=build-gpu/dstrain
MPIRUN="mpirun --bind-to none -x OMP_NUM_THREADS=4 -x LD_LIBRARY_PATH"

timeout 300 $TESTS --gtest_filter='VarlenAttention.*:*VarlenVsMask*' > "$OUT/varlen.log" 2>&1
tests_rc=$?
echo "varlen tests rc=$tests_rc" | tee -a "$OUT/summary.txt"
grep -E "^\[ +(OK|FAILED|SKIPPED) +\]" "$OUT/varlen.log"

timeout 300 $TESTS --gtest_also_run_disabled_tests \
  --gtest_filter='VarlenAttention.DISABLED_Time1bPackedStep' > "$OUT/varlen_timing.log" 2>&1
timing_rc=$?
grep -E '^\{"shape"' "$OUT/varlen_timing.log" > "$OUT/varlen_timing.json"
echo "varlen timing rc=$timing_rc" | tee -a "$OUT/summary.txt"
cat "$OUT/varlen_timing.json"

# End to end: prompt/completion documents of varied lengths, byte tokens, packed into 4096 slots.
python3 - /tmp/varlen_docs.jsonl <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(3000):
        n = 60 + (i * 397) % 940
        text = "".join(chr(97 + (i * 7 + j * 13) % 26) for j in range(n))
        f.write(json.dumps({"prompt": text[: n // 4], "completion": text[n // 4:]}) + "\n")
PY
$BIN prepare --input /tmp/varlen_docs.jsonl --output /tmp/varlen_docs.dstok --format sft \
  > "$OUT/packed_prepare.log" 2>&1
echo "prepare rc=$?" | tee -a "$OUT/summary.txt"
rm -rf /tmp/runs/packed_1b
timeout 300 $MPIRUN -np 1 $BIN --config configs/bench-1b.toml --set data.packing=true --set data.format=sft \
  --set data.path=/tmp/varlen_docs.dstok --set train.steps=8 --set run.dir=/tmp/runs/packed_1b \
  --set log.progress_bar=false > "$OUT/packed_1b.log" 2>&1
packed_rc=$?
echo "packed_1b rc=$packed_rc" | tee -a "$OUT/summary.txt"
cp /tmp/runs/packed_1b/metrics.jsonl "$OUT/packed_1b.jsonl" 2>/dev/null

python3 - "$OUT" "$tests_rc" "$timing_rc" "$packed_rc" <<'PY' | tee "$OUT/varlen.json"
import json, math, os, re, sys
out, tests_rc, timing_rc, packed_rc = sys.argv[1], *map(int, sys.argv[2:])
log = open(os.path.join(out, "varlen.log")).read()
summary = {
    "tests_rc": tests_rc,
    "tests_passed": len(re.findall(r"^\[ +OK +\]", log, re.M)),
    "tests_failed": re.findall(r"^\[ +FAILED +\] (\S+)", log, re.M),
    "tests_skipped": len(re.findall(r"^\[ +SKIPPED +\]", log, re.M)),
}
try:
    t = json.loads(open(os.path.join(out, "varlen_timing.json")).readline())
    if all(isinstance(t.get(k), (int, float)) for k in ("mask_step_ms", "varlen_step_ms")):
        t["mask_over_varlen"] = round(t["mask_step_ms"] / t["varlen_step_ms"], 3)
    summary["timing"] = t
except (OSError, ValueError):
    summary["timing"] = {"rc": timing_rc}
steps = []
try:
    for line in open(os.path.join(out, "packed_1b.jsonl")):
        r = json.loads(line)
        if "loss" in r and "step_time_s" in r:
            steps.append(r)
except OSError:
    pass
packed = {"rc": packed_rc, "steps": len(steps)}
if steps:
    packed["losses"] = [round(r["loss"], 4) for r in steps]
    packed["losses_finite"] = all(math.isfinite(r["loss"]) for r in steps)
    later = [r["step_time_s"] for r in steps[2:]] or [r["step_time_s"] for r in steps]
    packed["median_step_time_s"] = sorted(later)[len(later) // 2]
summary["packed_1b_trainer"] = packed
print(json.dumps(summary, indent=1))
PY
