"""PyTorch FSDP2 (fully_shard) peer of dstrain's GPU benchmark: the same Llama shape, batch,
sequence length, bf16 compute with fp32 reduction, activation checkpointing off or on every decoder
layer (--ac full, as dstrain's train.activation_checkpointing = "full"), fused AdamW.
Run: torchrun --nproc_per_node N tests/bench/fsdp2_llama.py [--compile [--compile-scope layers|model]]
     [--ac full] [--steps 12] [--layers L] (the shape cut to L decoder layers)
--compile compiles each decoder layer before sharding it (as torchtitan applies torch.compile with
FSDP2: one graph per layer, reused by every layer, the collectives left to FSDP2's hooks);
--compile-scope model compiles the whole sharded model instead.
Prints one JSON line: tokens/s per GPU (median of the steps after the warm-up), peak memory, the
first step's time (compilation included) and Dynamo's graph and graph-break counts."""
import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--micro", type=int, default=1)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--compile-scope", default="layers", choices=["layers", "model"])
    ap.add_argument("--shape", default="1b", choices=["1b", "8b"])
    ap.add_argument("--ac", default="none", choices=["none", "full"])
    ap.add_argument("--layers", type=int, default=0, help="decoder layers (0: the shape's own)")
    args = ap.parse_args()
    # Per-layer compilation reuses one graph when the guards allow, else one per layer: let every
    # layer of the 8B shape have its own before Dynamo falls back to eager.
    torch._dynamo.config.recompile_limit = 64

    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", rank))
    torch.cuda.set_device(local)
    if args.shape == "1b":
        cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                          num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                          max_position_embeddings=args.seq, tie_word_embeddings=False)
    else:
        cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                          num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                          max_position_embeddings=args.seq, rope_theta=500000.0,
                          tie_word_embeddings=False)
    if args.layers > 0:
        cfg.num_hidden_layers = args.layers
    cfg._attn_implementation = "sdpa"
    cfg.use_cache = False  # training: no key/value cache filled at every step
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    if args.ac == "full":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    per_layer = args.compile and args.compile_scope == "layers"
    for i, layer in enumerate(model.model.layers):
        if per_layer:
            layer = torch.compile(layer)
            model.model.layers.register_module(str(i), layer)
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    if args.compile and not per_layer:
        model = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    n_params = sum(p.numel() for p in model.parameters())  # DTensor numel is the global size
    gen = torch.Generator(device="cuda").manual_seed(rank)
    times = []
    for step in range(args.steps):
        ids = torch.randint(0, cfg.vocab_size, (args.micro, args.seq), device="cuda", generator=gen)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    tok_per_gpu = args.micro * args.seq / statistics.median(times[args.warmup:])
    flops_per_token = 6 * n_params + 12 * cfg.num_hidden_layers * cfg.hidden_size * args.seq
    stats = torch._dynamo.utils.counters["stats"]
    out = {"peer": "fsdp2" + ("+compile" if args.compile else ""), "world": world,
           "shape": args.shape, "ac": args.ac, "params": n_params, "tokens_per_s_per_gpu": tok_per_gpu,
           "compile_scope": args.compile_scope if args.compile else None,
           "first_step_s": times[0], "dynamo_unique_graphs": stats["unique_graphs"],
           "dynamo_graph_breaks": sum(torch._dynamo.utils.counters["graph_break"].values()),
           "mfu": tok_per_gpu * flops_per_token / 989e12,
           "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}
    if rank == 0:
        print(json.dumps(out))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
