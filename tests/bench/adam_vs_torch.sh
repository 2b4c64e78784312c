#!/usr/bin/env bash
# dstrain's CPU AdamW (`dstrain bench adam`) against torch.optim.AdamW on the CPU, default and
# fused=True (tests/bench/torch_adam_bench.py), same parameter count, threads and iterations.
#
#   tests/bench/adam_vs_torch.sh BUILD_DIR [PARAMS] [THREADS] [ITERS]
#
# THREADS 0 (the default) is every hardware thread. Prints both tools' tables, then one JSON line
# with the ratios (goals of issue 6: >= 3x torch's default, >= 1x fused, >= 70% of the memory
# bandwidth bound at 28 bytes per parameter).
set -euo pipefail

build=$(realpath "${1:?usage: $0 BUILD_DIR [PARAMS] [THREADS] [ITERS]}")
params=${2:-64000000}
threads=${3:-0}
iters=${4:-10}
dstrain="$build/dstrain"
[[ -x "$dstrain" ]] || dstrain="$build/launch/dstrain"
python=${DSTRAIN_PYTHON:-$HOME/.cache/dstrain/venv/bin/python}
here=$(dirname "$(realpath "$0")")

ours=$("$dstrain" bench adam --params "$params" --threads "$threads" --iters "$iters")
echo "$ours" | sed '$d'
theirs=$("$python" "$here/torch_adam_bench.py" --params "$params" --threads "$threads" --iters "$iters")
echo "$theirs" | sed '$d'

"$python" - "$(echo "$ours" | tail -n 1)" "$(echo "$theirs" | tail -n 1)" <<'PY'
import json, sys
ours, theirs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
torch_pps = {r["variant"]: r["params_per_s"] for r in theirs["results"]}
print(json.dumps({
    "bench": "adam_vs_torch", "params": ours["params"], "threads": ours["threads"],
    "isa": ours["isa"], "torch": theirs["torch"],
    "dstrain_params_per_s": ours["params_per_s"],
    "torch_params_per_s": torch_pps,
    "speedup_vs_default": ours["params_per_s"] / torch_pps["default"],
    "speedup_vs_foreach": ours["params_per_s"] / torch_pps["foreach"],
    "speedup_vs_fused": ours["params_per_s"] / torch_pps["fused"],
    "fraction_of_bound": ours["fraction_of_bound"],
    "fraction_of_bound_bf16": ours["fraction_of_bound_bf16"],
    "bound_gbps": ours["bound_gbps"],
}))
PY
