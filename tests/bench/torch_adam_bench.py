"""PyTorch peer of `dstrain bench adam`: torch.optim.AdamW on CPU tensors over one flat fp32
parameter of the same size, with the same thread count, hyperparameters and timing (one warm-up
step, then the best of --iters steps). Variants: torch's default (on CPU tensors that is the
per-parameter for-loop implementation; foreach is chosen by default only for CUDA tensors),
foreach=True, and fused=True (the at::_fused_adamw_ kernel dstrain matches bit for bit).
Run: python tests/bench/torch_adam_bench.py [--params N] [--threads N] [--iters N]
Prints a table, then one JSON line."""
import argparse
import json
import os
import time

import torch


def time_variant(n, iters, **kwargs):
    x = (torch.arange(n, dtype=torch.int64) * 2654435761 % 2001).to(torch.float32) / 1000 - 1
    param = torch.nn.Parameter(0.02 * x)
    param.grad = 1e-3 * x
    del x
    opt = torch.optim.AdamW([param], lr=1e-4, weight_decay=0.01, **kwargs)
    opt.step()  # warm-up: creates exp_avg and exp_avg_sq
    best = float("inf")
    total = 0.0
    for _ in range(iters):
        t0 = time.perf_counter()
        opt.step()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        total += dt
    return best, total / iters


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", type=int, default=64_000_000)
    ap.add_argument("--threads", type=int, default=0, help="0: every hardware thread")
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args()
    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)

    variants = [("default", {}), ("foreach", {"foreach": True}), ("fused", {"fused": True})]
    results = []
    print("%-10s %10s %12s %10s" % ("variant", "time_ms", "Mparams/s", "GB/s@28B"), flush=True)
    for name, kwargs in variants:
        best, mean = time_variant(args.params, args.iters, **kwargs)
        pps = args.params / best
        print("%-10s %10.3f %12.1f %10.2f" % (name, best * 1e3, pps / 1e6, 28 * pps / 1e9), flush=True)
        results.append({"variant": name, "time_s": best, "mean_time_s": mean, "params_per_s": pps,
                        "gbps": 28 * pps / 1e9})
    print(json.dumps({"bench": "torch_adam", "params": args.params, "threads": threads,
                      "iters": args.iters, "torch": torch.__version__, "results": results}))


if __name__ == "__main__":
    main()
