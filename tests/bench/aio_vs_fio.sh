#!/usr/bin/env bash
# `dstrain bench aio` against fio on the same file, with the same block sizes, queue depths,
# O_DIRECT and number of sweeps; prints one JSON object with both sides and their ratios.
#
#   [BLOCK_KIB="128 1024 4096"] [QUEUE_DEPTHS="1 8 32"] [FIO_ENGINE=io_uring|libaio] \
#   [REPEAT=3] tests/bench/aio_vs_fio.sh BUILD_DIR [FILE] [FILE_MIB] [ITERS]
#
# Each block size and queue depth is measured REPEAT times by both tools, alternating which goes
# first, each time on a freshly allocated file at FILE (dstrain lays it out with fallocate, fio
# with --fallocate=native), so neither side inherits the other's extents and slow drift of the
# disk hits both alike. Both write the file ITERS times (fdatasync at the end: dstrain after each
# sweep, fio --end_fsync) and then read it ITERS times. Figures are the medians over the repeats;
# ratio = dstrain GB/s / fio GB/s. Virtual disks shared with other work vary by 2x from one run
# to the next: use REPEAT >= 3 before reading anything into a ratio.
set -euo pipefail

build=$(realpath "${1:?usage: $0 BUILD_DIR [FILE] [FILE_MIB] [ITERS]}")
file=${2:-/tmp/dstrain-aio-vs-fio.dat}
file_mib=${3:-1024}
iters=${4:-1}
blocks=${BLOCK_KIB:-128 1024 4096}
depths=${QUEUE_DEPTHS:-1 8 32}
engine=${FIO_ENGINE:-io_uring}
repeat=${REPEAT:-3}
dstrain="$build/dstrain"
[[ -x "$dstrain" ]] || dstrain="$build/launch/dstrain"
command -v fio > /dev/null || { echo "fio is not installed" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"; rm -f "$file"' EXIT

run_dstrain() {  # block_kib queue_depth repeat
  rm -f "$file"
  "$dstrain" bench aio --file "$file" --file-mib "$file_mib" --block-kib "$1" \
    --queue-depth "$2" --iters "$iters" | tail -n 1 > "$work/dstrain_$1_$2_$3.json"
}
run_fio() {  # block_kib queue_depth repeat
  rm -f "$file"
  for rw in write read; do
    fio --name="aio_${rw}" --filename="$file" --size="${file_mib}M" --bs="$1k" \
      --iodepth="$2" --rw="$rw" --direct=1 --ioengine="$engine" --loops="$iters" \
      --end_fsync=1 --fallocate=native --output-format=json > "$work/fio_$1_$2_$3_${rw}.json"
  done
  rm -f "$file"
}

for bs in $blocks; do
  for qd in $depths; do
    for ((r = 0; r < repeat; ++r)); do
      if ((r % 2 == 0)); then
        run_dstrain "$bs" "$qd" "$r"
        run_fio "$bs" "$qd" "$r"
      else
        run_fio "$bs" "$qd" "$r"
        run_dstrain "$bs" "$qd" "$r"
      fi
    done
  done
done

python3 - "$work" "$engine" "$file" "$file_mib" "$iters" "$repeat" "$blocks" "$depths" <<'PY'
import json, math, statistics, sys
work, engine, path, file_mib, iters, repeat, blocks, depths = sys.argv[1:]
rows = []
for bs in map(int, blocks.split()):
    for qd in map(int, depths.split()):
        row = {"block_kib": bs, "queue_depth": qd}
        for rw in ("write", "read"):
            ours = [json.load(open(f"{work}/dstrain_{bs}_{qd}_{r}.json"))["results"][0][f"{rw}_gbps"]
                    for r in range(int(repeat))]
            fio = [json.load(open(f"{work}/fio_{bs}_{qd}_{r}_{rw}.json"))["jobs"][0][rw]["bw_bytes"] / 1e9
                   for r in range(int(repeat))]
            row[f"dstrain_{rw}_gbps"] = statistics.median(ours)
            row[f"fio_{rw}_gbps"] = statistics.median(fio)
            row[f"{rw}_ratio"] = row[f"dstrain_{rw}_gbps"] / row[f"fio_{rw}_gbps"]
            row[f"dstrain_{rw}_runs"] = ours
            row[f"fio_{rw}_runs"] = fio
        rows.append(row)
ratios = [r[k] for r in rows for k in ("write_ratio", "read_ratio")]
print(json.dumps({
    "bench": "aio_vs_fio", "fio_ioengine": engine, "file": path, "file_mib": int(file_mib),
    "iters": int(iters), "repeat": int(repeat), "results": rows,
    "min_ratio": min(ratios), "geomean_ratio": math.prod(ratios) ** (1 / len(ratios)),
}))
PY
