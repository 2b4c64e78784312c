#include "runtime/model/varlen_attention.h"

#include <ATen/ops/_flash_attention_backward.h>
#include <ATen/ops/_flash_attention_forward.h>
#include <torch/csrc/autograd/custom_function.h>

namespace dstrain::runtime {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Flash attention sees keys i - left .. i + right of query i (-1: unbounded). Causal is right =
// 0 (what is_causal sets anyway); a window of W keys, itself included, is left = W - 1.
int64_t window_left(int64_t sliding_window) { return sliding_window > 0 ? sliding_window - 1 : -1; }
constexpr int64_t kWindowRight = 0;

// Forward and backward as one autograd node that saves only what the flash backward reads
// (inputs, output, log-sum-exp, its rng state): no attention matrix, no mask.
class VarlenAttention : public torch::autograd::Function<VarlenAttention> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const at::Tensor& cu_seqlens, int64_t max_seqlen,
                            double scale, int64_t sliding_window) {
    // The kernel needs the head_dim contiguous; the projections' slices have it, the rest of
    // the strides may stay as they are.
    const at::Tensor qc = q.stride(-1) == 1 ? q : q.contiguous();
    const at::Tensor kc = k.stride(-1) == 1 ? k : k.contiguous();
    const at::Tensor vc = v.stride(-1) == 1 ? v : v.contiguous();
    auto [out, lse, rng_state, unused, debug_mask] = at::_flash_attention_forward(
        qc, kc, vc, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, /*dropout_p=*/0.0,
        /*is_causal=*/true, /*return_debug_mask=*/false, scale, window_left(sliding_window),
        kWindowRight);
    ctx->save_for_backward({qc, kc, vc, out, lse, cu_seqlens, rng_state, unused});
    ctx->saved_data["max_seqlen"] = max_seqlen;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["sliding_window"] = sliding_window;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const variable_list s = ctx->get_saved_variables();
    const int64_t max_seqlen = ctx->saved_data["max_seqlen"].toInt();
    auto [dq, dk, dv] = at::_flash_attention_backward(
        grad_out[0].contiguous(), s[0], s[1], s[2], s[3], s[4], s[5], s[5], max_seqlen, max_seqlen,
        /*dropout_p=*/0.0, /*is_causal=*/true, s[6], s[7], ctx->saved_data["scale"].toDouble(),
        window_left(ctx->saved_data["sliding_window"].toInt()), kWindowRight);
    return {dq, dk, dv, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

bool varlen_attention_serves(const at::Device& device, at::ScalarType dtype, int64_t head_dim) {
  return device.is_cuda() && (dtype == at::kBFloat16 || dtype == at::kHalf) && head_dim % 8 == 0 &&
         head_dim <= 256;
}

bool varlen_attention_applies(const at::Tensor& q, const at::Tensor& cu_seqlens) {
  return cu_seqlens.defined() && varlen_attention_serves(q.device(), q.scalar_type(), q.size(-1));
}

at::Tensor varlen_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& cu_seqlens, int64_t max_seqlen, double scale,
                            int64_t sliding_window) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3 && q.size(0) == k.size(0) &&
                  k.sizes() == v.sizes() && q.size(1) % k.size(1) == 0,
              "varlen_attention: expected q [N, heads, D] and k, v [N, kv_heads, D], got ",
              q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK(cu_seqlens.scalar_type() == at::kInt && cu_seqlens.device() == q.device(),
              "varlen_attention: cu_seqlens must be int32 on the queries' device");
  return VarlenAttention::apply(q, k, v, cu_seqlens, max_seqlen, scale, sliding_window);
}

}  // namespace dstrain::runtime
