#pragma once
// The single-threaded AdamW kernels behind CpuAdamW, one per instruction set, chosen at run time
// so one binary runs on any x86-64 (no -march flags in the build). Every variant performs the
// operations of PyTorch's fused CPU AdamW (aten/src/ATen/native/cpu/FusedAdamKernel.cpp, adamw
// mode, fp32) in the same order and precision, so results are bit-identical to
// at::_fused_adamw_: scalars computed in double and rounded to float once, every vector operation
// in float, a fused multiply-add exactly where PyTorch's compiled kernel has one and nowhere else
// (adam_kernel.cc is compiled with -ffp-contract=off so the compiler adds none).
#include <cstdint>

#include "offload/cpu_adam.h"

namespace dstrain::offload {

enum class AdamIsa { kScalar, kAvx2, kAvx512 };

// PyTorch's fused CPU AdamW (on x86, the kernel of its AVX2 build, which it also runs on AVX-512
// CPUs) updates whole vectors of 8 floats, then the last n % 8 elements in a scalar loop whose
// roundings differ; a kernel call here reproduces both for its n elements.
inline constexpr int64_t kTorchVectorWidth = 8;

// The per-call scalars, rounded to float as PyTorch rounds them.
struct AdamScalars {
  float grad_scale;        // 1: no division
  float decay;             // 1 - lr * weight_decay; 1: weight decay off
  float lerp_weight;       // 1 - beta1
  bool lerp_weight_small;  // |1 - beta1| < 0.5 picks which lerp formula is exact at weight 1
  float beta2;
  float one_minus_beta2;
  float bias_correction2_sqrt;
  float eps;
  float neg_step_size;  // -lr / (1 - beta1^step)
};

AdamScalars make_adam_scalars(const AdamWHyper& h);

// Updates n elements exactly as at::_fused_adamw_ on a tensor of those n elements would.
using AdamKernel = void (*)(const AdamScalars& s, float* param, const float* grad, float* exp_avg,
                            float* exp_avg_sq, int64_t n, void* out, LowPrecision out_type);

// The kernel for `isa`, or nullptr when this CPU lacks it.
AdamKernel adam_kernel(AdamIsa isa);
// The widest instruction set this CPU supports.
AdamIsa best_adam_isa();
const char* adam_isa_name(AdamIsa isa);

// Round-to-nearest-even conversions, NaN to the canonical quiet NaN (bf16 0x7fc0, fp16 0x7e00).
uint16_t float_to_bf16(float x);
uint16_t float_to_fp16(float x);

}  // namespace dstrain::offload
