"""Hugging Face transformers + PEFT peer of dstrain's LoRA benchmark on one GPU: a Llama shape
with random bf16 weights made in-process, LoRA with the same rank, alpha and targets, fused AdamW
on the adapters, the same batch and sequence length, gradient checkpointing on or off as dstrain's
train.activation_checkpointing (full <-> on).
Run: python tests/bench/peft_lora.py --shape 1b [--steps 12] [--grad-ckpt]
Prints one JSON line: tokens/s (median of the steps after the warm-up), peak memory, trainable
parameters."""
import argparse
import json
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

TARGETS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj",
           "up": "up_proj", "down": "down_proj"}


def shape(name, seq):
    if name == "1b":
        return LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                           num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                           max_position_embeddings=seq, tie_word_embeddings=False)
    return LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                       max_position_embeddings=seq, rope_theta=500000.0, tie_word_embeddings=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="1b", choices=["1b", "8b"])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--micro", type=int, default=1)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--targets", default="q,k,v,o,gate,up,down")
    ap.add_argument("--grad-ckpt", action="store_true")
    args = ap.parse_args()

    cfg = shape(args.shape, args.seq)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    if args.grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0,
                      target_modules=[TARGETS[t] for t in args.targets.split(",")])
    model = get_peft_model(model, lora)
    # Adapters in fp32 (PEFT's default autocast_adapter_dtype), base in bf16: like dstrain.
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4, fused=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    times = []
    torch.cuda.reset_peak_memory_stats()
    for step in range(args.steps):
        ids = torch.randint(0, cfg.vocab_size, (args.micro, args.seq), device="cuda", generator=gen)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    tps = args.micro * args.seq / statistics.median(times[args.warmup:])
    print(json.dumps({"peer": "peft", "shape": args.shape, "seq": args.seq, "micro": args.micro,
                      "rank": args.rank, "grad_ckpt": args.grad_ckpt, "tokens_per_s": tps,
                      "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
                      "trainable": sum(p.numel() for p in trainable),
                      "final_loss": loss.item()}))


if __name__ == "__main__":
    main()
