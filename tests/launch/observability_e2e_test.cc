// What a run leaves for the people watching it, end to end under mpirun: TensorBoard after a
// resume shows each step once, with the resumed run's values; log.level = "debug" writes each
// rank's communication diagnostics to <run.dir>/comm/, and the default level writes none.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "tests/launch/e2e_run_dir.h"
#include "tests/launch/e2e_util.h"

namespace {

using dstrain::e2e::dstrain;
using dstrain::e2e::kSmallModelToml;
using dstrain::e2e::metrics;
using dstrain::e2e::run;
using dstrain::e2e::RunResult;

namespace fs = std::filesystem;

class ObservabilityE2e : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("dstrain_observability_e2e_" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ofstream(dir_ / "small.toml") << std::string(kSmallModelToml) + R"(
[train]
steps = 6
global_batch = 4
micro_batch = 2
seq_len = 32
[optim]
lr = 1e-2
warmup_steps = 1
[checkpoint]
every = 3
keep = 3
)";
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string args(const fs::path& out, const std::string& extra = "") const {
    return "--config " + (dir_ / "small.toml").string() + " --set run.dir=" + out.string() + " " +
           extra;
  }

  fs::path dir_;
};

// The first run logs steps 1..6 (checkpoints at 3 and 6), as a run interrupted after step 6
// would; the second resumes from step 3 in the same run.dir with train.steps = 8, so its
// learning rates at steps 4..6 differ from the first run's.
TEST_F(ObservabilityE2e, TensorBoardShowsEachStepOnceWithTheResumedValues) {
  const fs::path out = dir_ / "run";
  RunResult first = run(dstrain(2, args(out)));
  ASSERT_EQ(first.exit_code, 0) << first.output;
  EXPECT_FALSE(fs::exists(out / "comm")) << "log.level = \"info\" writes no diagnostics";
  const fs::path step3 = out / "checkpoints" / "step-00000003";
  RunResult second =
      run(dstrain(2, args(out, "--resume " + step3.string() +
                                   " --set train.steps=8 --set checkpoint.every=0")));
  ASSERT_EQ(second.exit_code, 0) << second.output;

  // The test can tell the runs apart: each logged step 4's learning rate, differently.
  std::vector<double> lr_at_4;
  for (const auto& j : metrics(out)) {
    if (j.contains("lr") && j["step"] == 4) lr_at_4.push_back(j["lr"].get<double>());
  }
  ASSERT_EQ(lr_at_4.size(), 2u);
  ASSERT_NE(lr_at_4[0], lr_at_4[1]);
  // TensorBoard's reader: every step once, steps 4..6 with the second run's values.
  RunResult tb = run(std::string(DSTRAIN_PYTHON) + " " + DSTRAIN_SOURCE_DIR +
                     "/tests/runtime/tensorboard_check.py " + out.string());
  if (tb.exit_code == 77) GTEST_SKIP() << tb.output;
  EXPECT_EQ(tb.exit_code, 0) << tb.output;
}

TEST_F(ObservabilityE2e, DebugLevelWritesEachRanksCollectivesAndStepSummaries) {
  const fs::path out = dir_ / "debug";
  RunResult r = run(dstrain(2, args(out,
                                    "--set log.level=debug --set train.steps=3 "
                                    "--set checkpoint.enabled=false")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (int rank : {0, 1}) {
    const fs::path log = out / "comm" / ("rank" + std::to_string(rank) + ".log");
    std::ifstream in(log);
    ASSERT_TRUE(in) << log;
    std::vector<std::string> steps;
    std::map<std::string, int> ops;
    long last_seq = -1;
    bool in_order = true;
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("step=", 0) == 0) steps.push_back(line.substr(0, line.find(' ')));
      if (line.rfind("seq=", 0) != 0) continue;
      const long seq = std::stol(line.substr(4));
      // One communicator on the CPU: its sequence numbers run 0, 1, 2, ... in file order.
      in_order = in_order && seq == last_seq + 1;
      last_seq = seq;
      const size_t op = line.find(" op=") + 4;
      ++ops[line.substr(op, line.find(' ', op) - op)];
      EXPECT_NE(line.find(" group=world lane=mpi bytes="), std::string::npos) << line;
    }
    EXPECT_TRUE(in_order) << log;
    EXPECT_EQ(steps, (std::vector<std::string>{"step=1", "step=2", "step=3"})) << log;
    // Stage 0 (the default): gradients are all-reduced; the trainer's own reductions too.
    EXPECT_GT(ops["all_reduce"], 3) << log;
  }
}

}  // namespace
