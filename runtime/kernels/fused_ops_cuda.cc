// The fused kernels as autograd functions over ATen CUDA tensors; the kernels themselves are in
// elementwise.cu. Every launch goes on the current CUDA stream, as ATen's own ops do.
#include <ATen/cuda/CUDAContext.h>
#include <torch/csrc/autograd/custom_function.h>

#include <vector>

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

// x viewed as [B, T, heads, D] (D contiguous) rotated into a new contiguous tensor.
at::Tensor rope_apply(const at::Tensor& in, const at::Tensor& cos, const at::Tensor& sin,
                      bool inverse) {
  TORCH_CHECK(in.is_cuda() && in.dim() == 4, "rope: expected a CUDA [B, T, heads, head_dim] tensor");
  const at::Tensor x4 = in.stride(3) == 1 ? in : in.contiguous();
  const at::Tensor c = cos.contiguous();
  const at::Tensor s = sin.contiguous();
  TORCH_CHECK(c.scalar_type() == x4.scalar_type() && s.scalar_type() == x4.scalar_type(),
              "rope: cos/sin must have the activations' dtype");
  at::Tensor out = at::empty(x4.sizes(), x4.options().memory_format(at::MemoryFormat::Contiguous));
  const RopeStrides stride{x4.stride(0), x4.stride(1), x4.stride(2)};
  check_launch(launch_rope(x4.data_ptr(), stride, c.data_ptr(), s.data_ptr(), out.data_ptr(),
                           x4.size(0), x4.size(1), x4.size(2), x4.size(3), inverse,
                           kernel_dtype(x4), at::cuda::getCurrentCUDAStream()),
               "rope kernel");
  return out;
}

class Rope : public torch::autograd::Function<Rope> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t heads,
                            const at::Tensor& cos, const at::Tensor& sin) {
    const int64_t width = x.size(-1);
    TORCH_CHECK(width % heads == 0, "rope: width ", width, " is not a multiple of ", heads);
    const at::Tensor x4 = x.unflatten(-1, {heads, width / heads});
    ctx->save_for_backward({cos, sin});
    ctx->saved_data["shape"] = x.sizes();
    return rope_apply(x4, cos, sin, /*inverse=*/false);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor dx = rope_apply(grad_out[0], saved[0], saved[1], /*inverse=*/true);
    return {dx.view(ctx->saved_data["shape"].toIntVector()), at::Tensor(), at::Tensor(),
            at::Tensor()};
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
                                        gu.numel() / gu.size(-1), gu.size(-1) / 2,
                                        kernel_dtype(gu), at::cuda::getCurrentCUDAStream()),
                 "swiglu backward kernel");
    return {d_gu};
  }
};

}  // namespace

bool cuda_kernels_built() { return true; }

at::Tensor rope(const at::Tensor& x, int64_t heads, const at::Tensor& cos, const at::Tensor& sin) {
  return Rope::apply(x, heads, cos, sin);
}

at::Tensor swiglu(const at::Tensor& gate_up) { return SwiGlu::apply(gate_up); }

}  // namespace dstrain::kernels
