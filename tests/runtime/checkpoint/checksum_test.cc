#include "runtime/checkpoint/checksum.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>

namespace dstrain::runtime::checkpoint {
namespace {

TEST(Checksum, MatchesTheStandardCheckValue) {
  const std::string s = "123456789";
  EXPECT_EQ(crc32_update(crc32_update(0, nullptr, 0), s.data(), s.size()), 0xCBF43926u);
}

TEST(Checksum, CombineEqualsOneRun) {
  const std::string a = "hello, ", b = "checkpoint";
  const uint32_t ca = crc32_update(0, a.data(), a.size());
  const uint32_t cb = crc32_update(0, b.data(), b.size());
  const std::string ab = a + b;
  EXPECT_EQ(crc32_combine(ca, cb, static_cast<int64_t>(b.size())), crc32_update(0, ab.data(), ab.size()));
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

TEST(Checksum, MissingFileIsBadInputNamingIt) {
  auto d = file_digest("/nonexistent/dir/rank-00000.h5");
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), base::StatusCode::kBadInput);
  EXPECT_NE(d.status().message().find("/nonexistent/dir/rank-00000.h5"), std::string::npos);
}

}  // namespace
}  // namespace dstrain::runtime::checkpoint
