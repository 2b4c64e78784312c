#!/usr/bin/env bash
# Builds the libFuzzer targets with clang in BUILD_DIR and runs each one for SECONDS on a scratch
# copy of its seed corpus (the committed corpus is not modified). Fails when a target crashes,
# leaks or trips a sanitizer; exits 77 (ctest: skipped) when clang is not installed.
# Usage: tests/fuzz/run_fuzzers.sh BUILD_DIR [SECONDS]
set -euo pipefail

build_dir=${1:?usage: run_fuzzers.sh BUILD_DIR [SECONDS]}
seconds=${2:-20}
here=$(cd "$(dirname "$0")" && pwd)
targets=(config_fuzz safetensors_fuzz hf_index_fuzz token_file_fuzz checkpoint_index_fuzz)

if ! command -v clang++ >/dev/null || ! command -v clang >/dev/null; then
  echo "run_fuzzers.sh: clang not found, skipping (launch/setup_env.sh installs it)"
  exit 77
fi
# clang without its sanitizer runtimes (libclang-rt-*-dev, a Recommends) cannot link a fuzzer.
probe='extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }'
if ! echo "$probe" | clang++ -x c++ -fsanitize=fuzzer,address,undefined - -o /dev/null 2>/dev/null; then
  echo "run_fuzzers.sh: clang cannot link -fsanitize=fuzzer (install libclang-rt-dev), skipping"
  exit 77
fi
mkdir -p "$build_dir" && build_dir=$(cd "$build_dir" && pwd)

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
CC=clang CXX=clang++ cmake -S "$here" -B "$build_dir" "${generator[@]}" >/dev/null
cmake --build "$build_dir" -j "$(nproc)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# All targets at once: the budget is wall-clock time, and each fuzzer is single-threaded.
pids=()
for t in "${targets[@]}"; do
  mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
  cp "$here/corpus/$t/"* "$work/$t/corpus/"
  (cd "$work/$t" && TMPDIR="$work/$t" "$build_dir/$t" -max_total_time="$seconds" \
     -rss_limit_mb=2048 -timeout=10 -artifact_prefix="$work/$t/artifacts/" corpus \
     >"$work/$t/log" 2>&1) &
  pids+=($!)
done

failed=0
for i in "${!targets[@]}"; do
  t=${targets[$i]}
  if wait "${pids[$i]}"; then
    echo "$t: ok, $(grep -o 'Done [0-9]* runs' "$work/$t/log" || echo 'run count unknown')"
  else
    failed=1
    echo "$t: FAILED; log tail and reproducer:"
    tail -n 40 "$work/$t/log"
    for a in "$work/$t/artifacts/"*; do
      [ -e "$a" ] && { echo "--- $a (base64)"; base64 "$a" | head -c 4000; echo; }
    done
  fi
done
exit "$failed"
