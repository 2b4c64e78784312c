// Faults end to end, under mpirun: a rank killed (SIGKILL) or stopped (SIGSTOP) mid-training ends
// the whole job with a non-zero exit instead of hanging it. A killed rank is noticed by mpirun
// itself; a stopped one only by the survivors' collective timeout (run.collective_timeout_s),
// after which a survivor names the rank, the collective and its sequence number and aborts.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/launch/e2e_run_dir.h"
#include "tests/launch/e2e_util.h"

namespace {

using dstrain::e2e::find_rank;
using dstrain::e2e::kSmallModelToml;
using dstrain::e2e::latest_of;
using dstrain::e2e::losses_since_resume;
using dstrain::e2e::metrics;
using dstrain::e2e::read_file;

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr int kRanks = 2;
constexpr int kVictim = 1;  // rank 0 survives: it is the one that reports

int loss_lines(const fs::path& run_dir) {
  const std::string m = read_file(run_dir / "metrics.jsonl");
  int n = 0;
  for (size_t at = m.find("\"loss\""); at != std::string::npos; at = m.find("\"loss\"", at + 1)) {
    ++n;
  }
  return n;
}

struct Outcome {
  bool ended = false;  // false: still running at the deadline (a hang)
  int exit_code = -1;  // mpirun's, when it exited
  double seconds = 0;  // from the signal to mpirun's exit
  std::string log;     // every rank's stdout and stderr, and mpirun's
};

// Starts a long 2-rank CPU run, waits until it has logged two steps, sends `sig` to rank
// kVictim and waits up to `deadline` for mpirun to end. Whatever happens, nothing of the run
// is left behind: the victim is continued and killed, and so is any rank still alive.
class FaultE2e : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("dstrain_fault_e2e_" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ofstream(dir_ / "small.toml") << std::string(kSmallModelToml) + R"(
[train]
steps = 1000000
global_batch = 8
micro_batch = 2
seq_len = 32
[zero]
stage = 3
[log]
every = 1
[checkpoint]
every = 0
)";
  }
  void TearDown() override {
    for (pid_t pid : leftovers_) {
      ::kill(pid, SIGCONT);
      ::kill(pid, SIGKILL);
    }
    if (job_ > 0) {
      ::kill(-job_, SIGKILL);
      waitpid(job_, nullptr, 0);
    }
    fs::remove_all(dir_);
  }

  Outcome run_and_signal(const std::string& name, int sig, const std::string& extra,
                         std::chrono::seconds deadline) {
    Outcome o;
    const fs::path out = dir_ / name;
    const fs::path log = dir_ / (name + ".log");
    const std::string command =
        dstrain::e2e::dstrain(kRanks, "--config " + (dir_ / "small.toml").string() +
                                          " --set run.dir=" + out.string() + " " + extra) +
        " > " + log.string() + " 2>&1";
    job_ = fork();
    if (job_ < 0) return o;
    if (job_ == 0) {
      setpgid(0, 0);  // so that TearDown can end mpirun and whatever it started at once
      execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    setpgid(job_, job_);
    pid_t victim = -1;
    const auto start_deadline = Clock::now() + std::chrono::seconds(240);
    while (Clock::now() < start_deadline && victim < 0) {
      if (loss_lines(out) >= 2) victim = find_rank(out.string(), kVictim);
      if (victim < 0) {
        if (waitpid(job_, nullptr, WNOHANG) == job_) {
          job_ = -1;
          o.log = "the run ended before the fault:\n" + read_file(log);
          return o;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
    if (victim < 0) {
      o.log = "rank " + std::to_string(kVictim) + " never logged two steps:\n" + read_file(log);
      return o;
    }
    for (int r = 0; r < kRanks; ++r) leftovers_.push_back(find_rank(out.string(), r));
    leftovers_.erase(std::remove(leftovers_.begin(), leftovers_.end(), -1), leftovers_.end());
    const auto signalled = Clock::now();
    if (::kill(victim, sig) != 0) {
      o.log = "kill failed";
      return o;
    }
    while (Clock::now() < signalled + deadline) {
      int status = 0;
      if (waitpid(job_, &status, WNOHANG) == job_) {
        job_ = -1;
        o.ended = true;
        o.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    o.seconds = std::chrono::duration<double>(Clock::now() - signalled).count();
    o.log = read_file(log);
    // The figures behind the fault table of the docs.
    std::printf("[fault] %s: ended=%d exit=%d after %.1f s\n", name.c_str(), o.ended, o.exit_code,
                o.seconds);
    return o;
  }

  fs::path dir_;
  pid_t job_ = -1;
  std::vector<pid_t> leftovers_;
};

TEST_F(FaultE2e, KilledRankEndsTheJobNonZero) {
  const Outcome o = run_and_signal("killed", SIGKILL, "", std::chrono::seconds(60));
  ASSERT_TRUE(o.ended) << "the job still runs 60 s after a rank was killed:\n" << o.log;
  // mpirun itself notices the death and ends the job (Open MPI: 137, the victim's signal).
  EXPECT_NE(o.exit_code, 0) << o.log;
}

TEST_F(FaultE2e, StoppedRankEndsTheJobAfterTheCollectiveTimeout) {
  // Rank 1 stopped: rank 0 blocks in its next collective until the 5 s timeout, reports it and
  // calls MPI_Abort, which must end the job even though its communication thread is still stuck
  // inside MPI and rank 1 is stopped.
  const Outcome o = run_and_signal("stopped", SIGSTOP, "--set run.collective_timeout_s=5",
                                   std::chrono::seconds(5 + 15));
  ASSERT_TRUE(o.ended) << "the job still runs 20 s after a rank was stopped:\n" << o.log;
  // MPI_Abort carries the distributed-fault exit code, and Open MPI's mpirun passes it on.
  EXPECT_EQ(o.exit_code, 4) << o.log;
  const std::regex named(
      "error: rank 0: (all_reduce|all_gather|reduce_scatter|broadcast|barrier) #[0-9]+.* did not "
      "complete in 5 s .*a peer died or stopped");
  EXPECT_TRUE(std::regex_search(o.log, named)) << o.log;
}

}  // namespace
