// Preemption end to end, under mpirun: SIGUSR1 sent to mpirun (which forwards it to every rank)
// makes the ranks agree at the next step boundary, commit a checkpoint, log a "preempted" event
// and exit 75; --resume auto then ends on the uninterrupted run's final loss, bit for bit. A
// second signal ends the run at once, without claiming a checkpoint.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/launch/e2e_run_dir.h"
#include "tests/launch/e2e_util.h"

namespace {

using dstrain::e2e::find_rank;
using dstrain::e2e::kSmallModelToml;
using dstrain::e2e::latest_of;
using dstrain::e2e::losses_since_resume;
using dstrain::e2e::metrics;
using dstrain::e2e::read_file;

using dstrain::e2e::dstrain;
using dstrain::e2e::run;
using dstrain::e2e::RunResult;

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

// Long enough that the signal, sent after a few steps, always lands mid-run.
constexpr int kSteps = 60;

int steps_logged(const fs::path& run_dir) {
  int n = 0;
  for (const auto& j : metrics(run_dir)) n += j.contains("loss") ? 1 : 0;
  return n;
}

// mpirun itself (exec'd by the shell, so that signals sent to the returned pid reach mpirun),
// with its output in `log`; `delay_ms` > 0 holds each checkpoint save open that long.
pid_t start_job(const std::string& args, const fs::path& log, int delay_ms) {
  const std::string command = "exec " + dstrain(2, args) + " > " + log.string() + " 2>&1";
  const pid_t job = fork();
  if (job == 0) {
    if (delay_ms > 0)
      setenv("DSTRAIN_TEST_CHECKPOINT_DELAY_MS", std::to_string(delay_ms).c_str(), 1);
    execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return job;
}

// The job's wait status once it ends within `limit`; nullopt (and the job killed) otherwise.
std::optional<int> wait_for(pid_t job, std::chrono::seconds limit) {
  const auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    int status = 0;
    if (waitpid(job, &status, WNOHANG) == job) return status;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ::kill(job, SIGKILL);
  waitpid(job, nullptr, 0);
  return std::nullopt;
}

// Polls until `ready` holds; false if the job ended first or 240 s passed.
template <typename Pred>
bool wait_until(pid_t job, Pred ready) {
  const auto deadline = Clock::now() + std::chrono::seconds(240);
  while (Clock::now() < deadline) {
    if (ready()) return true;
    if (waitpid(job, nullptr, WNOHANG) == job) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

class PreemptE2e : public ::testing::Test {
 protected:
  // One uninterrupted reference run at world size 2, stage 3, checkpointing only at the end.
  static void SetUpTestSuite() {
    suite_ = fs::temp_directory_path() / ("dstrain_preempt_e2e_" + std::to_string(getpid()));
    fs::remove_all(suite_);
    fs::create_directories(suite_);
    std::ofstream(suite_ / "small.toml") << std::string(kSmallModelToml) + R"(
[train]
seq_len = 32
global_batch = 8
micro_batch = 2
[optim]
lr = 1e-2
grad_clip = 0.5
warmup_steps = 3
[zero]
stage = 3
[checkpoint]
every = 0
)";
    reference_ = run(dstrain(2, args(suite_ / "ref")));
  }
  static void TearDownTestSuite() { fs::remove_all(suite_); }

  static std::string args(const fs::path& run_dir) {
    return "--config " + (suite_ / "small.toml").string() +
           " --set train.steps=" + std::to_string(kSteps) + " --set run.dir=" + run_dir.string();
  }
  static fs::path ckpt(const fs::path& run_dir, int step) {
    char name[32];
    std::snprintf(name, sizeof(name), "step-%08d", step);
    return run_dir / "checkpoints" / name;
  }
  void SetUp() override { ASSERT_EQ(reference_.exit_code, 0) << reference_.output; }

  static fs::path suite_;
  static RunResult reference_;
};

fs::path PreemptE2e::suite_;
RunResult PreemptE2e::reference_;

TEST_F(PreemptE2e, Usr1CommitsACheckpointExits75AndResumesToTheSameLoss) {
  const fs::path out = suite_ / "preempted";
  const fs::path log = suite_ / "preempted.log";
  fs::create_directories(out);
  const pid_t job = start_job(args(out), log, 0);
  ASSERT_GT(job, 0);
  ASSERT_TRUE(wait_until(job, [&] { return steps_logged(out) >= 3; }))
      << "the run ended, or never logged 3 steps:\n"
      << read_file(log);
  ASSERT_EQ(::kill(job, SIGUSR1), 0);
  const std::optional<int> status = wait_for(job, std::chrono::seconds(120));
  ASSERT_TRUE(status.has_value()) << "still running 120 s after SIGUSR1:\n" << read_file(log);
  ASSERT_TRUE(WIFEXITED(*status)) << read_file(log);
  ASSERT_EQ(WEXITSTATUS(*status), 75) << read_file(log);

  // The event line names the committed checkpoint of the last step trained, and it is latest.
  const std::vector<nlohmann::json> lines = metrics(out);
  ASSERT_FALSE(lines.empty());
  const nlohmann::json& last = lines.back();
  ASSERT_EQ(last.value("event", ""), "preempted") << last.dump();
  const int stopped = last["step"].get<int>();
  EXPECT_GE(stopped, 3);
  EXPECT_LT(stopped, kSteps);
  EXPECT_EQ(steps_logged(out), stopped);
  EXPECT_EQ(last["path"].get<std::string>(), ckpt(out, stopped).string());
  EXPECT_TRUE(fs::exists(ckpt(out, stopped) / "index.json"));
  EXPECT_EQ(latest_of(out), ckpt(out, stopped).filename().string());
  const std::string text = read_file(log);
  EXPECT_NE(text.find("after step " + std::to_string(stopped)), std::string::npos) << text;
  EXPECT_EQ(text.find("MPI_ABORT"), std::string::npos) << text;

  RunResult r = run(dstrain(2, args(out)));  // --resume auto
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::vector<double> resumed = losses_since_resume(out);
  const std::vector<double> ref = losses_since_resume(suite_ / "ref");
  ASSERT_EQ(ref.size(), static_cast<size_t>(kSteps));
  ASSERT_EQ(resumed.size(), static_cast<size_t>(kSteps - stopped));
  EXPECT_EQ(resumed.back(), ref.back());  // bitwise: same world size, same stage
  EXPECT_EQ(resumed, std::vector<double>(ref.begin() + stopped, ref.end()));
}

TEST_F(PreemptE2e, SecondSignalEndsTheRunAtOnceWithoutClaimingACheckpoint) {
  // Each save is held open for a minute, so the preemption's save is still writing when the
  // second signal arrives; the run must end long before that save could have finished.
  const fs::path out = suite_ / "twice";
  const fs::path log = suite_ / "twice.log";
  fs::create_directories(out);
  const pid_t job = start_job(args(out), log, 60000);
  ASSERT_GT(job, 0);
  ASSERT_TRUE(wait_until(job, [&] { return steps_logged(out) >= 3; }))
      << "the run ended, or never logged 3 steps:\n"
      << read_file(log);
  ASSERT_EQ(::kill(job, SIGUSR1), 0);
  const auto saving = [&] {
    for (const auto& e : fs::directory_iterator(out / "checkpoints")) {
      if (e.path().extension() == ".tmp") return true;
    }
    return false;
  };
  ASSERT_TRUE(wait_until(job, [&] { return fs::exists(out / "checkpoints") && saving(); }))
      << "the preemption's save never started:\n"
      << read_file(log);
  ASSERT_EQ(::kill(job, SIGUSR1), 0);
  const std::optional<int> status = wait_for(job, std::chrono::seconds(30));
  ASSERT_TRUE(status.has_value()) << "still running 30 s after the second signal:\n"
                                  << read_file(log);
  EXPECT_FALSE(WIFEXITED(*status) && (WEXITSTATUS(*status) == 0 || WEXITSTATUS(*status) == 75))
      << read_file(log);
  EXPECT_EQ(latest_of(out), "");
  for (const auto& j : metrics(out)) EXPECT_NE(j.value("event", ""), "preempted") << j.dump();
}

}  // namespace
