#include "runtime/checkpoint/checksum.h"

#include <gtest/gtest.h>

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

namespace dstrain::runtime::checkpoint {
namespace {

TEST(Checksum, MatchesTheStandardCheckValue) {
  const std::string s = "123456789";
  EXPECT_EQ(crc32_update(crc32_update(0, nullptr, 0), s.data(), s.size()), 0xCBF43926u);
}

// The carry-less-multiply kernel must give zlib's value for every length (the lane loop, the
// 16-byte loop and the tail), any start address and any running crc.
TEST(Checksum, EqualsZlibForEveryLengthAlignmentAndSeed) {
  std::mt19937 gen(42);
  std::vector<unsigned char> bytes((size_t{1} << 20) + 64);
  for (unsigned char& b : bytes) b = static_cast<unsigned char>(gen());
  std::vector<size_t> lengths;
  for (size_t n = 0; n < 600; ++n) lengths.push_back(n);
  for (size_t n : {size_t{4095}, size_t{4096}, size_t{65537}, size_t{1} << 20})
    lengths.push_back(n);
  for (size_t n : lengths) {
    for (size_t misalign : {0, 1, 7, 13}) {
      const uint32_t seed = static_cast<uint32_t>(gen());
      const unsigned char* p = bytes.data() + misalign;
      const auto want = static_cast<uint32_t>(::crc32(seed, p, static_cast<uInt>(n)));
      ASSERT_EQ(crc32_update(seed, p, n), want) << "length " << n << ", misaligned by " << misalign;
    }
  }
}

TEST(Checksum, CombineEqualsOneRun) {
  const std::string a = "hello, ", b = "checkpoint";
  const uint32_t ca = crc32_update(0, a.data(), a.size());
  const uint32_t cb = crc32_update(0, b.data(), b.size());
  const std::string ab = a + b;
  EXPECT_EQ(crc32_combine(ca, cb, static_cast<int64_t>(b.size())),
            crc32_update(0, ab.data(), ab.size()));
}

TEST(Checksum, KnownRegionsPlusGapsEqualTheWholeFile) {
  const std::string path = ::testing::TempDir() + "/checksum_regions.bin";
  std::string bytes;
  for (int i = 0; i < 10000; ++i) bytes.push_back(static_cast<char>(i * 7 + 3));
  std::ofstream(path, std::ios::binary) << bytes;
  auto whole = file_digest(path);
  ASSERT_TRUE(whole.ok()) << whole.status().to_string();
  EXPECT_EQ(whole->size, 10000);
  std::vector<ChecksummedRegion> known = {{6000, 1000, crc32_update(0, bytes.data() + 6000, 1000)},
                                          {100, 2000, crc32_update(0, bytes.data() + 100, 2000)}};
  auto combined = file_crc32(path, 10000, known);
  ASSERT_TRUE(combined.ok());
  EXPECT_EQ(*combined, whole->crc);
  // A region whose recorded crc is wrong gives a different file crc.
  known[0].crc ^= 1;
  EXPECT_NE(*file_crc32(path, 10000, known), whole->crc);
  std::remove(path.c_str());
}

// What a writer records while it writes (regions cut at block boundaries) plus the gaps it never
// wrote must give each block's crc, and together the whole file's.
TEST(Checksum, BlockCrcsFromWrittenRegionsAndGaps) {
  const std::string path = ::testing::TempDir() + "/checksum_blocks.bin";
  std::string bytes;
  for (int i = 0; i < 10000; ++i) bytes.push_back(static_cast<char>(i * 13 + 5));
  std::ofstream(path, std::ios::binary) << bytes;
  constexpr int64_t kBlock = 4096;
  std::vector<ChecksummedRegion> known;
  checksum_by_block(100, bytes.data() + 100, 5000, kBlock, known);    // crosses the 4096 boundary
  checksum_by_block(8000, bytes.data() + 8000, 2000, kBlock, known);  // crosses 8192, ends the file
  ASSERT_EQ(known.size(), 4u);
  EXPECT_EQ(known[0].offset, 100);
  EXPECT_EQ(known[0].size, 3996);
  EXPECT_EQ(known[1].offset, 4096);
  auto blocks = block_crc32s(path, 10000, kBlock, known);
  ASSERT_TRUE(blocks.ok()) << blocks.status().to_string();
  ASSERT_EQ(blocks->size(), 3u);
  for (size_t b = 0; b < 3; ++b) {
    const size_t begin = b * kBlock, n = std::min<size_t>(kBlock, 10000 - begin);
    EXPECT_EQ((*blocks)[b], crc32_update(0, bytes.data() + begin, n)) << "block " << b;
  }
  auto whole = file_digest(path);
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(fold_block_crc32s(*blocks, kBlock, 10000), whole->crc);
  // A region crossing a block boundary is a bug of the caller, not a checksum.
  EXPECT_EQ(block_crc32s(path, 10000, kBlock, {{4000, 200, 0}}).status().code(),
            base::StatusCode::kInternal);
  std::remove(path.c_str());
}

TEST(Checksum, MissingFileIsBadInputNamingIt) {
  auto d = file_digest("/nonexistent/dir/rank-00000.h5");
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), base::StatusCode::kBadInput);
  EXPECT_NE(d.status().message().find("/nonexistent/dir/rank-00000.h5"), std::string::npos);
}

}  // namespace
}  // namespace dstrain::runtime::checkpoint
