"""The dstrain-against-FSDP2 table of docs/performance.md, from one device call's outputs.

Reads OUT/bench.jsonl and OUT/bench8b.jsonl (tests/gpu/gpu_checks.sh PARTS="bench bench8b") and
OUT/gpus.csv, and prints the Markdown table: per shape and number of GPUs, dstrain's tokens/s per
GPU, MFU and peak memory, each peer's (FSDP2 eager, FSDP2 + torch.compile) and the ratios, plus
the per-GPU scaling from one GPU to two. Lines for runs that did not happen are left out.
Run: python3 tests/bench/perf_table.py OUT [DATE]
"""
import csv
import json
import os
import sys


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    return [json.loads(line) for line in open(path) if line.startswith("{")]


def hardware(out):
    path = os.path.join(out, "gpus.csv")
    if not os.path.exists(path):
        return "?"
    rows = list(csv.reader(open(path)))[1:]
    return f"{len(rows)} x {rows[0][0].strip()}" if rows else "?"


def table(out, date):
    by_key = {}  # (shape, world, activation checkpointing) -> {peer: row}
    for shape, name in (("1B", "bench.jsonl"), ("8B", "bench8b.jsonl")):
        for row in read_jsonl(os.path.join(out, name)):
            by_key.setdefault((shape, row["world"], row.get("ac", "none")), {})[row["peer"]] = row
    lines = [f"Hardware: {hardware(out)}, {date}. Tokens/s per GPU; MFU = tokens/s x (6N + 12 L H T) / 989e12.",
             "",
             "| shape | GPUs | activation ckpt | dstrain tok/s/GPU | MFU | peak GiB | FSDP2 eager | ratio | FSDP2 compile | ratio |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (shape, world, ac), peers in sorted(by_key.items()):
        ours = peers.get("dstrain")
        if ours is None:
            continue
        cells = [shape, str(world), ac, f"{ours['tokens_per_s_per_gpu']:,.0f}", f"{100 * ours['mfu']:.1f}%",
                 f"{ours['peak_mem_gib']:.1f}"]
        for peer in ("fsdp2", "fsdp2+compile"):
            theirs = peers.get(peer)
            if theirs is None:
                cells += ["not run", ""]
            else:
                ratio = ours["tokens_per_s_per_gpu"] / theirs["tokens_per_s_per_gpu"]
                cells += [f"{theirs['tokens_per_s_per_gpu']:,.0f}", f"{ratio:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    one, two = by_key.get(("1B", 1, "none"), {}).get("dstrain"), by_key.get(("1B", 2, "none"), {}).get("dstrain")
    if one and two:
        lines += ["", f"Per-GPU scaling of the 1B shape from one GPU to two: "
                      f"{two['tokens_per_s_per_gpu'] / one['tokens_per_s_per_gpu']:.2f}x."]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(table(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "date not given"))
