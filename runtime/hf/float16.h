#pragma once
// bfloat16 / IEEE half <-> float32 conversion on raw bit patterns, for reading and writing
// checkpoint tensors without LibTorch. Narrowing rounds to nearest, ties to even (as PyTorch and
// NumPy do); NaN stays NaN (quieted), out-of-range values become infinity.
#include <cstddef>
#include <cstdint>

namespace dstrain::runtime::hf {

uint16_t fp32_to_bf16(float value);
float bf16_to_fp32(uint16_t bits);
uint16_t fp32_to_fp16(float value);
float fp16_to_fp32(uint16_t bits);

// Element-wise over n values; src and dst must not overlap.
void fp32_to_bf16(const float* src, uint16_t* dst, size_t n);
void bf16_to_fp32(const uint16_t* src, float* dst, size_t n);
void fp32_to_fp16(const float* src, uint16_t* dst, size_t n);
void fp16_to_fp32(const uint16_t* src, float* dst, size_t n);

}  // namespace dstrain::runtime::hf
