#include "runtime/hf/float16.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace dstrain::runtime::hf {
namespace {

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

TEST(Bf16, KnownValues) {
  EXPECT_EQ(fp32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(fp32_to_bf16(-2.0f), 0xc000);
  EXPECT_EQ(fp32_to_bf16(0.0f), 0x0000);
  EXPECT_EQ(fp32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(fp32_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(fp32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds up to infinity
  EXPECT_EQ(bf16_to_fp32(0x3f80), 1.0f);
  EXPECT_EQ(bf16_to_fp32(0x4049), 3.140625f);
  // Ties: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7 and goes to the even one (1).
  EXPECT_EQ(fp32_to_bf16(float_of(0x3f808000)), 0x3f80);
  EXPECT_EQ(fp32_to_bf16(float_of(0x3f818000)), 0x3f82);
  EXPECT_EQ(fp32_to_bf16(float_of(0x3f808001)), 0x3f81);
}

TEST(Bf16, NaNStaysNaN) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(bf16_to_fp32(fp32_to_bf16(nan))));
  EXPECT_TRUE(std::isnan(bf16_to_fp32(fp32_to_bf16(-nan))));
  // A signalling NaN whose payload lies only in the dropped bits must not become infinity.
  EXPECT_TRUE(std::isnan(bf16_to_fp32(fp32_to_bf16(float_of(0x7f800001)))));
  EXPECT_TRUE(std::isnan(bf16_to_fp32(fp32_to_bf16(float_of(0xff800001)))));
}

// Every bf16 value survives the round trip, and every midpoint between neighbours (exact in fp32)
// rounds to the even neighbour while a hair off the midpoint rounds to the nearer one.
TEST(Bf16, ExhaustiveRoundTripAndTies) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const auto b = static_cast<uint16_t>(h);
    const float f = bf16_to_fp32(b);
    if (std::isnan(f)) continue;
    ASSERT_EQ(fp32_to_bf16(f), b) << std::hex << h;
    if ((h & 0x7fff) >= 0x7f80) continue;     // no finite neighbour above infinity
    const uint32_t mid = (h << 16) + 0x8000;  // halfway to the next value away from zero
    const uint16_t even = (h & 1) ? static_cast<uint16_t>(h + 1) : b;
    ASSERT_EQ(fp32_to_bf16(float_of(mid)), even) << std::hex << h;
    ASSERT_EQ(fp32_to_bf16(float_of(mid - 1)), b) << std::hex << h;
    ASSERT_EQ(fp32_to_bf16(float_of(mid + 1)), static_cast<uint16_t>(h + 1)) << std::hex << h;
  }
}

TEST(Fp16, KnownValues) {
  EXPECT_EQ(fp32_to_fp16(1.0f), 0x3c00);
  EXPECT_EQ(fp32_to_fp16(-2.0f), 0xc000);
  EXPECT_EQ(fp32_to_fp16(65504.0f), 0x7bff);
  EXPECT_EQ(fp32_to_fp16(65519.99f), 0x7bff);
  EXPECT_EQ(fp32_to_fp16(65520.0f), 0x7c00);  // the tie goes to infinity (even)
  EXPECT_EQ(fp32_to_fp16(1e10f), 0x7c00);
  EXPECT_EQ(fp32_to_fp16(-1e10f), 0xfc00);
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -25)), 0x0000);  // tie with zero goes to zero
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(fp32_to_fp16(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(fp32_to_fp16(-0.0f), 0x8000);
  EXPECT_EQ(fp32_to_fp16(1e-30f), 0x0000);
  EXPECT_EQ(fp16_to_fp32(0x3555), 0.333251953125f);
  EXPECT_EQ(fp16_to_fp32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(fp16_to_fp32(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(fp16_to_fp32(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(fp16_to_fp32(0x7e00)));
  EXPECT_TRUE(std::isnan(fp16_to_fp32(fp32_to_fp16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(std::isnan(fp16_to_fp32(fp32_to_fp16(float_of(0x7f800001)))));
}

TEST(Fp16, ExhaustiveRoundTripAndTies) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const auto b = static_cast<uint16_t>(h);
    const float f = fp16_to_fp32(b);
    if (std::isnan(f)) continue;
    ASSERT_EQ(fp32_to_fp16(f), b) << std::hex << h;
    if ((h & 0x7fff) >= 0x7c00) continue;
    // Neighbour away from zero; 0x7bff's is infinity, whose "value" for the midpoint is 65536.
    const auto next = static_cast<uint16_t>(h + 1);
    const double next_value =
        (next & 0x7fff) == 0x7c00 ? std::copysign(65536.0, f) : fp16_to_fp32(next);
    const float mid = static_cast<float>((static_cast<double>(f) + next_value) / 2);  // exact
    const uint16_t even = (h & 1) ? next : b;
    ASSERT_EQ(fp32_to_fp16(mid), even) << std::hex << h;
    // The float32 just toward zero from the midpoint, and the one just away from it.
    const uint32_t m = bits_of(mid);
    ASSERT_EQ(fp32_to_fp16(float_of(m - 1)), b) << std::hex << h;
    ASSERT_EQ(fp32_to_fp16(float_of(m + 1)), next) << std::hex << h;
  }
}

TEST(Float16, BulkConversionsMatchScalar) {
  const std::vector<float> src = {0.0f, -1.5f, 3.14159f, 1e-6f, 70000.0f, -1e-40f};
  std::vector<uint16_t> half(src.size()), bf(src.size());
  std::vector<float> back_half(src.size()), back_bf(src.size());
  fp32_to_fp16(src.data(), half.data(), src.size());
  fp32_to_bf16(src.data(), bf.data(), src.size());
  fp16_to_fp32(half.data(), back_half.data(), src.size());
  bf16_to_fp32(bf.data(), back_bf.data(), src.size());
  for (size_t i = 0; i < src.size(); ++i) {
    EXPECT_EQ(half[i], fp32_to_fp16(src[i]));
    EXPECT_EQ(bf[i], fp32_to_bf16(src[i]));
    EXPECT_EQ(bits_of(back_half[i]), bits_of(fp16_to_fp32(half[i])));
    EXPECT_EQ(bits_of(back_bf[i]), bits_of(bf16_to_fp32(bf[i])));
  }
}

}  // namespace
}  // namespace dstrain::runtime::hf
