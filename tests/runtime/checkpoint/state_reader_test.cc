// Verified bytes into state slices: a piece whose elements straddle the block (and so window)
// boundaries arrives whole in a contiguous slice of its dtype, converted in one of another
// dtype, and in a strided one; a slice the checkpoint cannot fill is refused before any read.
// (Built into checkpoint_mpi_tests, the folder's LibTorch binary; each rank runs it alone.)
#include "runtime/checkpoint/state_reader.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "base/fs.h"
#include "runtime/checkpoint/checksum.h"

namespace dstrain::runtime::checkpoint {
namespace {

constexpr int64_t kBlock = 4096;
constexpr int64_t kNumel = 2000;
// Not a multiple of 4: every block boundary cuts an fp32 element in two.
constexpr int64_t kByteOffset = 4094;

class StateReaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/state_reader_" + std::to_string(::getpid());
    ASSERT_TRUE(base::remove_tree(dir_).ok());
    ASSERT_TRUE(base::make_dirs(dir_).ok());
    values_ = at::arange(kNumel, at::kFloat).mul(0.37).sub(100.0);
    std::string bytes(static_cast<size_t>(kByteOffset + kNumel * 4 + 100), '\x11');
    std::memcpy(bytes.data() + kByteOffset, values_.data_ptr(), kNumel * 4);
    std::ofstream(dir_ + "/r.h5", std::ios::binary) << bytes;
    FileEntry f{"r.h5", static_cast<int64_t>(bytes.size()), 0, kBlock, {}};
    for (int64_t b = 0; b * kBlock < f.size; ++b) {
      f.block_crc32.push_back(
          crc32_update(0, bytes.data() + b * kBlock,
                       static_cast<size_t>(std::min(kBlock, f.size - b * kBlock))));
    }
    f.crc32 = fold_block_crc32s(f.block_crc32, kBlock, f.size);
    index_.files = {f};
    index_.world_size = 1;
    index_.tensors["param"]["w"] = {
        {kNumel}, "fp32", {{"r.h5", "/param/w", 0, kNumel, kByteOffset}}};
  }
  void TearDown() override { (void)base::remove_tree(dir_); }

  base::Status load(std::vector<sharding::StateSlice>& slices) {
    ASSIGN_OR_RETURN(std::vector<SliceCopy> copies, plan_state_reads(dir_, index_, slices));
    // A 1000-byte budget: one block per window, so every block boundary is a window boundary.
    ASSIGN_OR_RETURN(std::unique_ptr<StateReader> reader,
                     StateReader::open(dir_, index_, std::move(copies), 1000));
    bool touched = false;
    return reader->read(&touched).status();
  }

  std::string dir_;
  at::Tensor values_;
  CheckpointIndex index_;
};

TEST_F(StateReaderTest, ElementsSplitByBlocksArriveWholeInAnyDtypeAndLayout) {
  at::Tensor same = at::zeros({kNumel}, at::kFloat);
  at::Tensor half = at::zeros({kNumel - 700}, at::kBFloat16);  // elements [700, 2000)
  at::Tensor wide = at::zeros({2 * 300}, at::kFloat);
  at::Tensor strided = wide.slice(0, 0, 600, 2);  // elements [1000, 1300), every other float
  std::vector<sharding::StateSlice> slices = {
      {"w", sharding::StateKind::kParam, {kNumel}, 0, same},
      {"w", sharding::StateKind::kParam, {kNumel}, 700, half},
      {"w", sharding::StateKind::kParam, {kNumel}, 1000, strided}};
  ASSERT_TRUE(load(slices).ok());
  EXPECT_TRUE(at::equal(same, values_));
  EXPECT_TRUE(at::equal(half, values_.narrow(0, 700, kNumel - 700).to(at::kBFloat16)));
  EXPECT_TRUE(at::equal(strided, values_.narrow(0, 1000, 300)));
  EXPECT_TRUE(at::equal(wide.slice(0, 1, 600, 2), at::zeros({300}, at::kFloat)))
      << "nothing between";
}

TEST_F(StateReaderTest, ASliceTheCheckpointCannotFillIsRefusedByName) {
  std::vector<sharding::StateSlice> slices = {
      {"w", sharding::StateKind::kParam, {kNumel + 1}, 0, at::zeros({kNumel + 1}, at::kFloat)}};
  auto planned = plan_state_reads(dir_, index_, slices);
  ASSERT_FALSE(planned.ok());
  EXPECT_NE(planned.status().message().find("param/w has shape [2000], the model needs [2001]"),
            std::string::npos)
      << planned.status().message();
  slices = {{"v", sharding::StateKind::kExpAvg, {3}, 0, at::zeros({3}, at::kFloat)}};
  planned = plan_state_reads(dir_, index_, slices);
  ASSERT_FALSE(planned.ok());
  EXPECT_NE(planned.status().message().find("has no exp_avg of v"), std::string::npos);
}

}  // namespace
}  // namespace dstrain::runtime::checkpoint
