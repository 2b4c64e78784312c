#include "runtime/model/layers.h"

#include <cmath>
#include <initializer_list>
#include <optional>
#include <vector>

#include "runtime/kernels/fused_ops.h"
#include "runtime/model/sink_linear.h"
#include "runtime/model/varlen_attention.h"

namespace dstrain::runtime {
namespace {

// The fused CUDA kernels serve CUDA tensors when this build has them.
bool use_kernels(const at::Tensor& x) { return x.is_cuda() && kernels::cuda_kernels_built(); }

at::Tensor lora_delta(const at::Tensor& x, const LoraAdapter& a) {
  const at::Tensor xd = a.dropout_mask.defined() ? x * a.dropout_mask : x;
  // The scale multiplies the rank-r intermediate, not the [.., out] result: r columns, not out.
  return at::linear(at::linear(xd, a.a) * a.scale, a.b);
}

// The weights side by side as one [sum of out, in] matrix without a copy, when they need no
// gradient (frozen, or delivered to sinks) and already lie one after the other in one storage (a
// flat buffer keeps a unit's parameters in schema order); else undefined.
at::Tensor adjacent_weights(const std::vector<at::Tensor>& weights) {
  const at::Tensor& first = weights.front();
  int64_t rows = 0;
  for (const at::Tensor& w : weights) {
    if (w.requires_grad() || !w.is_contiguous() || w.dim() != 2 || w.size(1) != first.size(1) ||
        w.scalar_type() != first.scalar_type() || !w.storage().is_alias_of(first.storage()) ||
        w.storage_offset() != first.storage_offset() + rows * first.size(1)) {
      return at::Tensor();
    }
    rows += w.size(0);
  }
  return first.as_strided({rows, first.size(1)}, {first.size(1), 1});
}

// x [.., in] times weight [out, in] transposed, plus the adapters' `delta` [.., out] and `bias`
// (if defined), with their sum as the product's accumulator: the GEMM adds it as it writes the
// result, so no separate pass over the [.., out] output adds them.
at::Tensor linear_into(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& delta,
                       const at::Tensor& bias) {
  const at::Tensor acc = bias.defined() ? delta + bias : delta;
  const at::Tensor y =
      at::addmm(acc.reshape({-1, acc.size(-1)}), x.reshape({-1, x.size(-1)}), weight.t());
  return y.view(acc.sizes());
}

// The adapters of several projections of one input as one contribution [.., sum of out]: the A
// products as one matmul over the stacked A matrices and the B products as one over their
// block-diagonal matrix, when every projection has an adapter, with one scale and no dropout;
// else each adapter's own, side by side (zeros for a projection without one).
at::Tensor fused_lora_delta(const at::Tensor& x, std::initializer_list<const LinearWeights*> ws) {
  std::vector<at::Tensor> as, bs;
  const LinearWeights& first = **ws.begin();
  bool stacked = true;
  for (const LinearWeights* w : ws) {
    stacked = stacked && w->lora.a.defined() && !w->lora.dropout_mask.defined() &&
              w->lora.scale == first.lora.scale;
    if (!stacked) break;
    as.push_back(w->lora.a);
    bs.push_back(w->lora.b);
  }
  if (stacked) return at::linear(at::linear(x, at::cat(as)) * first.lora.scale, at::block_diag(bs));
  std::vector<at::Tensor> deltas;
  for (const LinearWeights* w : ws) {
    if (w->lora.a.defined()) {
      deltas.push_back(lora_delta(x, w->lora));
    } else {
      std::vector<int64_t> sizes = x.sizes().vec();
      sizes.back() = w->weight.size(0);
      deltas.push_back(at::zeros(sizes, x.options()));
    }
  }
  return at::cat(deltas, -1);
}

// Several projections of one input as one matmul over their concatenated weights (one large
// GEMM instead of several small ones, the input read once; frozen weights that already lie side
// by side are read in place, others copied, which is small beside the product). Returns
// [..., sum of out features] in `ws` order; each LoRA adapter lands in its own columns.
// Weights with sinks are one product only when both the weights and their sinks lie side by side
// (one gradient product writes all of them).
at::Tensor fused_projection(const at::Tensor& x, std::initializer_list<const LinearWeights*> ws) {
  std::vector<at::Tensor> weights, biases;
  bool any_lora = false, any_sink = false;
  bool sinks_chained = (*ws.begin())->sink.defined();  // every sink defined, each after the last
  const LinearWeights* prev = nullptr;
  for (const LinearWeights* w : ws) {
    weights.push_back(w->weight);
    if (w->bias.defined()) biases.push_back(w->bias);
    any_lora = any_lora || w->lora.a.defined();
    any_sink = any_sink || w->sink.defined();
    if (prev != nullptr)
      sinks_chained = sinks_chained && prev->sink.followed_by(w->sink, prev->weight.numel());
    prev = w;
  }
  const bool with_bias = !biases.empty();
  at::Tensor weight = adjacent_weights(weights);
  const bool one_sink_product = sinks_chained && weight.defined() && !any_lora;
  if ((with_bias && biases.size() != weights.size()) || (any_sink && !one_sink_product)) {
    // mixed biases, or sinks that one product cannot serve: separate matmuls
    std::vector<at::Tensor> outs;
    for (const LinearWeights* w : ws) outs.push_back(linear(x, *w));
    return at::cat(outs, -1);
  }
  if (any_sink) {
    return sink_linear(x, weight, with_bias ? at::cat(biases) : at::Tensor(), (*ws.begin())->sink);
  }
  if (!weight.defined()) weight = at::cat(weights);
  if (!any_lora) return with_bias ? at::linear(x, weight, at::cat(biases)) : at::linear(x, weight);
  return linear_into(x, weight, fused_lora_delta(x, ws),
                     with_bias ? at::cat(biases) : at::Tensor());
}

// q and k as [B, heads, T, head_dim] with the rotary embedding applied, v as [B, T, kv_heads,
// head_dim], from the fused projection [B, T, q_width + 2 * kv_width].
struct AttentionInputs {
  at::Tensor q, k, v_rows;
};
AttentionInputs split_heads(const at::Tensor& qkv, const AttentionShape& shape,
                            const base::StepContext& ctx) {
  if (use_kernels(qkv)) {
    const auto [q, k, v] =
        kernels::rope_qkv(qkv, shape.num_heads, shape.num_kv_heads, ctx.rope_cos, ctx.rope_sin);
    return {q.transpose(1, 2), k.transpose(1, 2), v};
  }
  const int64_t q_width = shape.num_heads * shape.head_dim;
  const int64_t kv_width = shape.num_kv_heads * shape.head_dim;
  const auto heads_of = [&](int64_t begin, int64_t width, int64_t heads) {
    return qkv.narrow(-1, begin, width).unflatten(-1, {heads, shape.head_dim});
  };
  return {
      apply_rope(heads_of(0, q_width, shape.num_heads).transpose(1, 2), ctx.rope_cos, ctx.rope_sin),
      apply_rope(heads_of(q_width, kv_width, shape.num_kv_heads).transpose(1, 2), ctx.rope_cos,
                 ctx.rope_sin),
      heads_of(q_width + kv_width, kv_width, shape.num_kv_heads)};
}

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  // ATen's rms_norm: one fused kernel forward and one backward on CUDA (the composite elsewhere).
  return at::rms_norm(x, {x.size(-1)}, weight, eps);
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return bias.defined() ? at::linear(x, weight, bias) : at::linear(x, weight);
}

at::Tensor linear(const at::Tensor& x, const LinearWeights& w) {
  if (w.sink.defined()) {
    const at::Tensor y = sink_linear(x, w.weight, w.bias, w.sink);
    return w.lora.a.defined() ? y + lora_delta(x, w.lora) : y;
  }
  if (!w.lora.a.defined()) return linear(x, w.weight, w.bias);
  return linear_into(x, w.weight, lora_delta(x, w.lora), w.bias);
}

at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const at::Tensor c = cos.unsqueeze(1);
  const at::Tensor s = sin.unsqueeze(1);
  return x * c + rotate_half(x) * s;
}

at::Tensor sliding_window_mask(int64_t seq_len, int64_t window, const at::Device& device) {
  const at::Tensor idx = at::arange(seq_len, at::TensorOptions().dtype(at::kLong).device(device));
  const at::Tensor q = idx.unsqueeze(1);
  const at::Tensor k = idx.unsqueeze(0);
  return at::logical_and(k.le(q), (q - k).lt(window));
}

at::Tensor attention(const at::Tensor& x, const AttentionWeights& w, const AttentionShape& shape,
                     const base::StepContext& ctx) {
  const int64_t batch = x.size(0);
  const int64_t seq = x.size(1);
  const int64_t q_width = shape.num_heads * shape.head_dim;
  const double scale = 1.0 / std::sqrt(static_cast<double>(shape.head_dim));
  const auto [q, k, v_rows] = split_heads(fused_projection(x, {&w.q, &w.k, &w.v}), shape, ctx);

  if (varlen_attention_applies(q, ctx.cu_seqlens)) {
    // Packed documents on the GPU: the rows laid end to end, [B * T, heads, head_dim] (views
    // when the fused RoPE kernel wrote [B, T, heads, head_dim]), no mask built or read.
    const int64_t slots = batch * seq;
    const at::Tensor out =
        varlen_attention(q.transpose(1, 2).reshape({slots, shape.num_heads, shape.head_dim}),
                         k.transpose(1, 2).reshape({slots, shape.num_kv_heads, shape.head_dim}),
                         v_rows.reshape({slots, shape.num_kv_heads, shape.head_dim}),
                         ctx.cu_seqlens, ctx.max_seqlen, scale, shape.sliding_window);
    return linear(out.view({batch, seq, q_width}), w.o);
  }
  // Without the mask, the causal path below would let packed documents see each other.
  TORCH_CHECK(!ctx.cu_seqlens.defined() || ctx.attn_mask.defined(),
              "attention: a packed batch without its mask needs variable-length attention, which "
              "serves CUDA bf16/fp16 activations with head_dim a multiple of 8 up to 256; got ",
              q.device(), " ", q.scalar_type(), ", head_dim ", shape.head_dim);

  std::optional<at::Tensor> attn_mask;
  if (ctx.attn_mask.defined()) attn_mask = ctx.attn_mask;
  if (shape.sliding_window > 0 && shape.sliding_window < seq) {
    const at::Tensor window = sliding_window_mask(seq, shape.sliding_window, x.device());
    attn_mask = attn_mask ? at::logical_and(*attn_mask, window) : window;
  }
  const at::Tensor out =
      at::scaled_dot_product_attention(q, k, v_rows.transpose(1, 2), attn_mask, /*dropout_p=*/0.0,
                                       /*is_causal=*/!attn_mask.has_value(), scale,
                                       /*enable_gqa=*/shape.num_kv_heads != shape.num_heads);
  return linear(out.transpose(1, 2).reshape({batch, seq, q_width}), w.o);
}

at::Tensor swiglu_mlp(const at::Tensor& x, const MlpWeights& w) {
  const at::Tensor gate_up = fused_projection(x, {&w.gate, &w.up});
  if (use_kernels(gate_up)) return linear(kernels::swiglu(gate_up), w.down);
  const int64_t width = w.gate.weight.size(0);
  return linear(at::silu(gate_up.narrow(-1, 0, width)) * gate_up.narrow(-1, width, width), w.down);
}

}  // namespace dstrain::runtime
