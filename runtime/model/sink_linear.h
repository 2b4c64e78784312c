#pragma once
// Linear layers that write their weight gradient into a GradSink (base/grad_sink.h): the product
// that forms the gradient writes fp32 straight into the engine's gradient buffer.
#include <ATen/ATen.h>

#include "base/grad_sink.h"

namespace torch::autograd {
struct AutogradContext;
}

namespace dstrain::runtime {

// dst (fp32) = a @ b, or dst += a @ b when `add`. On CUDA the low-precision product is written in
// fp32 by cuBLAS (fp32 accumulation, one rounding); elsewhere the operands are widened.
void matmul_into_fp32(at::Tensor& dst, const at::Tensor& a, const at::Tensor& b, bool add);

// A sink kept in a custom autograd function's context for its backward, and taken back out
// (undefined when none was kept). Taking it removes it from the context.
void save_sink(torch::autograd::AutogradContext* ctx, const base::GradSink& sink);
base::GradSink take_saved_sink(torch::autograd::AutogradContext* ctx);

// x [..., in] @ weight [out, in]^T (+ bias [out] when defined). The gradient for `weight` goes
// into `sink` (the weight itself must not require grad); those for x and bias through autograd.
at::Tensor sink_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                       const base::GradSink& sink);

}  // namespace dstrain::runtime
