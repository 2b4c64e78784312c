#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "runtime/kernels/adamw_cuda.h"
#include "runtime/kernels/float_convert.cuh"

namespace dstrain::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kVec = 4;  // fp32 elements per 16-byte access

// The step's scalars in fp32, as torch's fused AdamW uses them.
struct AdamwArgs {
  float lr, beta1, beta2, eps, weight_decay;
  float bias_correction1;       // 1 - beta1^step
  float bias_correction2_sqrt;  // sqrt(1 - beta2^step)
  float grad_scale;
};

AdamwArgs args_of(const offload::AdamWHyper& h) {
  const double step = static_cast<double>(h.step);
  return {static_cast<float>(h.lr),
          static_cast<float>(h.beta1),
          static_cast<float>(h.beta2),
          static_cast<float>(h.eps),
          static_cast<float>(h.weight_decay),
          static_cast<float>(1.0 - std::pow(h.beta1, step)),
          static_cast<float>(std::sqrt(1.0 - std::pow(h.beta2, step))),
          static_cast<float>(h.grad_scale)};
}

// The arithmetic of torch's fused AdamW, in fp32.
__device__ __forceinline__ void adamw_element(float& p, float g, float& m, float& v,
                                              const AdamwArgs& a) {
  g = g / a.grad_scale;
  p -= a.lr * a.weight_decay * p;
  m = a.beta1 * m + (1.0f - a.beta1) * g;
  v = a.beta2 * v + (1.0f - a.beta2) * g * g;
  const float step_size = a.lr / a.bias_correction1;
  const float denom = sqrtf(v) / a.bias_correction2_sqrt + a.eps;
  p -= step_size * m / denom;
}

template <typename T>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};
using F4 = Pack<float>;

// The alignment a copy pointer needs for packed stores (none without a copy).
template <typename Copy>
constexpr uintptr_t copy_alignment() {
  if constexpr (std::is_void_v<Copy>) {
    return 1;
  } else {
    return sizeof(Copy) * kVec;
  }
}

// `Copy` void: no copy written. Vectorised over 16-byte packs when every pointer allows it
// (`vec`), one element per step otherwise.
template <typename Copy>
__global__ void adamw_kernel(float* __restrict__ param, const float* __restrict__ grad,
                             float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq,
                             Copy* __restrict__ copy, int64_t n, AdamwArgs a, bool vec) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (vec) {
    const int64_t packs = n / kVec;
    for (int64_t i = first; i < packs; i += stride) {
      F4 p = reinterpret_cast<const F4*>(param)[i];
      const F4 g = reinterpret_cast<const F4*>(grad)[i];
      F4 m = reinterpret_cast<const F4*>(exp_avg)[i];
      F4 v = reinterpret_cast<const F4*>(exp_avg_sq)[i];
#pragma unroll
      for (int k = 0; k < kVec; ++k) adamw_element(p.v[k], g.v[k], m.v[k], v.v[k], a);
      reinterpret_cast<F4*>(param)[i] = p;
      reinterpret_cast<F4*>(exp_avg)[i] = m;
      reinterpret_cast<F4*>(exp_avg_sq)[i] = v;
      if constexpr (!std::is_void_v<Copy>) {
        Pack<Copy> c;
#pragma unroll
        for (int k = 0; k < kVec; ++k) c.v[k] = from_float<Copy>(p.v[k]);
        reinterpret_cast<Pack<Copy>*>(copy)[i] = c;
      }
    }
    done = packs * kVec;
  }
  for (int64_t i = done + first; i < n; i += stride) {
    float p = param[i], m = exp_avg[i], v = exp_avg_sq[i];
    adamw_element(p, grad[i], m, v, a);
    param[i] = p;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    if constexpr (!std::is_void_v<Copy>) copy[i] = from_float<Copy>(p);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename Copy>
cudaError_t launch(float* param, const float* grad, float* exp_avg, float* exp_avg_sq, Copy* copy,
                   int64_t n, const AdamwArgs& args, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  const bool vec = aligned16(param) && aligned16(grad) && aligned16(exp_avg) &&
                   aligned16(exp_avg_sq) &&
                   reinterpret_cast<uintptr_t>(copy) % copy_alignment<Copy>() == 0;
  const int64_t work = vec ? (n + kVec - 1) / kVec : n;
  // Enough blocks to fill the GPU several times over; the loop strides past the rest.
  const int64_t blocks = std::min<int64_t>((work + kThreads - 1) / kThreads, 65535);
  adamw_kernel<Copy><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      param, grad, exp_avg, exp_avg_sq, copy, n, args, vec);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_adamw(float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
                         void* param_copy, Dtype copy_dtype, int64_t n,
                         const offload::AdamWHyper& hyper, cudaStream_t stream) {
  const AdamwArgs args = args_of(hyper);
  if (param_copy == nullptr) {
    return launch<void>(param, grad, exp_avg, exp_avg_sq, nullptr, n, args, stream);
  }
  switch (copy_dtype) {
    case Dtype::kBF16:
      return launch(param, grad, exp_avg, exp_avg_sq, static_cast<__nv_bfloat16*>(param_copy), n,
                    args, stream);
    case Dtype::kF16:
      return launch(param, grad, exp_avg, exp_avg_sq, static_cast<__half*>(param_copy), n, args,
                    stream);
    case Dtype::kF32:
      return launch(param, grad, exp_avg, exp_avg_sq, static_cast<float*>(param_copy), n, args,
                    stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace dstrain::kernels
