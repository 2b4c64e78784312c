#!/usr/bin/env bash
# The C++ sources against .clang-format (STYLE.md): lists every file clang-format would change
# and fails if there is one; `make format` rewrites them. Exit 77 (ctest: skipped) without
# clang-format, which launch/setup_env.sh installs.
#   tests/format_check.sh SOURCE_DIR
set -euo pipefail
cd "${1:?usage: $0 SOURCE_DIR}"
command -v clang-format > /dev/null || { echo "clang-format is not installed" >&2; exit 77; }
mapfile -t files < <(find base cmake launch offload runtime sharding tests \
  -path tests/fuzz/corpus -prune -o \( -name '*.cc' -o -name '*.h' -o -name '*.cu' -o -name '*.inc' \) -print | sort)
bad=()
for f in "${files[@]}"; do
  clang-format --dry-run -Werror "$f" > /dev/null 2>&1 || bad+=("$f")
done
if ((${#bad[@]})); then
  printf 'not formatted as .clang-format says (run `make format`):\n' >&2
  printf '  %s\n' "${bad[@]}" >&2
  exit 1
fi
echo "${#files[@]} files formatted"
