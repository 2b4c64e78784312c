"""Where a profiled step's GPU time goes, from a dstrain Chrome trace (run.profile_start /
run.profile_steps): GPU kernel time by kind and the top kernels, and the share of the profiled
window during which the compute stream had no kernel running.
Run: python3 tests/bench/profile_summary.py RUN_DIR/profile/rank0.json  -> one JSON line."""
import collections
import json
import sys

KINDS = [  # first match wins; lower-case substrings of kernel names
    ("nccl", ("nccl",)),
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("gemm", ("gemm", "xmma", "cutlass", "cublas", "sm90_", "sm80_", "nvjet")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("norm", ("rms", "norm")),
    ("dstrain_fused", ("rope_kernel", "swiglu")),
    ("copy_cast", ("copy", "cast", "convert")),
    ("reduce", ("reduce", "softmax", "logsumexp")),
]


def kind_of(name):
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "elementwise_other"


def main(path):
    trace = json.load(open(path))
    kernels = [e for e in trace["traceEvents"]
               if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    if not kernels:
        print(json.dumps({"trace": path, "error": "no GPU events"}))
        return
    begin = min(e["ts"] for e in kernels)
    end = max(e["ts"] + e["dur"] for e in kernels)
    by_kind = collections.Counter()
    by_name = collections.Counter()
    count = collections.Counter()
    busy = []  # intervals on non-NCCL streams, merged below
    for e in kernels:
        name = e.get("name", "?")
        kind = kind_of(name) if e["cat"] == "kernel" else e["cat"]
        by_kind[kind] += e["dur"]
        by_name[name[:90]] += e["dur"]
        count[name[:90]] += 1
        if kind != "nccl":
            busy.append((e["ts"], e["ts"] + e["dur"]))
    busy.sort()
    covered, cur_b, cur_e = 0.0, None, None
    for b, e in busy:
        if cur_e is None or b > cur_e:
            if cur_e is not None:
                covered += cur_e - cur_b
            cur_b, cur_e = b, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        covered += cur_e - cur_b
    window = end - begin
    total = sum(by_kind.values())
    print(json.dumps({
        "trace": path,
        "window_ms": window / 1e3,
        "compute_idle_share": 1 - covered / window,
        "kernel_ms_by_kind": {k: round(v / 1e3, 2) for k, v in by_kind.most_common()},
        "kernel_share_by_kind": {k: round(v / total, 4) for k, v in by_kind.most_common()},
        "top_kernels": [{"name": n, "ms": round(v / 1e3, 2), "calls": count[n]}
                        for n, v in by_name.most_common(15)],
    }))


if __name__ == "__main__":
    main(sys.argv[1])
