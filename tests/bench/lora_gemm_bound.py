"""The fastest a LoRA step on a frozen Llama base can be on this GPU: the time of the base's own
matrix products and attention alone, each measured with cuBLAS / flash attention through PyTorch
at the step's exact shapes, everything else (adapters, norms, RoPE, SwiGLU, the loss, the
optimizer) taken as free. A frozen weight needs no weight gradient, so a step computes, per
decoder layer, the forward products once, again for the recomputation under full activation
checkpointing, and once more for the input gradient (X W^T shapes throughout); the LM head
twice (forward and input gradient); attention forward (twice with recomputation) and backward.
Run: python tests/bench/lora_gemm_bound.py --shape 8b --seq 2048
Prints one JSON line: the bound's step time and tokens/s with and without recomputation, and the
dense bf16 TFLOP/s the products reached."""
import argparse
import json

import torch
import torch.nn.functional as F

SHAPES = {  # hidden, ffn, layers, heads, kv heads, vocab
    "1b": (2048, 5632, 22, 32, 4, 32000),
    "8b": (4096, 14336, 32, 32, 8, 128256),
}


def time_ms(fn, reps=20):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="8b", choices=sorted(SHAPES))
    ap.add_argument("--seq", type=int, default=2048)
    args = ap.parse_args()
    hidden, ffn, layers, heads, kv_heads, vocab = SHAPES[args.shape]
    head_dim = hidden // heads
    t = args.seq
    bf16 = dict(dtype=torch.bfloat16, device="cuda")
    # The base's products of one layer, as the fused projections dstrain runs (q/k/v as one,
    # gate/up as one): (input features, output features).
    products = [(hidden, hidden + 2 * kv_heads * head_dim), (hidden, hidden), (hidden, 2 * ffn),
                (ffn, hidden)]
    layer_fwd_ms, layer_dx_ms, flops = 0.0, 0.0, 0
    for k, n in products:
        x = torch.randn(t, k, **bf16)
        w = torch.randn(n, k, **bf16)
        dy = torch.randn(t, n, **bf16)
        layer_fwd_ms += time_ms(lambda: x @ w.t())
        layer_dx_ms += time_ms(lambda: dy @ w)
        flops += 2 * t * k * n
    q = torch.randn(1, heads, t, head_dim, **bf16, requires_grad=True)
    kk = torch.randn(1, heads, t, head_dim, **bf16, requires_grad=True)
    v = torch.randn(1, heads, t, head_dim, **bf16, requires_grad=True)
    attn_fwd_ms = time_ms(lambda: F.scaled_dot_product_attention(q, kk, v, is_causal=True))
    out = F.scaled_dot_product_attention(q, kk, v, is_causal=True)
    g = torch.randn_like(out)
    attn_fb_ms = time_ms(lambda: torch.autograd.grad(
        F.scaled_dot_product_attention(q, kk, v, is_causal=True), (q, kk, v), g))
    attn_bwd_ms = attn_fb_ms - attn_fwd_ms
    xh = torch.randn(t, hidden, **bf16)
    wh = torch.randn(vocab, hidden, **bf16)
    dl = torch.randn(t, vocab, **bf16)
    head_ms = time_ms(lambda: xh @ wh.t(), reps=5) + time_ms(lambda: dl @ wh, reps=5)
    del dl

    def step_ms(recompute):
        passes = 3 if recompute else 2  # forward (+ recomputation) + input gradient
        fwd_like = layer_fwd_ms * (passes - 1) + layer_dx_ms
        attn = attn_fwd_ms * (2 if recompute else 1) + attn_bwd_ms
        return layers * (fwd_like + attn) + head_ms

    gemm_tflops = 2 * flops / ((layer_fwd_ms + layer_dx_ms) / 1e3) / 1e12
    out = {"shape": args.shape, "seq": t, "device": torch.cuda.get_device_name(),
           "layer_products_tflops": round(gemm_tflops, 1),
           "attention_fwd_ms": round(attn_fwd_ms, 3), "attention_bwd_ms": round(attn_bwd_ms, 3)}
    for name, recompute in (("full_ckpt", True), ("no_ckpt", False)):
        ms = step_ms(recompute)
        out[f"bound_step_ms_{name}"] = round(ms, 2)
        out[f"bound_tokens_per_s_{name}"] = round(t / (ms / 1e3))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
