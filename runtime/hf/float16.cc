#include "runtime/hf/float16.h"

#include <cstring>

namespace dstrain::runtime::hf {
namespace {

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

constexpr uint32_t kF32AbsMask = 0x7fffffffu;
constexpr uint32_t kF32Inf = 0x7f800000u;
// Exponent bias difference between float32 (127) and half (15), in float32 exponent position.
constexpr uint32_t kHalfRebias = 112u << 23;
// Smallest float32 that rounds to half infinity: midpoint of 65504 and 65536 (ties go to the
// even neighbour, which is infinity).
constexpr uint32_t kHalfOverflow = 0x477ff000u;
constexpr uint32_t kHalfMinNormal = 0x38800000u;     // 2^-14
constexpr uint32_t kHalfRoundsToZero = 0x33000000u;  // 2^-25: this and below round to zero

}  // namespace

uint16_t fp32_to_bf16(float value) {
  const uint32_t u = bits_of(value);
  if ((u & kF32AbsMask) > kF32Inf) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  // Adding 0x7fff plus the lowest kept bit rounds to nearest, ties to even; a carry into the
  // exponent is the correct result (including overflow to infinity).
  const uint32_t bias = 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>((u + bias) >> 16);
}

float bf16_to_fp32(uint16_t bits) { return float_of(static_cast<uint32_t>(bits) << 16); }

uint16_t fp32_to_fp16(float value) {
  const uint32_t u = bits_of(value);
  const auto sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & kF32AbsMask;
  if (abs > kF32Inf) return static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  if (abs >= kHalfOverflow) return static_cast<uint16_t>(sign | 0x7c00u);
  if (abs >= kHalfMinNormal) {
    const uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
    return static_cast<uint16_t>(sign | ((rounded - kHalfRebias) >> 13));
  }
  if (abs <= kHalfRoundsToZero) return sign;
  // Half subnormal: the value in units of 2^-24, rounded to nearest even. A result of 0x400 is
  // the smallest normal, which the same encoding expresses.
  const uint32_t exponent = abs >> 23;
  const uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - exponent;  // 14..24 in this range
  uint32_t q = mantissa >> shift;
  const uint32_t rem = mantissa & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u))) ++q;
  return static_cast<uint16_t>(sign | q);
}

float fp16_to_fp32(uint16_t bits) {
  const uint32_t sign = (static_cast<uint32_t>(bits) & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  const uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0x1fu) return float_of(sign | kF32Inf | (mantissa << 13));
  if (exponent != 0) return float_of(sign | (((exponent << 23) + kHalfRebias) | (mantissa << 13)));
  // Zero or subnormal: mantissa x 2^-24, exact in float32.
  const float magnitude = static_cast<float>(mantissa) * float_of(0x33800000u);
  return float_of(sign | bits_of(magnitude));
}

void fp32_to_bf16(const float* src, uint16_t* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = fp32_to_bf16(src[i]);
}
void bf16_to_fp32(const uint16_t* src, float* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(src[i]);
}
void fp32_to_fp16(const float* src, uint16_t* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}
void fp16_to_fp32(const uint16_t* src, float* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
}

}  // namespace dstrain::runtime::hf
