#pragma once
// Decoder building blocks as free functions over tensors, numerically as Hugging Face
// transformers computes them (LlamaRMSNorm, apply_rotary_pos_emb, LlamaMLP).
#include <ATen/ATen.h>

#include <cstdint>

#include "base/grad_sink.h"
#include "base/unit.h"

namespace dstrain::runtime {

// x / rms(x) * weight, computed in fp32 and rounded once to x's dtype (transformers rounds
// x / rms(x) to the dtype before the weight multiplies: equal in fp32, within one rounding in
// bf16 and fp16).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

// x @ weight^T (+ bias when defined).
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// A low-rank adapter on a linear layer (LoRA): y += scale * B(A(dropout(x))).
struct LoraAdapter {
  at::Tensor a;             // [r, in]; undefined: no adapter
  at::Tensor b;             // [out, r]
  double scale = 0.0;       // alpha / r, or alpha / sqrt(r) for rsLoRA
  at::Tensor dropout_mask;  // undefined: no dropout; else broadcastable to x, already / (1 - p)
};

struct LinearWeights {
  at::Tensor weight;  // [out, in]
  at::Tensor bias;    // undefined when absent
  LoraAdapter lora;
  base::GradSink sink;  // defined: the weight's gradient goes here (runtime/model/sink_linear.h)
};

at::Tensor linear(const at::Tensor& x, const LinearWeights& w);

// [x1, x2] -> [-x2, x1] over the last dimension (HF's rotate_half, not interleaved pairs).
at::Tensor rotate_half(const at::Tensor& x);

// x: [B, heads, T, head_dim]; cos, sin: [B, T, head_dim].
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// Boolean [T, T] mask, true where query i may attend key j: j <= i and i - j < window
// (transformers' sliding_window_causal_mask_function).
at::Tensor sliding_window_mask(int64_t seq_len, int64_t window, const at::Device& device);

struct AttentionWeights {
  LinearWeights q, k, v, o;  // [heads*hd, H], [kv*hd, H], [kv*hd, H], [H, heads*hd]
};

struct AttentionShape {
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t sliding_window = 0;  // 0: none
};

// Self-attention over x [B, T, H] with RoPE (ctx.rope_cos, ctx.rope_sin) and grouped-query
// attention. ctx.attn_mask (boolean [B, 1, T, T], true = attend) replaces the causal mask when
// defined; a sliding window is applied on top of either. Packed batches whose queries
// varlen_attention can serve (CUDA, bf16/fp16, ctx.cu_seqlens defined) take that path instead:
// the same attention without the mask, which may then be left undefined. A packed batch with
// boundaries but no mask that varlen_attention cannot serve is an error, never plain causal.
at::Tensor attention(const at::Tensor& x, const AttentionWeights& w, const AttentionShape& shape,
                     const base::StepContext& ctx);

struct MlpWeights {
  LinearWeights gate, up, down;
};

// down(silu(gate(x)) * up(x)).
at::Tensor swiglu_mlp(const at::Tensor& x, const MlpWeights& w);

}  // namespace dstrain::runtime
