#include <immintrin.h>
#include <zlib.h>

#include <cstring>

#include "runtime/checkpoint/crc32_fast.h"

// Folding with PCLMULQDQ. The message is cut into 128-bit lanes; in the bit-reflected order
// zlib uses, bit m of a little-endian lane is the coefficient of x^(127-m). Moving a lane
// L = A x^64 + B forward by D bits keeps its value mod P if it is replaced by
// A (x^(64+D) mod P) + B (x^D mod P), a product of at most 96 bits that is xor-ed into the lane
// D bits further on. What is left at the end (one lane and a tail under 16 bytes) has the same
// CRC as the whole message, and zlib finishes it.
namespace dstrain::runtime::checkpoint {
namespace {

constexpr uint32_t kPoly = 0xEDB88320u;  // reflected: bit 31 is x^0

// x^n mod P, reflected.
constexpr uint32_t x_pow_mod(int n) {
  uint32_t r = 0x80000000u;
  for (int i = 0; i < n; ++i) r = (r & 1u) ? (r >> 1) ^ kPoly : r >> 1;
  return r;
}

// The two multipliers for a fold by `d` bits. clmul of a 64-bit half (bit i: x^(63-i)) by
// reflect(K) << 32 (bit j: x^(63-j) of K, so x^(64-j) of K x) puts the coefficient of x^(127-m)
// of A K x at bit m; hence K = x^(63+d) for the high-degree half A and x^(d-1) for B.
struct FoldConstants {
  uint64_t high_half;  // multiplies the lane's low 64 bits (A)
  uint64_t low_half;   // multiplies the lane's high 64 bits (B)
};

constexpr FoldConstants fold_constants(int d) {
  return {static_cast<uint64_t>(x_pow_mod(63 + d)) << 32, static_cast<uint64_t>(x_pow_mod(d - 1))
                                                              << 32};
}

constexpr FoldConstants kFold512 = fold_constants(512);
constexpr FoldConstants kFold128 = fold_constants(128);

__attribute__((target("pclmul,sse2"))) inline __m128i fold(__m128i lane, __m128i k) {
  return _mm_xor_si128(_mm_clmulepi64_si128(lane, k, 0x00), _mm_clmulepi64_si128(lane, k, 0x11));
}

__attribute__((target("pclmul,sse2"))) inline __m128i load(const unsigned char* p) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
}

}  // namespace

bool crc32_fast_available() {
  return __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse2");
}

__attribute__((target("pclmul,sse2"))) uint32_t crc32_fast(uint32_t crc, const void* data,
                                                           size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  const __m128i k512 = _mm_set_epi64x(static_cast<long long>(kFold512.low_half),
                                      static_cast<long long>(kFold512.high_half));
  const __m128i k128 = _mm_set_epi64x(static_cast<long long>(kFold128.low_half),
                                      static_cast<long long>(kFold128.high_half));
  // zlib's register starts at ~crc, which is the same as xor-ing ~crc into the first 4 bytes
  // and starting from zero.
  __m128i x0 = _mm_xor_si128(load(p), _mm_cvtsi32_si128(static_cast<int>(~crc)));
  __m128i x1 = load(p + 16), x2 = load(p + 32), x3 = load(p + 48);
  p += 64;
  n -= 64;
  for (; n >= 64; p += 64, n -= 64) {
    x0 = _mm_xor_si128(fold(x0, k512), load(p));
    x1 = _mm_xor_si128(fold(x1, k512), load(p + 16));
    x2 = _mm_xor_si128(fold(x2, k512), load(p + 32));
    x3 = _mm_xor_si128(fold(x3, k512), load(p + 48));
  }
  x1 = _mm_xor_si128(fold(x0, k128), x1);
  x2 = _mm_xor_si128(fold(x1, k128), x2);
  x3 = _mm_xor_si128(fold(x2, k128), x3);
  for (; n >= 16; p += 16, n -= 16) x3 = _mm_xor_si128(fold(x3, k128), load(p));
  // The remaining lane and tail have the message's CRC with a zero register and no final
  // inversion; zlib with crc = ~0 starts from a zero register and inverts at the end, as wanted.
  unsigned char rest[32];
  _mm_storeu_si128(reinterpret_cast<__m128i*>(rest), x3);
  std::memcpy(rest + 16, p, n);
  return static_cast<uint32_t>(::crc32(0xFFFFFFFFul, rest, static_cast<uInt>(16 + n)));
}

}  // namespace dstrain::runtime::checkpoint
