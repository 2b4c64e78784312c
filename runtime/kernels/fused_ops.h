#pragma once
// Fused decoder kernels for CUDA tensors, each one kernel forward and one backward in place of
// the chain of elementwise ATen ops (and the intermediates autograd would save). Numerically
// they compute in fp32 and round once. Builds without the CUDA toolkit have none
// (cuda_kernels_built() is false) and callers keep the ATen path, which is also the reference
// the kernels are tested against.
#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <optional>

#include "offload/cpu_adam.h"

namespace dstrain::kernels {

bool cuda_kernels_built();

// q, k and v of a fused projection qkv [B, T, (q_heads + 2 * kv_heads) * head_dim] (q first,
// then k, then v; head_dim = cos.size(-1)): q and k rotated (rotary embedding,
// rotate-half), v as it is, each
// [B, T, heads, head_dim] and contiguous. Differentiable in qkv: backward forms the
// projection's gradient in one tensor, with no zero-filled slices to sum.
std::array<at::Tensor, 3> rope_qkv(const at::Tensor& qkv, int64_t q_heads, int64_t kv_heads,
                                   const at::Tensor& cos, const at::Tensor& sin);

// silu(gate) * up for a fused gate/up projection gate_up [..., 2 * width] (gate first), saving
// only its input for backward. Returns [..., width]. Differentiable in gate_up.
at::Tensor swiglu(const at::Tensor& gate_up);

// One AdamW step over contiguous fp32 CUDA tensors of equal size, in place, with the updated
// parameters also rounded into `param_copy` (the compute-dtype copy forward reads; same size)
// when it is defined: one pass over the state instead of torch's fused AdamW plus a cast that
// reads the parameters again. The same arithmetic as torch's fused AdamW, in fp32.
void adamw_step(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                const at::Tensor& exp_avg_sq, const at::Tensor& param_copy,
                const offload::AdamWHyper& h);

// Cross-entropy of each row of fp32 CUDA logits [rows, vocab] (contiguous) against int64
// targets [rows]: the sum over rows whose target is not `ignore_index` (an fp32 0-dim tensor)
// and, when `grad_dtype` is given, d sum / d logits in that dtype (softmax - one_hot, zero rows
// where ignored). One kernel that reads the logits twice and writes the gradient once, in place
// of ATen's cast, logsumexp, gather and four elementwise passes.
struct CrossEntropyRows {
  at::Tensor loss;
  at::Tensor grad;
};
CrossEntropyRows cross_entropy_rows(const at::Tensor& logits, const at::Tensor& targets,
                                    int64_t ignore_index, std::optional<at::ScalarType> grad_dtype);

}  // namespace dstrain::kernels
