// The checkpointer across ranks: a save at one stage loads bitwise into engines of every stage,
// a write that fails on one rank (ENOSPC injected) fails on all and leaves the earlier checkpoint
// and `latest` as they were, and retention keeps checkpoint.keep of them. An asynchronous save
// holds the state of its step although training changes the engine before it is committed, also
// when its copy of the state is taken after start_save() has returned.
// Loads verify what they read: a bad block found during a resharded load is named on every rank
// with its byte range, and --resume auto falls back from there to the previous checkpoint; a
// short file is caught before anything is loaded; version-1 checkpoints still load.
#include <gtest/gtest.h>
#include <mpi.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/fs.h"
#include "runtime/checkpoint/checkpointer.h"
#include "runtime/checkpoint/rank_file.h"
#include "runtime/checkpoint/store.h"
#include "runtime/model/init.h"
#include "runtime/model/llama.h"
#include "sharding/mpi_communicator.h"

namespace dstrain::runtime::checkpoint {
namespace {

base::ModelConfig tiny_model() {
  base::ModelConfig cfg;
  cfg.vocab_size = 64;
  cfg.hidden_size = 32;
  cfg.intermediate_size = 48;
  cfg.num_layers = 2;
  cfg.num_heads = 4;
  cfg.num_kv_heads = 2;
  cfg.tie_embeddings = true;
  return cfg;
}

std::unique_ptr<sharding::Engine> make_engine(sharding::Communicator& comm, int64_t stage,
                                              int64_t seed) {
  sharding::EngineOptions o;
  o.zero.stage = stage;
  o.optim.lr = 1e-3;
  auto init = [seed](const base::Unit& unit, at::TensorList out) {
    return init_unit_params(unit, out, seed);
  };
  auto e = sharding::Engine::create(build_llama(tiny_model()), o, comm, init);
  EXPECT_TRUE(e.ok()) << e.status().to_string();
  return e.ok() ? std::move(e).value() : nullptr;
}

// Gives every moment a value that differs per element, so a misplaced piece shows.
void fill_moments(sharding::Engine& e) {
  for (sharding::StateSlice& s : e.state_slices(false)) {
    if (s.kind == sharding::StateKind::kParam) continue;
    const double base = s.kind == sharding::StateKind::kExpAvg ? 1.0 : 2.0;
    s.data.copy_(at::arange(s.offset, s.offset + s.data.numel(), at::kDouble).mul(1e-3).add(base));
  }
}

// Every (kind, name) state tensor in full, assembled from the slices each rank owns. Keys come
// from full_parameters() so every rank reduces the same tensors in the same order.
std::map<std::string, at::Tensor> full_state(sharding::Engine& e, sharding::Communicator& comm) {
  std::map<std::string, at::Tensor> out;
  auto params = e.full_parameters();
  EXPECT_TRUE(params.ok());
  if (!params.ok()) return out;
  for (const auto& [name, t] : *params) {
    for (const char* kind : {"param", "exp_avg", "exp_avg_sq"}) {
      out.emplace(std::string(kind) + "/" + name, at::zeros({t.numel()}, at::kFloat));
    }
  }
  for (const sharding::StateSlice& s : e.state_slices(true)) {
    const std::string key = std::string(sharding::state_kind_name(s.kind)) + "/" + s.name;
    EXPECT_TRUE(out.count(key)) << key;
    if (out.count(key)) out.at(key).narrow(0, s.offset, s.data.numel()).copy_(s.data);
  }
  // Owned slices are disjoint over ranks: a sum assembles the whole.
  for (auto& [k, t] : out)
    EXPECT_TRUE(sharding::all_reduce_now(comm, t, sharding::ReduceOp::kSum).ok());
  return out;
}

class CheckpointerMpi : public ::testing::Test {
 protected:
  void SetUp() override {
    auto c = sharding::MpiCommunicator::create(MPI_COMM_WORLD);
    ASSERT_TRUE(c.ok());
    comm_ = std::move(c).value();
    // Rank 0 names the directory so every rank uses the same one.
    int pid = ::getpid();
    MPI_Bcast(&pid, 1, MPI_INT, 0, MPI_COMM_WORLD);
    run_dir_ = ::testing::TempDir() + "/ckpt_mpi_" + std::to_string(pid) + "_" +
               ::testing::UnitTest::GetInstance()->current_test_info()->name();
    if (comm_->rank() == 0) ASSERT_TRUE(base::make_dirs(run_dir_).ok());
    MPI_Barrier(MPI_COMM_WORLD);
  }
  void TearDown() override {
    MPI_Barrier(MPI_COMM_WORLD);
    if (comm_->rank() == 0) (void)base::remove_tree(run_dir_);
  }
  CheckpointOptions options(int64_t stage, int64_t keep = 2) {
    CheckpointOptions o;
    o.run_dir = run_dir_;
    o.config.keep = keep;
    o.config_toml = "[run]\n";
    o.dstrain_version = "test";
    o.dtype = "fp32";
    o.zero_stage = stage;
    o.buffer_bytes = 1000;  // several chunks per tensor
    o.block_bytes = 4096;   // many blocks per rank file, one per read window
    return o;
  }
  std::string ckpt(int64_t step) { return checkpoints_dir(run_dir_) + "/" + step_dir_name(step); }
  // Rank 0 changes one byte of `file` in the middle; every rank returns after it. The offset.
  int64_t damage_middle(const std::string& file) {
    struct stat st {};
    EXPECT_EQ(::stat(file.c_str(), &st), 0) << file;
    const int64_t at = static_cast<int64_t>(st.st_size) / 2;
    if (comm_->rank() == 0) {
      std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
      f.seekg(at);
      const char c = static_cast<char>(f.get());
      f.seekp(at);
      f.put(static_cast<char>(c ^ 0x5a));
    }
    MPI_Barrier(MPI_COMM_WORLD);
    return at;
  }
  // Saves `engine` at steps 1 (moments filled, as `*first` says) and 2 (everything + 1).
  void save_two(sharding::Engine& engine, std::map<std::string, at::Tensor>* first) {
    fill_moments(engine);
    engine.set_scalars({1.0, 1.0, 0});
    Checkpointer ck(options(3, /*keep=*/3), *comm_, posix_);
    ASSERT_TRUE(ck.save(engine, 1).ok());
    *first = full_state(engine, *comm_);
    for (sharding::StateSlice& s : engine.state_slices(true)) s.data.add_(1.0);
    engine.set_scalars({2.0, 1.0, 0});
    ASSERT_TRUE(ck.save(engine, 2).ok());
  }
  std::string latest() {
    auto l = read_latest(checkpoints_dir(run_dir_));
    return l.ok() && l->has_value() ? **l : "";
  }

  std::unique_ptr<sharding::MpiCommunicator> comm_;
  std::string run_dir_;
  PosixIo posix_;
};

TEST_F(CheckpointerMpi, SavedStateLoadsBitwiseAtEveryStage) {
  auto saved = make_engine(*comm_, 3, 1);
  ASSERT_TRUE(saved);
  fill_moments(*saved);
  saved->set_scalars({7.0, 512.0, 3});
  Checkpointer ck(options(3), *comm_, posix_);
  auto dir = ck.save(*saved, 7);
  ASSERT_TRUE(dir.ok()) << dir.status().to_string();
  EXPECT_EQ(*dir, run_dir_ + "/checkpoints/step-00000007");
  EXPECT_EQ(latest(), "step-00000007");
  const auto expect = full_state(*saved, *comm_);
  const auto expect_params = saved->full_parameters();
  ASSERT_TRUE(expect_params.ok());

  for (int64_t stage : {0, 1, 2, 3}) {
    auto loaded = make_engine(*comm_, stage, /*seed=*/99);  // different initial values
    ASSERT_TRUE(loaded);
    Checkpointer reader(options(stage), *comm_, posix_);
    auto pick = reader.resume(*loaded, "auto");
    ASSERT_TRUE(pick.ok()) << pick.status().to_string();
    ASSERT_TRUE(pick->has_value());
    EXPECT_EQ((*pick)->dir, *dir);
    EXPECT_EQ((*pick)->step, 7);
    EXPECT_EQ(loaded->scalars().adam_step, 7.0);
    EXPECT_EQ(loaded->scalars().loss_scale, 512.0);
    EXPECT_EQ(loaded->scalars().good_steps, 3);
    const auto got = full_state(*loaded, *comm_);
    ASSERT_EQ(got.size(), expect.size());
    for (const auto& [key, t] : expect)
      EXPECT_TRUE(at::equal(got.at(key), t)) << key << " stage " << stage;
    // The compute parameters were refreshed from the loaded masters.
    auto params = loaded->full_parameters();
    ASSERT_TRUE(params.ok());
    for (size_t i = 0; i < params->size(); ++i) {
      EXPECT_TRUE(at::equal((*params)[i].second, (*expect_params)[i].second)) << (*params)[i].first;
    }
  }
}

TEST_F(CheckpointerMpi, FullDiskOnOneRankFailsEveryRankAndKeepsTheEarlierCheckpoint) {
  auto engine = make_engine(*comm_, 3, 1);
  ASSERT_TRUE(engine);
  Checkpointer good(options(3), *comm_, posix_);
  ASSERT_TRUE(good.save(*engine, 1).ok());

  // The last rank's disk fills after 2000 bytes of its file's data.
  FaultInjectionIo full(posix_, 2000);
  const bool faulty = comm_->rank() == comm_->size() - 1;
  Checkpointer bad(options(3), *comm_, faulty ? static_cast<CheckpointIo&>(full) : posix_);
  auto st = bad.save(*engine, 2);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.status().code(), base::StatusCode::kIOError);
  if (faulty) {
    EXPECT_NE(st.status().message().find("No space left on device"), std::string::npos)
        << st.status().message();
  }
  EXPECT_NE(st.status().message().find("earlier checkpoints are intact"), std::string::npos);
  MPI_Barrier(MPI_COMM_WORLD);
  struct stat sb {};
  EXPECT_NE(::stat((run_dir_ + "/checkpoints/step-00000002.tmp").c_str(), &sb), 0) << "tmp removed";
  EXPECT_NE(::stat((run_dir_ + "/checkpoints/step-00000002").c_str(), &sb), 0);
  EXPECT_EQ(latest(), "step-00000001");
  EXPECT_TRUE(verify_checkpoint(run_dir_ + "/checkpoints/step-00000001").ok());
}

TEST_F(CheckpointerMpi, AsyncSaveHoldsItsStepAndCommitsAtTheNextCall) {
  auto engine = make_engine(*comm_, 3, 1);
  ASSERT_TRUE(engine);
  fill_moments(*engine);
  engine->set_scalars({4.0, 1.0, 0});
  const auto expect = full_state(*engine, *comm_);
  CheckpointOptions o = options(3);
  o.config.async = true;
  Checkpointer ck(o, *comm_, posix_);
  auto first = ck.start_save(*engine, 4);
  ASSERT_TRUE(first.ok()) << first.status().to_string();
  EXPECT_TRUE(first->empty());
  // Training goes on: the engine changes while the write is in flight, once the copy is taken
  // (the trainer waits for it before the optimizer step).
  ck.wait_for_snapshot();
  for (sharding::StateSlice& s : engine->state_slices(true)) s.data.add_(1.0);
  engine->set_scalars({5.0, 1.0, 0});
  EXPECT_EQ(latest(), "") << "nothing is committed before the next call";
  auto done = ck.finish_pending();
  ASSERT_TRUE(done.ok()) << done.status().to_string();
  ASSERT_TRUE(done->has_value());
  EXPECT_EQ((*done)->step, 4);
  EXPECT_EQ((*done)->dir, run_dir_ + "/checkpoints/step-00000004");
  EXPECT_EQ(latest(), "step-00000004");
  auto none = ck.finish_pending();
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());

  auto loaded = make_engine(*comm_, 1, 99);
  ASSERT_TRUE(loaded);
  Checkpointer reader(options(1), *comm_, posix_);
  auto step = reader.load(*loaded, run_dir_ + "/checkpoints/step-00000004");
  ASSERT_TRUE(step.ok()) << step.status().to_string();
  EXPECT_EQ(loaded->scalars().adam_step, 4.0);
  const auto got = full_state(*loaded, *comm_);
  for (const auto& [key, t] : expect) EXPECT_TRUE(at::equal(got.at(key), t)) << key;

  // A failed background write surfaces at the commit, on every rank, and keeps step 4.
  FaultInjectionIo full(posix_, 2000);
  const bool faulty = comm_->rank() == 0;
  Checkpointer bad(o, *comm_, faulty ? static_cast<CheckpointIo&>(full) : posix_);
  ASSERT_TRUE(bad.start_save(*engine, 5).ok());
  auto failed = bad.finish_pending();
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.status().message().find("earlier checkpoints are intact"), std::string::npos);
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT_EQ(latest(), "step-00000004");
  EXPECT_TRUE(verify_checkpoint(run_dir_ + "/checkpoints/step-00000004").ok());
}

// The copy of an asynchronous save runs after start_save() returns (held back here by the
// test-only delay); wait_for_snapshot() blocks until it is taken and counts in stall_s. A state
// change right after that wait, as the optimizer step makes, stays out of the checkpoint, which
// loads to exactly the state a synchronous save of the same engine loads to.
TEST_F(CheckpointerMpi, DeferredAsyncCopyHoldsTheStateOfItsStepAndCountsItsWait) {
  constexpr double kDelayS = 0.3;
  auto engine = make_engine(*comm_, 3, 1);
  ASSERT_TRUE(engine);
  fill_moments(*engine);
  engine->set_scalars({4.0, 1.0, 0});
  const auto expect = full_state(*engine, *comm_);
  {
    Checkpointer sync(options(3), *comm_, posix_);
    ASSERT_TRUE(sync.save(*engine, 3).ok());
  }
  CheckpointOptions o = options(3);
  o.config.async = true;
  ASSERT_EQ(setenv("DSTRAIN_TEST_SNAPSHOT_DELAY_MS", "300", 1), 0);
  Checkpointer ck(o, *comm_, posix_);
  ASSERT_EQ(unsetenv("DSTRAIN_TEST_SNAPSHOT_DELAY_MS"), 0);
  const auto t0 = std::chrono::steady_clock::now();
  auto started = ck.start_save(*engine, 4);
  const double start_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(started.ok()) << started.status().to_string();
  EXPECT_LT(start_s, kDelayS) << "start_save() waited for the copy";
  ck.wait_for_snapshot();
  ck.wait_for_snapshot();  // a second wait is a no-op
  for (sharding::StateSlice& s : engine->state_slices(true)) s.data.mul_(-3.0).add_(1.0);
  engine->set_scalars({5.0, 1.0, 0});
  auto done = ck.finish_pending();
  ASSERT_TRUE(done.ok()) << done.status().to_string();
  ASSERT_TRUE(done->has_value());
  EXPECT_GE((*done)->stall_s, kDelayS * 0.9) << "the wait for the copy is part of the stall";
  EXPECT_LE((*done)->commit_s, (*done)->stall_s);

  auto loaded = make_engine(*comm_, 3, 99);
  ASSERT_TRUE(loaded);
  Checkpointer reader(options(3), *comm_, posix_);
  for (int64_t step : {int64_t{3}, int64_t{4}}) {
    auto got_step = reader.load(*loaded, ckpt(step));
    ASSERT_TRUE(got_step.ok()) << got_step.status().to_string();
    EXPECT_EQ(*got_step, step);
    const auto got = full_state(*loaded, *comm_);
    for (const auto& [key, t] : expect)
      EXPECT_TRUE(at::equal(got.at(key), t)) << step << " " << key;
  }
}

TEST_F(CheckpointerMpi, RetentionKeepsTheNewest) {
  auto engine = make_engine(*comm_, 1, 1);
  ASSERT_TRUE(engine);
  Checkpointer ck(options(1, /*keep=*/2), *comm_, posix_);
  for (int64_t s : {1, 2, 3}) ASSERT_TRUE(ck.save(*engine, s).ok());
  ck.wait_for_pruning();  // rank 0 deletes in the background
  MPI_Barrier(MPI_COMM_WORLD);
  auto steps = committed_steps(checkpoints_dir(run_dir_));
  ASSERT_TRUE(steps.ok());
  EXPECT_EQ(*steps, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(latest(), "step-00000003");
}

TEST_F(CheckpointerMpi, ExplicitPathThatIsNotACheckpointIsBadInput) {
  auto engine = make_engine(*comm_, 3, 1);
  ASSERT_TRUE(engine);
  Checkpointer ck(options(3), *comm_, posix_);
  auto pick = ck.resume(*engine, run_dir_ + "/nope");
  ASSERT_FALSE(pick.ok());
  EXPECT_EQ(pick.status().code(), base::StatusCode::kBadInput);
  if (comm_->rank() == 0) {
    EXPECT_NE(pick.status().message().find(run_dir_ + "/nope/index.json"), std::string::npos)
        << pick.status().message();
  }
  auto never = ck.resume(*engine, "never");
  ASSERT_TRUE(never.ok());
  EXPECT_FALSE(never->has_value());
}

TEST_F(CheckpointerMpi, ABadBlockFoundDuringAReshardedLoadIsNamedAndAutoFallsBack) {
  auto engine = make_engine(*comm_, 3, 1);
  ASSERT_TRUE(engine);
  std::map<std::string, at::Tensor> first;
  save_two(*engine, &first);
  const std::string bad = ckpt(2) + "/" + rank_file_name(1);
  const int64_t at = damage_middle(bad);
  const int64_t block = at / 4096;
  const std::string named = bad + ": checksum mismatch in block " + std::to_string(block) +
                            " (bytes " + std::to_string(block * 4096) + ".." +
                            std::to_string(block * 4096 + 4096) + ")";

  // Stage 1: every rank holds whole parameters, so both read from both files.
  auto loaded = make_engine(*comm_, 1, 99);
  ASSERT_TRUE(loaded);
  Checkpointer reader(options(1), *comm_, posix_);
  auto explicit_pick = reader.resume(*loaded, ckpt(2));
  ASSERT_FALSE(explicit_pick.ok());
  EXPECT_EQ(explicit_pick.status().code(), base::StatusCode::kBadInput);
  // Every rank reports what the rank that found it saw.
  EXPECT_NE(explicit_pick.status().message().find("--resume " + ckpt(2) + ": " + named),
            std::string::npos)
      << explicit_pick.status().message();

  auto pick = reader.resume(*loaded, "auto");
  ASSERT_TRUE(pick.ok()) << pick.status().to_string();
  ASSERT_TRUE(pick->has_value());
  EXPECT_EQ((*pick)->dir, ckpt(1));
  EXPECT_EQ((*pick)->step, 1);
  EXPECT_EQ(loaded->scalars().adam_step, 1.0);
  const auto got = full_state(*loaded, *comm_);
  for (const auto& [key, t] : first) EXPECT_TRUE(at::equal(got.at(key), t)) << key;

  // With nothing older left the state is neither the checkpoint's nor fresh: no silent restart.
  if (comm_->rank() == 0) ASSERT_TRUE(base::remove_tree(ckpt(1)).ok());
  MPI_Barrier(MPI_COMM_WORLD);
  auto none = reader.resume(*loaded, "auto");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), base::StatusCode::kBadInput);
  EXPECT_NE(none.status().message().find("--resume never"), std::string::npos)
      << none.status().message();
}

TEST_F(CheckpointerMpi, AShortFileIsFoundBeforeAnythingIsLoaded) {
  auto engine = make_engine(*comm_, 3, 1);
  ASSERT_TRUE(engine);
  std::map<std::string, at::Tensor> first;
  save_two(*engine, &first);
  const std::string cut = ckpt(2) + "/" + rank_file_name(0);
  if (comm_->rank() == 0) ASSERT_EQ(::truncate(cut.c_str(), 5000), 0);
  MPI_Barrier(MPI_COMM_WORLD);

  auto loaded = make_engine(*comm_, 3, 99);
  ASSERT_TRUE(loaded);
  const auto fresh = full_state(*loaded, *comm_);
  Checkpointer reader(options(3), *comm_, posix_);
  auto explicit_pick = reader.resume(*loaded, ckpt(2));
  ASSERT_FALSE(explicit_pick.ok());
  EXPECT_NE(explicit_pick.status().message().find(cut + ": size 5000 bytes"), std::string::npos)
      << explicit_pick.status().message();
  EXPECT_NE(explicit_pick.status().message().find("truncated"), std::string::npos);
  auto pick = reader.resume(*loaded, "auto");
  ASSERT_TRUE(pick.ok()) << pick.status().to_string();
  ASSERT_TRUE(pick->has_value());
  EXPECT_EQ((*pick)->dir, ckpt(1));
  const auto got = full_state(*loaded, *comm_);
  for (const auto& [key, t] : first) EXPECT_TRUE(at::equal(got.at(key), t)) << key;

  // Caught before any byte was copied, so with nothing else left the run may start afresh.
  auto other = make_engine(*comm_, 3, 99);
  ASSERT_TRUE(other);
  if (comm_->rank() == 0) ASSERT_TRUE(base::remove_tree(ckpt(1)).ok());
  MPI_Barrier(MPI_COMM_WORLD);
  auto none = reader.resume(*other, "auto");
  ASSERT_TRUE(none.ok()) << none.status().to_string();
  EXPECT_FALSE(none->has_value());
  const auto untouched = full_state(*other, *comm_);
  for (const auto& [key, t] : fresh) EXPECT_TRUE(at::equal(untouched.at(key), t)) << key;
}

TEST_F(CheckpointerMpi, VersionOneCheckpointsStillLoadAndVerify) {
  auto engine = make_engine(*comm_, 3, 1);
  ASSERT_TRUE(engine);
  fill_moments(*engine);
  engine->set_scalars({3.0, 1.0, 0});
  Checkpointer ck(options(3), *comm_, posix_);
  ASSERT_TRUE(ck.save(*engine, 3).ok());
  const auto expect = full_state(*engine, *comm_);
  // What a version-1 writer left: whole-file checksums only.
  if (comm_->rank() == 0) {
    const std::string path = ckpt(3) + "/index.json";
    nlohmann::json index = nlohmann::json::parse(std::ifstream(path));
    index["format_version"] = 1;
    for (auto& f : index["files"]) {
      f.erase("block_bytes");
      f.erase("block_crc32");
    }
    std::ofstream(path) << index.dump(1);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  auto loaded = make_engine(*comm_, 2, 99);
  ASSERT_TRUE(loaded);
  Checkpointer reader(options(2), *comm_, posix_);
  auto step = reader.load(*loaded, ckpt(3));
  ASSERT_TRUE(step.ok()) << step.status().to_string();
  EXPECT_EQ(*step, 3);
  const auto got = full_state(*loaded, *comm_);
  for (const auto& [key, t] : expect) EXPECT_TRUE(at::equal(got.at(key), t)) << key;

  const std::string bad = ckpt(3) + "/" + rank_file_name(1);
  damage_middle(bad);
  auto failed = reader.load(*loaded, ckpt(3));
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), base::StatusCode::kBadInput);
  EXPECT_NE(failed.status().message().find(bad + ": checksum mismatch (crc32"), std::string::npos)
      << failed.status().message();
}

}  // namespace
}  // namespace dstrain::runtime::checkpoint
