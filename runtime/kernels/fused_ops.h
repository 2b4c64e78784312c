#pragma once
// Fused decoder kernels for CUDA tensors, each one kernel forward and one backward in place of
// the chain of elementwise ATen ops (and the intermediates autograd would save). Numerically
// they compute in fp32 and round once. Builds without the CUDA toolkit have none
// (cuda_kernels_built() is false) and callers keep the ATen path, which is also the reference
// the kernels are tested against.
#include <ATen/ATen.h>

#include <cstdint>

namespace dstrain::kernels {

bool cuda_kernels_built();

// Rotary embedding (rotate-half) of a projection's output x [B, T, heads * head_dim] (a slice
// of a wider projection is fine: only the last dimension must be contiguous). cos, sin:
// [B, T, head_dim]. Returns [B, T, heads, head_dim], contiguous. Differentiable in x.
at::Tensor rope(const at::Tensor& x, int64_t heads, const at::Tensor& cos, const at::Tensor& sin);

// silu(gate) * up for a fused gate/up projection gate_up [..., 2 * width] (gate first), saving
// only its input for backward. Returns [..., width]. Differentiable in gate_up.
at::Tensor swiglu(const at::Tensor& gate_up);

}  // namespace dstrain::kernels
