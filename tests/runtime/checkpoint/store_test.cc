// The checkpoints directory: HDF5 rank files, commit, `latest`, retention, and what --resume
// auto picks when the newest checkpoint is damaged.
#include "runtime/checkpoint/store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <vector>

#include "base/fs.h"
#include "runtime/checkpoint/checksum.h"
#include "runtime/checkpoint/index.h"
#include "runtime/checkpoint/rank_file.h"

namespace dstrain::runtime::checkpoint {
namespace {

constexpr int64_t kBlock = 4096;  // several blocks per rank file

bool exists(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0;
}

class Store : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = ::testing::TempDir() + "/ckpt_store_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name();
    ASSERT_TRUE(base::remove_tree(root_).ok());
    ASSERT_TRUE(base::make_dirs(root_).ok());
  }
  void TearDown() override { (void)base::remove_tree(root_); }

  // Writes step-N.tmp/ with one rank file holding tensor "w" = step + i (i = 0..9), and its
  // index; commits it through `io`.
  base::Status save(int64_t step, CheckpointIo& io) {
    const std::string tmp = root_ + "/" + step_dir_name(step) + ".tmp";
    RETURN_IF_ERROR(base::make_dirs(tmp));
    const std::string file = tmp + "/" + rank_file_name(0);
    std::vector<DatasetSpec> specs = {{"param", "w", "fp32", 10, 0, {2, 5}, 0}};
    RETURN_IF_ERROR(create_rank_file(file, specs));
    std::vector<float> data(10);
    for (int i = 0; i < 10; ++i) data[i] = static_cast<float>(step + i);
    ASSIGN_OR_RETURN(auto w, io.open(file, false));
    RETURN_IF_ERROR(w->write_at(specs[0].byte_offset, data.data(), 40));
    RETURN_IF_ERROR(w->sync());
    ASSIGN_OR_RETURN(FileDigest d, file_digest(file));
    ASSIGN_OR_RETURN(std::vector<uint32_t> blocks, block_crc32s(file, d.size, kBlock, {}));
    CheckpointIndex x;
    x.step = step;
    x.world_size = 1;
    x.dtype = "fp32";
    x.files = {{rank_file_name(0), d.size, d.crc, kBlock, blocks}};
    x.tensors["param"]["w"] = {
        {2, 5}, "fp32", {{rank_file_name(0), "/param/w", 0, 10, specs[0].byte_offset}}};
    return commit(io, root_, step, index_to_json(x));
  }
  std::string latest() {
    auto l = read_latest(root_);
    return l.ok() && l->has_value() ? **l : "";
  }

  std::string root_;
  PosixIo posix_;
};

TEST_F(Store, StepNamesHaveEightDigits) {
  EXPECT_EQ(step_dir_name(12), "step-00000012");
  EXPECT_EQ(checkpoints_dir("runs/x"), "runs/x/checkpoints");
}

TEST_F(Store, RankFileLayoutReadsBack) {
  const std::string file = root_ + "/" + rank_file_name(3);
  EXPECT_EQ(rank_file_name(3), "rank-00003.h5");
  std::vector<DatasetSpec> specs = {{"param", "model.norm.weight", "fp32", 7, 9, {16}, 0},
                                    {"exp_avg", "model.norm.weight", "fp32", 7, 9, {16}, 0},
                                    {"param", "frozen.w", "bf16", 5, 0, {5}, 0}};
  ASSERT_TRUE(create_rank_file(file, specs).ok());
  auto back = read_rank_file(file);
  ASSERT_TRUE(back.ok()) << back.status().to_string();
  ASSERT_EQ(back->size(), 3u);
  int64_t end = 0;
  for (const DatasetSpec& b : *back) {
    bool found = false;
    for (const DatasetSpec& s : specs) {
      if (s.kind != b.kind || s.name != b.name) continue;
      found = true;
      EXPECT_EQ(b.dtype, s.dtype);
      EXPECT_EQ(b.numel, s.numel);
      EXPECT_EQ(b.offset, s.offset);
      EXPECT_EQ(b.full_shape, s.full_shape);
      EXPECT_EQ(b.byte_offset, s.byte_offset);
    }
    EXPECT_TRUE(found) << b.kind << "/" << b.name;
    end = std::max(end, b.byte_offset + b.numel * dtype_bytes(b.dtype));
  }
  auto d = file_digest(file);
  ASSERT_TRUE(d.ok());
  EXPECT_GE(d->size, end) << "datasets are allocated inside the file";
  auto bad = read_rank_file(root_ + "/missing.h5");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("H5Fopen"), std::string::npos) << bad.status().message();
}

TEST_F(Store, CommitRenamesAndPointsLatestAtIt) {
  ASSERT_TRUE(save(5, posix_).ok());
  EXPECT_TRUE(exists(root_ + "/step-00000005/index.json"));
  EXPECT_FALSE(exists(root_ + "/step-00000005.tmp"));
  EXPECT_EQ(latest(), "step-00000005");
  EXPECT_TRUE(verify_checkpoint(root_ + "/step-00000005").ok());
  ASSERT_TRUE(save(10, posix_).ok());
  EXPECT_EQ(latest(), "step-00000010");
  EXPECT_EQ(*committed_steps(root_), (std::vector<int64_t>{10, 5}));
}

TEST_F(Store, RetentionKeepsTheNewestAndDropsLeftovers) {
  for (int64_t s : {1, 2, 3, 4}) ASSERT_TRUE(save(s, posix_).ok());
  ASSERT_TRUE(base::make_dirs(root_ + "/step-00000009.tmp").ok());  // a write that never committed
  ASSERT_TRUE(apply_retention(root_, 2).ok());
  EXPECT_EQ(*committed_steps(root_), (std::vector<int64_t>{4, 3}));
  EXPECT_FALSE(exists(root_ + "/step-00000009.tmp"));
  ASSERT_TRUE(apply_retention(root_, 0).ok());  // never deletes the newest
  EXPECT_EQ(*committed_steps(root_), (std::vector<int64_t>{4}));
  EXPECT_EQ(latest(), "step-00000004");
}

TEST_F(Store, FullDiskDuringCommitLeavesTheEarlierCheckpointAndLatest) {
  ASSERT_TRUE(save(1, posix_).ok());
  // Enough for the data, not for the index.
  FaultInjectionIo full(posix_, 40);
  base::Status st = save(2, full);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), base::StatusCode::kIOError);
  EXPECT_NE(st.message().find("No space left on device"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("index.json"), std::string::npos) << st.message();
  EXPECT_EQ(latest(), "step-00000001");
  EXPECT_EQ(*committed_steps(root_), (std::vector<int64_t>{1}));
  EXPECT_TRUE(verify_checkpoint(root_ + "/step-00000001").ok());
  // A disk that fills on the data bytes fails the same way.
  FaultInjectionIo fuller(posix_, 10);
  EXPECT_EQ(save(3, fuller).code(), base::StatusCode::kIOError);
  EXPECT_EQ(latest(), "step-00000001");
}

// An attempt as a resume makes it, judged here by the checkpoint's checksums alone.
ResumeAttempt verify_attempt(const std::string& dir) {
  base::Status st = verify_checkpoint(dir);
  return {st, st.code() == base::StatusCode::kBadInput, false};
}

TEST_F(Store, AutoResumeSkipsACorruptCheckpointAndSaysSo) {
  ASSERT_TRUE(save(1, posix_).ok());
  ASSERT_TRUE(save(2, posix_).ok());
  const std::string bad = root_ + "/step-00000002/rank-00000.h5";
  {
    std::fstream f(bad, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-3, std::ios::end);
    f.put('\x7f');
  }
  std::vector<std::string> warnings;
  auto pick = find_resumable(
      {root_ + "/step-00000002", root_ + "/step-00000001"},
      [&](const std::string& w) { warnings.push_back(w); }, verify_attempt);
  ASSERT_TRUE(pick.ok()) << pick.status().to_string();
  ASSERT_TRUE(pick->has_value());
  EXPECT_EQ(**pick, root_ + "/step-00000001");
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("checkpoint " + root_ + "/step-00000002 is corrupt"),
            std::string::npos)
      << warnings[0];
  EXPECT_NE(warnings[0].find(bad + ": checksum mismatch in block "), std::string::npos)
      << warnings[0];
  EXPECT_NE(warnings[0].find("resuming from " + root_ + "/step-00000001"), std::string::npos);
  base::Status st = verify_checkpoint(root_ + "/step-00000002");
  EXPECT_EQ(st.code(), base::StatusCode::kBadInput);

  // Truncation is named as such.
  ASSERT_EQ(::truncate(bad.c_str(), 100), 0);
  st = verify_checkpoint(root_ + "/step-00000002");
  EXPECT_NE(st.message().find("truncated"), std::string::npos) << st.message();
}

TEST_F(Store, NoCheckpointsMeansAFreshStart) {
  std::vector<std::string> warnings;
  auto pick = find_resumable(
      {}, [&](const std::string& w) { warnings.push_back(w); }, verify_attempt);
  ASSERT_TRUE(pick.ok());
  EXPECT_FALSE(pick->has_value());
  EXPECT_TRUE(warnings.empty());
}

// Checkpoints are verified while they load, so a failed attempt may have written into the state.
// Only while none has may the walk end in a fresh start; a failure that is not damage stops it.
TEST_F(Store, AutoResumeStartsAfreshOnlyFromAnUntouchedState) {
  const std::vector<std::string> dirs = {"ck/step-3", "ck/step-2", "ck/step-1"};
  std::vector<std::string> tried, warnings;
  auto walk = [&](std::vector<ResumeAttempt> outcomes) {
    tried.clear();
    warnings.clear();
    return find_resumable(
        dirs, [&](const std::string& w) { warnings.push_back(w); },
        [&](const std::string& dir) {
          tried.push_back(dir);
          return outcomes[tried.size() - 1];
        });
  };
  const ResumeAttempt bad_index{base::Status::BadInput("ck: malformed index"), true, false};
  const ResumeAttempt bad_block{
      base::Status::BadInput("ck/rank-00000.h5: checksum mismatch in block 2"), true, true};
  const ResumeAttempt loaded{base::Status::Ok(), false, true};

  auto pick = walk({bad_block, bad_index, loaded});
  ASSERT_TRUE(pick.ok());
  EXPECT_EQ(pick->value_or(""), "ck/step-1");
  ASSERT_EQ(warnings.size(), 2u);
  EXPECT_NE(warnings[0].find(
                "checkpoint ck/step-3 is corrupt (ck/rank-00000.h5: checksum mismatch in block 2)"),
            std::string::npos)
      << warnings[0];
  EXPECT_NE(warnings[1].find(
                "checkpoint ck/step-2 is corrupt (ck: malformed index); resuming from ck/step-1"),
            std::string::npos)
      << warnings[1];

  pick = walk({bad_index, bad_index, bad_index});
  ASSERT_TRUE(pick.ok());
  EXPECT_FALSE(pick->has_value());
  EXPECT_NE(warnings.back().find("no usable checkpoint left, starting from scratch"),
            std::string::npos);

  pick = walk({bad_index, bad_block, bad_index});
  ASSERT_FALSE(pick.ok());
  EXPECT_EQ(pick.status().code(), base::StatusCode::kBadInput);
  EXPECT_NE(pick.status().message().find("--resume never"), std::string::npos)
      << pick.status().message();
  EXPECT_EQ(tried.size(), 3u);
  EXPECT_EQ(warnings.size(), 3u) << "every corrupt checkpoint is still named";

  pick =
      walk({bad_index,
            {base::Status::BadInput("ck/step-2: has no param of w (saved from a different model?)"),
             false, false}});
  ASSERT_FALSE(pick.ok());
  EXPECT_NE(pick.status().message().find("different model"), std::string::npos);
  EXPECT_EQ(tried.size(), 2u) << "a checkpoint of another model ends the walk";
}

}  // namespace
}  // namespace dstrain::runtime::checkpoint
