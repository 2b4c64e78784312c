#include "offload/host_buffer.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>

namespace dstrain::offload {
namespace {

TEST(HostBuffer, AlignedForDirectIoAndAccounted) {
  auto alloc = make_aligned_host_allocator();
  {
    auto a = alloc->allocate(10000);
    ASSERT_TRUE(a.ok());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a->data()) % kHostAlignment, 0u);
    EXPECT_EQ(a->size(), 10000u);
    std::memset(a->data(), 0xab, a->size());
    EXPECT_EQ(alloc->bytes_in_use(), 10000u);
    HostBuffer moved = std::move(*a);
    EXPECT_EQ(a->data(), nullptr);
    EXPECT_EQ(alloc->bytes_in_use(), 10000u);
    HostBuffer other;
    other = std::move(moved);
    EXPECT_EQ(static_cast<unsigned char*>(other.data())[9999], 0xab);
  }
  EXPECT_EQ(alloc->bytes_in_use(), 0u);
}

TEST(HostBuffer, ImpossibleSizeIsAnError) {
  auto alloc = make_aligned_host_allocator();
  auto huge = alloc->allocate(SIZE_MAX - kHostAlignment);
  ASSERT_FALSE(huge.ok());
  EXPECT_EQ(huge.status().code(), base::StatusCode::kIOError);
  EXPECT_EQ(alloc->bytes_in_use(), 0u);
}

}  // namespace
}  // namespace dstrain::offload
