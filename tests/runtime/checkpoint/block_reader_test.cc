// The verified single-pass reader: every block a range touches is read once, checked against the
// index before its bytes are handed on, and a bad block, a short file or a missing one is named
// (file, block, byte range); blocks no range touches are neither read nor judged.
#include "runtime/checkpoint/block_reader.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "base/fs.h"
#include "runtime/checkpoint/checksum.h"
#include "runtime/checkpoint/file_io.h"

namespace dstrain::runtime::checkpoint {
namespace {

constexpr int64_t kBlock = 4096;

class BlockReader : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/block_reader_" + std::to_string(::getpid()) + "_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    ASSERT_TRUE(base::remove_tree(dir_).ok());
    ASSERT_TRUE(base::make_dirs(dir_).ok());
    for (int i = 0; i < 2; ++i) {
      auto b = AlignedBuffer::allocate(2 * kBlock);  // two blocks per window
      ASSERT_TRUE(b.ok());
      buffers_[i] = std::move(b).value();
      slots_.data[i] = buffers_[i].data();
    }
    slots_.bytes = 2 * kBlock;
  }
  void TearDown() override { (void)base::remove_tree(dir_); }

  // Writes `name` with `size` bytes of a pattern seeded by `seed`; returns its index entry.
  FileEntry make_file(const std::string& name, int64_t size, int seed) {
    std::string bytes;
    for (int64_t i = 0; i < size; ++i) bytes.push_back(static_cast<char>(i * 31 + seed + i / 251));
    std::ofstream(dir_ + "/" + name, std::ios::binary) << bytes;
    contents_[name] = bytes;
    FileEntry f{name, size, 0, kBlock, {}};
    for (int64_t b = 0; b * kBlock < size; ++b) {
      f.block_crc32.push_back(crc32_update(
          0, bytes.data() + b * kBlock, static_cast<size_t>(std::min(kBlock, size - b * kBlock))));
    }
    f.crc32 = fold_block_crc32s(f.block_crc32, kBlock, size);
    return f;
  }
  void flip_byte(const std::string& name, int64_t at) {
    std::fstream f(dir_ + "/" + name, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(at);
    f.put(static_cast<char>(contents_[name][static_cast<size_t>(at)] ^ 0x5a));
  }
  // Whether this file system takes O_DIRECT at all (tmpfs does not).
  bool direct_io_possible() {
    const int fd = ::open((dir_ + "/" + "probe").c_str(), O_CREAT | O_WRONLY | O_DIRECT, 0644);
    if (fd >= 0) ::close(fd);
    return fd >= 0;
  }

  struct Seen {
    int file;
    int64_t offset;
    std::string bytes;
  };
  WindowSink record(std::vector<Seen>& seen) {
    return [&seen](const ReadWindow& w) {
      seen.push_back({w.file, w.offset, std::string(w.data, static_cast<size_t>(w.size))});
      return base::Status::Ok();
    };
  }

  std::string dir_;
  AlignedBuffer buffers_[2];
  ReadSlots slots_;
  std::map<std::string, std::string> contents_;
};

TEST_F(BlockReader, ReadsEachTouchedBlockOnceAndHandsOnTheFilesBytes) {
  // Blocks 0..10, the last one 100 bytes.
  const std::vector<FileEntry> files = {make_file("a.h5", 10 * kBlock + 100, 1)};
  const std::string& a = contents_["a.h5"];
  // Block 1; blocks 3..5 (two ranges sharing block 5); block 10 (the short tail). Blocks 0, 2 and
  // 6..9 are not needed.
  std::vector<ByteRange> ranges = {{0, 5 * kBlock + 7, 50},
                                   {0, kBlock + 10, 20},
                                   {0, 3 * kBlock, 2 * kBlock + 5},
                                   {0, 10 * kBlock + 99, 1}};
  std::vector<Seen> seen;
  auto stats = read_blocks(dir_, files, ranges, slots_, record(seen));
  ASSERT_TRUE(stats.ok()) << stats.status().to_string();
  // Windows hold whole blocks, at most two (one slot), in offset order, each block once.
  ASSERT_EQ(seen.size(), 4u);
  const int64_t want_offsets[] = {kBlock, 3 * kBlock, 5 * kBlock, 10 * kBlock};
  const int64_t want_sizes[] = {kBlock, 2 * kBlock, kBlock, 100};
  for (size_t i = 0; i < seen.size(); ++i) {
    EXPECT_EQ(seen[i].offset, want_offsets[i]) << i;
    EXPECT_EQ(static_cast<int64_t>(seen[i].bytes.size()), want_sizes[i]) << i;
    EXPECT_EQ(seen[i].bytes, a.substr(static_cast<size_t>(seen[i].offset), seen[i].bytes.size()))
        << i;
  }
  EXPECT_EQ(stats->bytes, 4 * kBlock + 100);
  EXPECT_EQ(stats->blocks_verified, 5);
  if (direct_io_possible()) EXPECT_EQ(stats->direct_bytes, stats->bytes);
}

TEST_F(BlockReader, ACorruptBlockIsNamedWithItsByteRangeAndOnlyWhereItIsRead) {
  const std::vector<FileEntry> files = {make_file("a.h5", 8 * kBlock, 2)};
  flip_byte("a.h5", 5 * kBlock + 123);
  std::vector<Seen> seen;
  auto stats = read_blocks(dir_, files, {{0, 0, 8 * kBlock}}, slots_, record(seen));
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), base::StatusCode::kBadInput);
  EXPECT_NE(stats.status().message().find(
                dir_ + "/a.h5: checksum mismatch in block 5 (bytes 20480..24576)"),
            std::string::npos)
      << stats.status().message();
  // Windows [0, 2) and [2, 4) went on; the one holding block 5 did not, nor anything after it.
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[1].offset, 2 * kBlock);

  // A read that does not touch block 5 (a resharded load that needs other ranges) succeeds.
  seen.clear();
  stats =
      read_blocks(dir_, files, {{0, 100, 4 * kBlock}, {0, 6 * kBlock, 10}}, slots_, record(seen));
  ASSERT_TRUE(stats.ok()) << stats.status().to_string();
  EXPECT_EQ(stats->blocks_verified, 6);
}

TEST_F(BlockReader, AShortOrMissingFileIsNamedBeforeAnyByteIsHandedOn) {
  std::vector<FileEntry> files = {make_file("a.h5", 3 * kBlock, 3),
                                  make_file("b.h5", 3 * kBlock, 4)};
  ASSERT_EQ(::truncate((dir_ + "/b.h5").c_str(), kBlock + 5), 0);
  std::vector<Seen> seen;
  auto stats = read_blocks(dir_, files, {{0, 0, 10}, {1, 2 * kBlock, 10}}, slots_, record(seen));
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().code(), base::StatusCode::kBadInput);
  EXPECT_NE(
      stats.status().message().find(dir_ + "/b.h5: size 4101 bytes, index says 12288 (truncated"),
      std::string::npos)
      << stats.status().message();
  EXPECT_TRUE(seen.empty()) << "nothing is handed on from a checkpoint with a short file";

  files[1].name = "gone.h5";
  stats = read_blocks(dir_, files, {{1, 0, 10}}, slots_, record(seen));
  ASSERT_FALSE(stats.ok());
  EXPECT_NE(stats.status().message().find(dir_ + "/gone.h5: file is missing"), std::string::npos)
      << stats.status().message();
}

TEST_F(BlockReader, WindowsFollowTheFilesInIndexOrder) {
  const std::vector<FileEntry> files = {make_file("a.h5", 2 * kBlock, 5),
                                        make_file("b.h5", 3 * kBlock, 6)};
  std::vector<Seen> seen;
  auto stats = read_blocks(dir_, files, {{1, kBlock, 10}, {0, 0, 2 * kBlock}, {1, 0, 5}}, slots_,
                           record(seen));
  ASSERT_TRUE(stats.ok()) << stats.status().to_string();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].file, 0);
  EXPECT_EQ(seen[0].bytes, contents_["a.h5"]);
  EXPECT_EQ(seen[1].file, 1);
  EXPECT_EQ(seen[1].bytes, contents_["b.h5"].substr(0, 2 * kBlock));
}

TEST_F(BlockReader, VersionOneFilesAreReadUnverifiedAndSinkErrorsStopTheRead) {
  FileEntry f = make_file("a.h5", 3 * kBlock, 7);
  f.block_bytes = 0;  // version 1: whole-file checksum only, checked by the caller beforehand
  f.block_crc32.clear();
  ReadSlots whole = slots_;
  auto big0 = AlignedBuffer::allocate(3 * kBlock), big1 = AlignedBuffer::allocate(3 * kBlock);
  ASSERT_TRUE(big0.ok() && big1.ok());
  whole.data[0] = big0->data();
  whole.data[1] = big1->data();
  whole.bytes = read_slot_bytes({f}, 1 << 30);
  EXPECT_EQ(whole.bytes, 3 * kBlock) << "at most the file";
  std::vector<Seen> seen;
  auto stats = read_blocks(dir_, {f}, {{0, 10, 3 * kBlock - 20}}, whole, record(seen));
  ASSERT_TRUE(stats.ok()) << stats.status().to_string();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].bytes, contents_["a.h5"]);
  EXPECT_EQ(stats->blocks_verified, 0);

  const std::vector<FileEntry> files = {make_file("b.h5", 6 * kBlock, 8)};
  int calls = 0;
  stats = read_blocks(dir_, files, {{0, 0, 6 * kBlock}}, slots_, [&calls](const ReadWindow&) {
    ++calls;
    return base::Status::IOError("device full");
  });
  ASSERT_FALSE(stats.ok());
  EXPECT_EQ(stats.status().message(), "device full");
  EXPECT_EQ(calls, 1);
}

}  // namespace
}  // namespace dstrain::runtime::checkpoint
