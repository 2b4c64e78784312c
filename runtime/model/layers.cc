#include "runtime/model/layers.h"

#include <cmath>
#include <optional>

namespace dstrain::runtime {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const at::Tensor h = x.to(at::kFloat);
  const at::Tensor variance = h.pow(2).mean(-1, /*keepdim=*/true);
  return weight * (h * at::rsqrt(variance + eps)).to(x.scalar_type());
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return bias.defined() ? at::linear(x, weight, bias) : at::linear(x, weight);
}

at::Tensor linear(const at::Tensor& x, const LinearWeights& w) {
  at::Tensor y = linear(x, w.weight, w.bias);
  if (!w.lora.a.defined()) return y;
  const at::Tensor xd = w.lora.dropout_mask.defined() ? x * w.lora.dropout_mask : x;
  return y + at::linear(at::linear(xd, w.lora.a), w.lora.b) * w.lora.scale;
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
                     const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& mask) {
  const int64_t batch = x.size(0);
  const int64_t seq = x.size(1);
  // [B, T, heads*hd] -> [B, heads, T, hd]
  auto heads = [&](const at::Tensor& t, int64_t n) {
    return t.view({batch, seq, n, shape.head_dim}).transpose(1, 2);
  };
  at::Tensor q = heads(linear(x, w.q), shape.num_heads);
  at::Tensor k = heads(linear(x, w.k), shape.num_kv_heads);
  const at::Tensor v = heads(linear(x, w.v), shape.num_kv_heads);
  q = apply_rope(q, cos, sin);
  k = apply_rope(k, cos, sin);

  std::optional<at::Tensor> attn_mask;
  if (mask.defined()) attn_mask = mask;
  if (shape.sliding_window > 0 && shape.sliding_window < seq) {
    const at::Tensor window = sliding_window_mask(seq, shape.sliding_window, x.device());
    attn_mask = attn_mask ? at::logical_and(*attn_mask, window) : window;
  }
  const double scale = 1.0 / std::sqrt(static_cast<double>(shape.head_dim));
  const at::Tensor out = at::scaled_dot_product_attention(
      q, k, v, attn_mask, /*dropout_p=*/0.0, /*is_causal=*/!attn_mask.has_value(), scale,
      /*enable_gqa=*/shape.num_kv_heads != shape.num_heads);
  return linear(out.transpose(1, 2).reshape({batch, seq, shape.num_heads * shape.head_dim}), w.o);
}

at::Tensor swiglu_mlp(const at::Tensor& x, const MlpWeights& w) {
  return linear(at::silu(linear(x, w.gate)) * linear(x, w.up), w.down);
}

}  // namespace dstrain::runtime
