"""The dstrain-against-FSDP2 tables of docs/performance.md, from device calls' outputs.

Reads OUT/bench.jsonl, OUT/bench8b.jsonl and OUT/bench8b1.jsonl (tests/gpu/gpu_checks.sh
PARTS="bench bench8b bench8b1"),
OUT/kbench.jsonl (PARTS=kbench) and OUT/gpus.csv of each OUT given (one call, or the calls of one
comparison split by the 10-minute limit), and prints Markdown: per shape and number of GPUs,
dstrain's tokens/s per GPU, MFU, exposed communication, peak memory and allocator churn, each
peer's (FSDP2 eager, FSDP2 + torch.compile) figures and the ratios; the per-GPU scaling from one
GPU to two; issue 10's goals, each with the figure that meets it or not; each CUDA kernel against
the ATen path it replaces. Lines for runs that did not happen are left out.
Run: python3 tests/bench/perf_table.py OUT [OUT ...] [--date DATE]
"""
import argparse
import csv
import json
import os


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.startswith("{")]


def hardware(outs):
    for out in outs:
        path = os.path.join(out, "gpus.csv")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            rows = list(csv.reader(f))[1:]
        if rows:
            return f"{len(rows)} x {rows[0][0].strip()}"
    return "?"


def runs(outs):
    by_key = {}  # (shape, world, activation checkpointing) -> {peer: row}
    for out in outs:
        for shape, name in (("1B", "bench.jsonl"), ("8B", "bench8b.jsonl"),
                            ("8B layers cut", "bench8b1.jsonl")):
            for row in read_jsonl(os.path.join(out, name)):
                by_key.setdefault((shape, row["world"], row.get("ac", "none")), {})[row["peer"]] = row
    return by_key


def tps(row):
    return row["tokens_per_s_per_gpu"]


def throughput_table(by_key):
    lines = ["| shape | GPUs | activation ckpt | dstrain tok/s/GPU | MFU | exposed comm | peak GiB "
             "| cudaMalloc + cudaFree in measured steps | FSDP2 eager (peak GiB) | ratio "
             "| FSDP2 + compile (peak GiB; Dynamo graphs) | ratio |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (shape, world, ac), peers in sorted(by_key.items()):
        ours = peers.get("dstrain")
        if ours is None:
            continue
        cells = [shape, str(world), ac, f"{tps(ours):,.0f}", f"{100 * ours['mfu']:.1f}%",
                 f"{100 * ours.get('comm_exposed_share', 0):.1f}%", f"{ours['peak_mem_gib']:.1f}",
                 str(ours.get("driver_calls_measured", "?"))]
        for peer in ("fsdp2", "fsdp2+compile"):
            theirs = peers.get(peer)
            if theirs is None:
                cells += ["not run", ""]
                continue
            note = f"{theirs['peak_mem_gib']:.1f}" if "peak_mem_gib" in theirs else "?"
            if peer == "fsdp2+compile" and "dynamo_unique_graphs" in theirs:
                note += f"; {theirs['dynamo_unique_graphs']} graphs"
            cells += [f"{tps(theirs):,.0f} ({note})", f"{tps(ours) / tps(theirs):.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def scaling(by_key):
    one = by_key.get(("1B", 1, "none"), {})
    two = by_key.get(("1B", 2, "none"), {})
    return {peer: tps(two[peer]) / tps(one[peer]) for peer in one if peer in two}


def goals(by_key):
    """Issue 10's goals, each as a line: the figure and whether it meets the goal."""
    lines = []
    for (shape, world, ac), peers in sorted(by_key.items()):
        ours = peers.get("dstrain") if shape in ("1B", "8B") else None  # the shapes only
        for peer, goal in (("fsdp2", 1.15), ("fsdp2+compile", 1.0)):
            if ours and peer in peers:
                r = tps(ours) / tps(peers[peer])
                lines.append(f"- {shape} on {world} GPU(s), activation ckpt {ac}: {r:.2f}x {peer} "
                             f"(goal >= {goal}x): {'met' if r >= goal else 'NOT met'}")
    best_8b = max((p["dstrain"]["mfu"] for (s, w, _), p in by_key.items()
                   if s == "8B" and w == 2 and "dstrain" in p), default=None)
    if best_8b is not None:
        lines.append(f"- MFU at 8B on 2 GPUs: {100 * best_8b:.1f}% (goal >= 50%): "
                     f"{'met' if best_8b >= 0.5 else 'NOT met'}")
    s = scaling(by_key).get("dstrain")
    if s is not None:
        lines.append(f"- per-GPU throughput of 1B on 2 GPUs against 1: {s:.2f}x (goal >= 0.95x): "
                     f"{'met' if s >= 0.95 else 'NOT met'}")
    return lines


def kernel_table(outs):
    rows = [r for out in outs for r in read_jsonl(os.path.join(out, "kbench.jsonl")) if "kernel" in r]
    if not rows:
        return []
    lines = ["| kernel | dstrain ms | ATen ms | speed-up | dstrain GB/s |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['kernel']} | {r['dstrain_ms']:.3f} | {r['aten_ms']:.3f} | "
                     f"{r['speedup']:.2f}x | {r['dstrain_gb_per_s']:,.0f} |")
    return lines


def report(outs, date):
    by_key = runs(outs)
    lines = [f"Hardware: {hardware(outs)}, {date}. Tokens/s per GPU; "
             "MFU = tokens/s x (6N + 12 L H T) / 989e12.", ""]
    lines += throughput_table(by_key)
    ratios = scaling(by_key)
    if ratios:
        lines += ["", "Per-GPU scaling of the 1B shape from one GPU to two: " +
                  ", ".join(f"{peer} {r:.2f}x" for peer, r in sorted(ratios.items())) + "."]
    g = goals(by_key)
    if g:
        lines += ["", "Issue 10's goals:"] + g
    k = kernel_table(outs)
    if k:
        lines += ["", "Kernels (`dstrain bench kernels`, best of the iterations, CUDA events):", ""] + k
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outs", nargs="+")
    ap.add_argument("--date", default="date not given")
    args = ap.parse_args()
    print(report(args.outs, args.date))
