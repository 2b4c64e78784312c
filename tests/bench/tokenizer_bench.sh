#!/usr/bin/env bash
# `dstrain prepare` against Hugging Face `tokenizers` (encode_batch), same corpus, same threads,
# same tokenizer: a 32k byte-level BPE with the Llama 3 split pattern trained by `tokenizers` on
# the corpus, which is the Python sources and docs of the venv (prose and code, some other scripts
# mixed in) cut into 1 MiB files.
#
#   tests/bench/tokenizer_bench.sh BUILD_DIR [CORPUS_MB] [THREADS]
#
# THREADS 0 (the default) is every hardware thread. `tokenizers` is timed on encode_batch alone
# (texts already in memory, cut into ~4 KB pieces at line breaks that no pre-token crosses, its
# fastest input shape); dstrain on the whole `dstrain prepare` run (reading, tokenizer loading,
# writing the .dstok). Checks that both give the same ids, then prints one JSON line with
# MB/s per core and the ratio (issue 8's goal: >= 1.0).
set -euo pipefail

build=$(realpath "${1:?usage: $0 BUILD_DIR [CORPUS_MB] [THREADS]}")
mb=${2:-100}
threads=${3:-0}
[[ "$threads" -gt 0 ]] || threads=$(nproc)
dstrain="$build/dstrain"
[[ -x "$dstrain" ]] || dstrain="$build/launch/dstrain"
python=${DSTRAIN_PYTHON:-$HOME/.cache/dstrain/venv/bin/python}
here=$(dirname "$(realpath "$0")")
work=$(mktemp -d "${TMPDIR:-/tmp}/dstrain-tokbench-XXXXXX")
trap 'rm -rf "$work"' EXIT

"$python" "$here/tokenizer_bench.py" setup "$work" "$mb"
theirs=$("$python" "$here/tokenizer_bench.py" hf "$work" "$threads")
start=$(date +%s.%N)
if ! "$dstrain" prepare --input "$work"/corpus/*.txt --output "$work/out.dstok" \
    --tokenizer "$work/tok" --workers "$threads" >"$work/prepare.log" 2>&1; then
  cat "$work/prepare.log" >&2
  exit 1
fi
end=$(date +%s.%N)
check=$("$python" "$here/tokenizer_bench.py" check "$work" "$work/out.dstok")

"$python" - "$theirs" "$check" "$start" "$end" "$threads" <<'PY'
import json, sys
theirs, check = json.loads(sys.argv[1]), json.loads(sys.argv[2])
secs, threads = float(sys.argv[4]) - float(sys.argv[3]), int(sys.argv[5])
mb = theirs["bytes"] / 1e6
ours_pc = mb / secs / threads
theirs_pc = mb / theirs["seconds"] / threads
print(json.dumps({
    "bench": "tokenizer_vs_hf", "corpus_mb": round(mb, 1), "threads": threads,
    "ids_equal": check["equal"], "tokens": check["tokens"],
    "dstrain_seconds": round(secs, 3), "hf_encode_batch_seconds": round(theirs["seconds"], 3),
    "dstrain_mb_s_per_core": round(ours_pc, 2), "hf_mb_s_per_core": round(theirs_pc, 2),
    "ratio": round(ours_pc / theirs_pc, 3)}))
PY
