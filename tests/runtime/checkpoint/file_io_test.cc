// The write path's file layer: the direct-I/O writer must put the same bytes where a plain pwrite
// would, whatever the alignment of offset, length and memory; fault injection must still see
// every byte; rank files must align large datasets so direct I/O can be used at all.
#include "runtime/checkpoint/file_io.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/checkpoint/rank_file.h"

namespace dstrain::runtime::checkpoint {
namespace {

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "/file_io_" + std::to_string(::getpid()) + "_" + name;
}

std::string contents(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(FileIo, DirectWriterWritesTheSameBytesAsPwriteAtAnyAlignment) {
  const std::string path = temp_path("direct.bin");
  const int64_t size = 6 * kDirectIoAlignment + 1000;
  PosixIo io;
  ASSERT_TRUE(write_file(io, path, std::string(static_cast<size_t>(size), '.')).ok());
  std::string want(static_cast<size_t>(size), '.');
  auto buf = AlignedBuffer::allocate(static_cast<size_t>(size));
  ASSERT_TRUE(buf.ok());
  for (int64_t i = 0; i < size; ++i) buf->data()[i] = static_cast<char>('a' + i % 26);
  auto w = io.open_direct(path);
  ASSERT_TRUE(w.ok()) << w.status().to_string();
  // {file offset, length, offset into the buffer}: aligned throughout; unaligned head and tail
  // around an aligned middle; memory misaligned against the file (all through the page cache);
  // a write shorter than one block.
  const int64_t writes[][3] = {{0, 2 * kDirectIoAlignment, 0},
                               {2 * kDirectIoAlignment + 100, 2 * kDirectIoAlignment + 500, 100},
                               {4 * kDirectIoAlignment + 700, kDirectIoAlignment + 10, 3},
                               {6 * kDirectIoAlignment + 10, 900, 10}};
  for (const auto& [offset, n, from] : writes) {
    ASSERT_TRUE((*w)->write_at(offset, buf->data() + from, static_cast<size_t>(n)).ok());
    want.replace(static_cast<size_t>(offset), static_cast<size_t>(n), buf->data() + from,
                 static_cast<size_t>(n));
  }
  ASSERT_TRUE((*w)->sync().ok());
  w->reset();
  EXPECT_EQ(contents(path), want);
  std::remove(path.c_str());
}

TEST(FileIo, FaultInjectionCountsDirectWritesAndFailsThemWithEnospc) {
  const std::string path = temp_path("full.bin");
  PosixIo posix;
  ASSERT_TRUE(write_file(posix, path, std::string(4 * kDirectIoAlignment, '.')).ok());
  FaultInjectionIo full(posix, 5000);
  auto buf = AlignedBuffer::allocate(2 * kDirectIoAlignment);
  ASSERT_TRUE(buf.ok());
  auto w = full.open_direct(path);
  ASSERT_TRUE(w.ok());
  base::Status st = (*w)->write_at(0, buf->data(), 2 * kDirectIoAlignment);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), base::StatusCode::kIOError);
  EXPECT_NE(st.message().find(path), std::string::npos) << st.message();
  EXPECT_EQ(full.written(), 5000);
  std::remove(path.c_str());
}

TEST(FileIo, RankFilesAlignLargeDatasetsForDirectIo) {
  const std::string path = temp_path("rank.h5");
  std::vector<DatasetSpec> specs = {{"param", "small", "fp32", 3, 0, {3}, 0},
                                    {"param", "large", "fp32", 100000, 0, {100000}, 0},
                                    {"exp_avg", "large", "bf16", 100001, 0, {100001}, 0}};
  ASSERT_TRUE(create_rank_file(path, specs).ok());
  EXPECT_EQ(specs[1].byte_offset % kDirectIoAlignment, 0);
  EXPECT_EQ(specs[2].byte_offset % kDirectIoAlignment, 0);
  auto back = read_rank_file(path);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  for (const DatasetSpec& s : *back) {
    if (s.numel > 3) EXPECT_EQ(s.byte_offset % kDirectIoAlignment, 0) << s.kind << "/" << s.name;
  }
  std::remove(path.c_str());
}

}  // namespace
}  // namespace dstrain::runtime::checkpoint
