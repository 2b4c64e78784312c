// The fused kernels as autograd functions over ATen CUDA tensors; the kernels themselves are in
// elementwise.cu. Every launch goes on the current CUDA stream, as ATen's own ops do.
#include <ATen/cuda/CUDAContext.h>
#include <torch/csrc/autograd/custom_function.h>

#include <vector>

#include "runtime/kernels/adamw_cuda.h"
#include "runtime/kernels/cross_entropy_cuda.h"
#include "runtime/kernels/elementwise_cuda.h"
#include "runtime/kernels/fused_ops.h"

namespace dstrain::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

Dtype kernel_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return Dtype::kF32;
    case at::kBFloat16:
      return Dtype::kBF16;
    case at::kHalf:
      return Dtype::kF16;
    default:
      TORCH_CHECK(false, "fused kernels: unsupported dtype ", t.scalar_type());
  }
}

void check_launch(cudaError_t err, const char* kernel) {
  TORCH_CHECK(err == cudaSuccess, kernel, ": ", cudaGetErrorString(err));
}

RopeStrides strides_of(const at::Tensor& t4) { return {t4.stride(0), t4.stride(1), t4.stride(2)}; }

// x viewed as [B, T, heads, D] (D contiguous) rotated into `out`, the same shape with D
// contiguous (a new tensor, or columns of a wider one).
void rope_into(const at::Tensor& in, const at::Tensor& cos, const at::Tensor& sin, bool inverse,
               const at::Tensor& out) {
  TORCH_CHECK(in.is_cuda() && in.dim() == 4,
              "rope: expected a CUDA [B, T, heads, head_dim] tensor");
  TORCH_CHECK(
      out.sizes() == in.sizes() && out.stride(3) == 1 && out.scalar_type() == in.scalar_type(),
      "rope: the output must match the input's shape and dtype, head_dim contiguous");
  const at::Tensor x4 = in.stride(3) == 1 ? in : in.contiguous();
  const at::Tensor c = cos.contiguous();
  const at::Tensor s = sin.contiguous();
  TORCH_CHECK(c.scalar_type() == x4.scalar_type() && s.scalar_type() == x4.scalar_type(),
              "rope: cos/sin must have the activations' dtype");
  check_launch(launch_rope(x4.data_ptr(), strides_of(x4), c.data_ptr(), s.data_ptr(),
                           out.data_ptr(), strides_of(out), x4.size(0), x4.size(1), x4.size(2),
                           x4.size(3), inverse, kernel_dtype(x4), at::cuda::getCurrentCUDAStream()),
               "rope kernel");
}

at::Tensor rope_apply(const at::Tensor& in, const at::Tensor& cos, const at::Tensor& sin,
                      bool inverse) {
  at::Tensor out = at::empty(in.sizes(), in.options().memory_format(at::MemoryFormat::Contiguous));
  rope_into(in, cos, sin, inverse, out);
  return out;
}

// q, k and v out of a fused projection [B, T, (q_heads + 2 kv_heads) * D]: q and k rotated, v
// copied, each [B, T, heads, D] contiguous. Backward writes all three gradients into one
// tensor of the projection's shape (the inverse rotations straight into its q and k columns),
// where three slices of the projection would each have made a zero-filled copy to be summed.
class RopeQkv : public torch::autograd::Function<RopeQkv> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& qkv, int64_t q_heads,
                               int64_t kv_heads, const at::Tensor& cos, const at::Tensor& sin) {
    const int64_t head_dim = cos.size(-1);
    const int64_t q_width = q_heads * head_dim;
    const int64_t kv_width = kv_heads * head_dim;
    TORCH_CHECK(qkv.is_cuda() && qkv.dim() == 3 && qkv.size(-1) == q_width + 2 * kv_width,
                "rope_qkv: expected a CUDA [B, T, ", q_width + 2 * kv_width, "] projection, got ",
                qkv.sizes());
    const auto heads_of = [&](int64_t begin, int64_t width, int64_t heads) {
      return qkv.narrow(-1, begin, width).unflatten(-1, {heads, head_dim});
    };
    ctx->save_for_backward({cos, sin});
    ctx->saved_data["q_heads"] = q_heads;
    ctx->saved_data["kv_heads"] = kv_heads;
    return {rope_apply(heads_of(0, q_width, q_heads), cos, sin, /*inverse=*/false),
            rope_apply(heads_of(q_width, kv_width, kv_heads), cos, sin, /*inverse=*/false),
            heads_of(q_width + kv_width, kv_width, kv_heads).contiguous()};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const int64_t q_heads = ctx->saved_data["q_heads"].toInt();
    const int64_t kv_heads = ctx->saved_data["kv_heads"].toInt();
    const int64_t head_dim = saved[0].size(-1);
    const at::Tensor& any = grads[0].defined()   ? grads[0]
                            : grads[1].defined() ? grads[1]
                                                 : grads[2];
    at::Tensor d_qkv = at::empty({any.size(0), any.size(1), (q_heads + 2 * kv_heads) * head_dim},
                                 any.options().memory_format(at::MemoryFormat::Contiguous));
    int64_t begin = 0;
    for (int part = 0; part < 3; ++part) {
      const int64_t heads = part == 0 ? q_heads : kv_heads;
      const at::Tensor cols =
          d_qkv.narrow(-1, begin, heads * head_dim).unflatten(-1, {heads, head_dim});
      begin += heads * head_dim;
      if (!grads[part].defined()) {
        cols.zero_();
      } else if (part == 2) {
        cols.copy_(grads[part]);
      } else {
        rope_into(grads[part], saved[0], saved[1], /*inverse=*/true, cols);
      }
    }
    return {d_qkv, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class SwiGlu : public torch::autograd::Function<SwiGlu> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate_up) {
    TORCH_CHECK(gate_up.is_cuda() && gate_up.size(-1) % 2 == 0,
                "swiglu: expected a CUDA [..., 2 * width] tensor");
    const at::Tensor gu = gate_up.contiguous();
    const int64_t width = gu.size(-1) / 2;
    std::vector<int64_t> shape = gu.sizes().vec();
    shape.back() = width;
    at::Tensor out = at::empty(shape, gu.options());
    check_launch(launch_swiglu_forward(gu.data_ptr(), out.data_ptr(), gu.numel() / gu.size(-1),
                                       width, kernel_dtype(gu), at::cuda::getCurrentCUDAStream()),
                 "swiglu forward kernel");
    ctx->save_for_backward({gu});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const at::Tensor gu = ctx->get_saved_variables()[0];
    const at::Tensor grad = grad_out[0].contiguous();
    at::Tensor d_gu = at::empty_like(gu);
    check_launch(launch_swiglu_backward(grad.data_ptr(), gu.data_ptr(), d_gu.data_ptr(),
                                        gu.numel() / gu.size(-1), gu.size(-1) / 2, kernel_dtype(gu),
                                        at::cuda::getCurrentCUDAStream()),
                 "swiglu backward kernel");
    return {d_gu};
  }
};

}  // namespace

bool cuda_kernels_built() { return true; }

std::array<at::Tensor, 3> rope_qkv(const at::Tensor& qkv, int64_t q_heads, int64_t kv_heads,
                                   const at::Tensor& cos, const at::Tensor& sin) {
  const variable_list out = RopeQkv::apply(qkv, q_heads, kv_heads, cos, sin);
  return {out[0], out[1], out[2]};
}

at::Tensor swiglu(const at::Tensor& gate_up) { return SwiGlu::apply(gate_up); }

void adamw_step(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                const at::Tensor& exp_avg_sq, const at::Tensor& param_copy,
                const offload::AdamWHyper& h) {
  const int64_t n = param.numel();
  for (const at::Tensor* t : {&param, &grad, &exp_avg, &exp_avg_sq}) {
    TORCH_CHECK(t->is_cuda() && t->scalar_type() == at::kFloat && t->is_contiguous() &&
                    t->numel() == n && t->device() == param.device(),
                "adamw_step: expected contiguous fp32 tensors of ", n, " elements on ",
                param.device());
  }
  TORCH_CHECK(!param_copy.defined() || (param_copy.is_contiguous() && param_copy.numel() == n &&
                                        param_copy.device() == param.device()),
              "adamw_step: the parameter copy must be contiguous, of ", n, " elements on ",
              param.device());
  TORCH_CHECK(h.step >= 1, "adamw_step: step counts from 1, got ", h.step);
  check_launch(launch_adamw(param.data_ptr<float>(), grad.data_ptr<float>(),
                            exp_avg.data_ptr<float>(), exp_avg_sq.data_ptr<float>(),
                            param_copy.defined() ? param_copy.data_ptr() : nullptr,
                            param_copy.defined() ? kernel_dtype(param_copy) : Dtype::kF32, n, h,
                            at::cuda::getCurrentCUDAStream()),
               "adamw kernel");
}

CrossEntropyRows cross_entropy_rows(const at::Tensor& logits, const at::Tensor& targets,
                                    int64_t ignore_index,
                                    std::optional<at::ScalarType> grad_dtype) {
  TORCH_CHECK(logits.is_cuda() && logits.dim() == 2 && logits.scalar_type() == at::kFloat &&
                  logits.is_contiguous(),
              "cross_entropy_rows: expected contiguous fp32 CUDA logits [rows, vocab]");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0) &&
                  targets.scalar_type() == at::kLong && targets.device() == logits.device(),
              "cross_entropy_rows: expected int64 targets [rows] on the logits' device");
  const at::Tensor t = targets.contiguous();
  at::Tensor rows = at::empty({logits.size(0)}, logits.options());
  CrossEntropyRows out;
  if (grad_dtype) out.grad = at::empty(logits.sizes(), logits.options().dtype(*grad_dtype));
  check_launch(
      launch_cross_entropy_rows(logits.data_ptr<float>(), t.data_ptr<int64_t>(), logits.size(0),
                                logits.size(1), ignore_index, rows.data_ptr<float>(),
                                out.grad.defined() ? out.grad.data_ptr() : nullptr,
                                out.grad.defined() ? kernel_dtype(out.grad) : Dtype::kF32,
                                at::cuda::getCurrentCUDAStream()),
      "cross-entropy kernel");
  out.loss = rows.sum();
  return out;
}

}  // namespace dstrain::kernels
