"""GPU time by the operator that launched it, from a dstrain Chrome trace (run.profile_start /
run.profile_steps): each kernel or device copy is charged to the innermost CPU operator
(aten::..., or an autograd node) that enclosed its launch, via Kineto's "External id".
Run: python3 tests/bench/profile_ops.py RUN_DIR/profile/rank0.json [TOP]  -> one JSON line."""
import collections
import json
import sys


def main(path, top):
    events = json.load(open(path))["traceEvents"]
    ops = {}  # External id -> name of the CPU operator
    for e in events:
        if e.get("ph") == "X" and e.get("cat") == "cpu_op":
            ext = e.get("args", {}).get("External id")
            if ext is not None:
                ops[ext] = e["name"]
    by_op = collections.Counter()
    calls = collections.Counter()
    kernels = collections.defaultdict(collections.Counter)
    total = 0.0
    for e in events:
        if e.get("ph") != "X" or e.get("cat") not in ("kernel", "gpu_memcpy", "gpu_memset"):
            continue
        op = ops.get(e.get("args", {}).get("External id"), "(no operator)")
        by_op[op] += e["dur"]
        calls[op] += 1
        kernels[op][e["name"][:60]] += e["dur"]
        total += e["dur"]
    rows = [{"op": op, "ms": round(us / 1e3, 2), "share": round(us / total, 4), "calls": calls[op],
             "kernel": kernels[op].most_common(1)[0][0]}
            for op, us in by_op.most_common(top)]
    print(json.dumps({"trace": path, "gpu_ms": round(total / 1e3, 2), "by_op": rows}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 30)
