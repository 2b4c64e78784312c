"""torch.distributed (NCCL) peer of `dstrain bench comm`: all_reduce, all_gather_into_tensor and
reduce_scatter_tensor of fp32 buffers at the same sizes, timed the same way (warm-up, barrier,
back-to-back operations, device synchronisation, slowest rank), with nccl-tests' bus bandwidth.
Run: torchrun --nproc_per_node N tests/bench/torch_comm_bench.py [--sizes-mib 1 4 ...] [--iters 10]
Rank 0 prints a table, then one JSON line shaped like dstrain's."""
import argparse
import json
import os
import time

import torch
import torch.distributed as dist


def time_op(issue, warmup, iters, device):
    for _ in range(warmup):
        issue()
    torch.cuda.synchronize(device)
    dist.barrier(device_ids=[device.index])
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        issue()
    torch.cuda.synchronize(device)
    seconds = torch.tensor([(time.perf_counter() - t0) / iters], dtype=torch.float64, device=device)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    return seconds.item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes-mib", type=int, nargs="+", default=[1, 4, 16, 64, 256, 1024])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()

    local = int(os.environ.get("LOCAL_RANK", 0))
    torch.cuda.set_device(local)
    device = torch.device("cuda", local)
    dist.init_process_group("nccl", device_id=device)
    rank, n = dist.get_rank(), dist.get_world_size()

    results = []
    if rank == 0:
        print("%-15s %10s %12s %12s" % ("collective", "MiB", "time_ms", "busbw_GB/s"), flush=True)
    for mib in args.sizes_mib:
        numel = (mib << 20) // 4 // n * n  # fp32, divisible into shards
        full = torch.ones(numel, dtype=torch.float32, device=device)
        shard = torch.ones(numel // n, dtype=torch.float32, device=device)
        nbytes = numel * 4
        cases = [
            ("all_reduce", 2.0 * (n - 1) / n, lambda: dist.all_reduce(full, op=dist.ReduceOp.SUM)),
            ("all_gather", 1.0 * (n - 1) / n, lambda: dist.all_gather_into_tensor(full, shard)),
            ("reduce_scatter", 1.0 * (n - 1) / n,
             lambda: dist.reduce_scatter_tensor(shard, full, op=dist.ReduceOp.SUM)),
        ]
        for name, factor, issue in cases:
            seconds = time_op(issue, args.warmup, args.iters, device)
            busbw = nbytes * factor / seconds / 1e9
            if rank == 0:
                print("%-15s %10d %12.3f %12.3f" % (name, mib, seconds * 1e3, busbw), flush=True)
            results.append({"op": name, "mib": mib, "bytes": float(nbytes), "time_s": seconds,
                            "busbw_gbps": busbw})
        del full, shard
    if rank == 0:
        print(json.dumps({"bench": "comm", "backend": "torch-nccl", "device": str(device),
                          "dtype": "fp32", "world_size": n, "iters": args.iters,
                          "torch": torch.__version__, "results": results}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
