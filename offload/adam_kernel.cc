#include "offload/adam_kernel.h"

#include <immintrin.h>

#include <cmath>
#include <cstring>

namespace dstrain::offload {

AdamScalars make_adam_scalars(const AdamWHyper& h) {
  // Double first, one rounding to float, as PyTorch does ("to align with non-fused adam").
  const double step = static_cast<double>(h.step);
  const double bias_correction1 = 1 - std::pow(h.beta1, step);
  const double bias_correction2 = 1 - std::pow(h.beta2, step);
  AdamScalars s;
  s.grad_scale = static_cast<float>(h.grad_scale);
  s.decay = h.weight_decay != 0 ? static_cast<float>(1 - h.lr * h.weight_decay) : 1.0f;
  s.lerp_weight = static_cast<float>(1 - h.beta1);
  s.lerp_weight_small = std::abs(s.lerp_weight) < 0.5f;
  s.beta2 = static_cast<float>(h.beta2);
  s.one_minus_beta2 = static_cast<float>(1 - h.beta2);
  s.bias_correction2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
  s.eps = static_cast<float>(h.eps);
  s.neg_step_size = static_cast<float>(-(h.lr / bias_correction1));
  return s;
}

uint16_t float_to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  if (std::isnan(x)) return 0x7fc0;
  // Adding 0x7fff plus the lowest kept bit carries into the kept half exactly when the dropped
  // half is above one half, or exactly one half with an odd kept half: nearest-even.
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

uint16_t float_to_fp16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (u >= 0x47800000u) return sign | 0x7c00u;  // >= 2^16: infinity either way
  if (u < 0x38800000u) {                        // below 2^-14: fp16 subnormal or zero
    // Adding 0.5 puts the value's fp16 subnormal bits at the bottom of the float's mantissa,
    // rounded to nearest-even by the FPU itself.
    float a;
    std::memcpy(&a, &u, sizeof(a));
    a += 0.5f;
    uint32_t r;
    std::memcpy(&r, &a, sizeof(r));
    return sign | static_cast<uint16_t>(r - 0x3f000000u);
  }
  // Normal: rebias the exponent (127 -> 15), round the 13 dropped bits to nearest-even; a carry
  // out of the mantissa correctly bumps the exponent, up to infinity for values >= 65520.
  const uint32_t odd = (u >> 13) & 1u;
  u += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + odd;
  return sign | static_cast<uint16_t>(u >> 13);
}

namespace {

// Which of PyTorch's two code paths an element goes through: its loop over whole vectors of
// kTorchVectorWidth, or its scalar loop over the remaining n % kTorchVectorWidth elements. The
// same expressions compile to different roundings there: GCC fused the second-moment update
// into fma((1 - beta2) g, g, beta2 v) in the vector loop and into fma(v, beta2, (1 - beta2) g g)
// in the scalar one (measured against torch 2.11; the tests fail should a release change it).
enum class TorchPath { kVector, kRemainder };

// One element, operation for operation as PyTorch computes it on `path`. std::fma is exact
// wherever it runs (an instruction in the vector kernels, libm on CPUs without FMA).
template <TorchPath path>
inline void adam_element(const AdamScalars& s, float* param, const float* grad, float* exp_avg,
                         float* exp_avg_sq, uint16_t* out, LowPrecision out_type) {
  float p = *param;
  float g = *grad;
  if (s.grad_scale != 1.0f) g = g / s.grad_scale;
  if (s.decay != 1.0f) p = p * s.decay;
  const float lerp_coeff = s.lerp_weight_small ? s.lerp_weight : s.lerp_weight - 1.0f;
  const float m = std::fma(lerp_coeff, g - *exp_avg, s.lerp_weight_small ? *exp_avg : g);
  const float v = path == TorchPath::kVector
                      ? std::fma(s.one_minus_beta2 * g, g, *exp_avg_sq * s.beta2)
                      : std::fma(*exp_avg_sq, s.beta2, (s.one_minus_beta2 * g) * g);
  *exp_avg = m;
  *exp_avg_sq = v;
  const float denom = std::sqrt(v) / s.bias_correction2_sqrt + s.eps;
  p = p + (s.neg_step_size * m) / denom;
  *param = p;
  if (out_type == LowPrecision::kBFloat16) *out = float_to_bf16(p);
  if (out_type == LowPrecision::kFloat16) *out = float_to_fp16(p);
}

// Elements [begin, n) of a call, PyTorch's remainder loop.
void adam_remainder(const AdamScalars& s, float* param, const float* grad, float* exp_avg,
                    float* exp_avg_sq, int64_t begin, int64_t n, uint16_t* out,
                    LowPrecision out_type) {
  for (int64_t i = begin; i < n; ++i) {
    adam_element<TorchPath::kRemainder>(s, param + i, grad + i, exp_avg + i, exp_avg_sq + i,
                                        out == nullptr ? nullptr : out + i, out_type);
  }
}

// For CPUs without AVX2 and FMA.
void adam_scalar(const AdamScalars& s, float* param, const float* grad, float* exp_avg,
                 float* exp_avg_sq, int64_t n, void* out, LowPrecision out_type) {
  auto* out16 = static_cast<uint16_t*>(out);
  const int64_t vectors_end = n - n % kTorchVectorWidth;
  for (int64_t i = 0; i < vectors_end; ++i) {
    adam_element<TorchPath::kVector>(s, param + i, grad + i, exp_avg + i, exp_avg_sq + i,
                                     out16 == nullptr ? nullptr : out16 + i, out_type);
  }
  adam_remainder(s, param, grad, exp_avg, exp_avg_sq, vectors_end, n, out16, out_type);
}

}  // namespace

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
namespace {

struct Ops {
  using V = __m256;
  static constexpr int kWidth = 8;
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V x) { _mm256_storeu_ps(p, x); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V sqrt(V a) { return _mm256_sqrt_ps(a); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static void store_bf16(uint16_t* out, V x) {
    const __m256i u = _mm256_castps_si256(x);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb);
    r = _mm256_srli_epi32(r, 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
    // packus works within 128-bit lanes: the 8 results are 64-bit words 0 and 2.
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(packed));
  }
  static void store_fp16(uint16_t* out, V x) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out),
                     _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};

#include "offload/adam_kernel_body.inc"

}  // namespace
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,f16c")
namespace avx512 {
namespace {

struct Ops {
  using V = __m512;
  static constexpr int kWidth = 16;
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V x) { _mm512_storeu_ps(p, x); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static V sqrt(V a) { return _mm512_sqrt_ps(a); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static void store_bf16(uint16_t* out, V x) {
    const __m512i u = _mm512_castps_si512(x);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb);
    r = _mm512_srli_epi32(r, 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7fc0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtepi32_epi16(r));
  }
  static void store_fp16(uint16_t* out, V x) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out),
                        _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};

#include "offload/adam_kernel_body.inc"

}  // namespace
}  // namespace avx512
#pragma GCC pop_options

AdamKernel adam_kernel(AdamIsa isa) {
  __builtin_cpu_init();
  switch (isa) {
    case AdamIsa::kScalar:
      return &adam_scalar;
    case AdamIsa::kAvx2:
      if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
          __builtin_cpu_supports("f16c")) {
        return &avx2::adam_kernel_impl;
      }
      return nullptr;
    case AdamIsa::kAvx512:
      if (__builtin_cpu_supports("avx512f") && adam_kernel(AdamIsa::kAvx2) != nullptr) {
        return &avx512::adam_kernel_impl;
      }
      return nullptr;
  }
  return nullptr;
}

AdamIsa best_adam_isa() {
  if (adam_kernel(AdamIsa::kAvx512) != nullptr) return AdamIsa::kAvx512;
  if (adam_kernel(AdamIsa::kAvx2) != nullptr) return AdamIsa::kAvx2;
  return AdamIsa::kScalar;
}

const char* adam_isa_name(AdamIsa isa) {
  switch (isa) {
    case AdamIsa::kScalar:
      return "scalar";
    case AdamIsa::kAvx2:
      return "avx2";
    case AdamIsa::kAvx512:
      return "avx512";
  }
  return "unknown";
}

}  // namespace dstrain::offload
