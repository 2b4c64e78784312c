// Checkpoints end to end, under mpirun: resume bit-identically at the same world size, resume at
// other world sizes and stages, fall back past a corrupt checkpoint, refuse an explicit corrupt
// one with exit 3, survive a rank killed mid-save, save asynchronously to the same bytes, and let
// plain h5py read a named tensor through the index. Damage is found while loading: a bad block
// is named with its byte range, a short file before anything is loaded.
#include <fcntl.h>
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#include <nlohmann/json.hpp>
#include "tests/launch/e2e_run_dir.h"
#include "tests/launch/e2e_util.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

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

std::vector<double> losses(const fs::path& run_dir) {
  std::vector<double> out;
  for (const auto& j : metrics(run_dir)) {
    if (j.contains("loss")) out.push_back(j["loss"].get<double>());
  }
  return out;
}

// A full fp32 tensor read back through index.json: pieces in offset order, raw bytes at their
// byte_offset (independent of HDF5 and of dstrain's own reader).
std::vector<float> read_tensor(const fs::path& ckpt, const std::string& kind,
                               const std::string& name) {
  nlohmann::json index = nlohmann::json::parse(std::ifstream(ckpt / "index.json"));
  const auto& t = index["tensors"][kind][name];
  int64_t numel = 1;
  for (int64_t d : t["shape"]) numel *= d;
  std::vector<float> out(numel);
  for (const auto& p : t["pieces"]) {
    const int fd = ::open((ckpt / p["file"].get<std::string>()).c_str(), O_RDONLY);
    EXPECT_GE(fd, 0);
    const size_t bytes = p["numel"].get<size_t>() * sizeof(float);
    EXPECT_EQ(
        ::pread(fd, out.data() + p["offset"].get<int64_t>(), bytes, p["byte_offset"].get<off_t>()),
        static_cast<ssize_t>(bytes));
    ::close(fd);
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> tensor_names(const fs::path& ckpt) {
  nlohmann::json index = nlohmann::json::parse(std::ifstream(ckpt / "index.json"));
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [kind, by_name] : index["tensors"].items()) {
    for (const auto& [name, t] : by_name.items()) out.emplace_back(kind, name);
  }
  return out;
}

constexpr int kSteps = 20;

class CheckpointE2e : public ::testing::Test {
 protected:
  // One uninterrupted reference run, shared: 20 steps at world size 2, stage 3, checkpoints
  // at steps 10 and 20.
  static void SetUpTestSuite() {
    suite_ = fs::temp_directory_path() / ("dstrain_ckpt_e2e_" + std::to_string(getpid()));
    fs::remove_all(suite_);
    fs::create_directories(suite_);
    std::ofstream(suite_ / "small.toml") << std::string(kSmallModelToml) + R"(
[train]
steps = 20
global_batch = 8
micro_batch = 2
seq_len = 32
[optim]
lr = 1e-2
grad_clip = 0.5
warmup_steps = 3
[zero]
stage = 3
[checkpoint]
every = 10
keep = 3
)";
    reference_ = run(dstrain(2, args(suite_ / "ref")));
  }
  static void TearDownTestSuite() { fs::remove_all(suite_); }

  static std::string args(const fs::path& run_dir, const std::string& extra = "") {
    return "--config " + (suite_ / "small.toml").string() + " --set run.dir=" + run_dir.string() +
           " " + extra;
  }
  static fs::path ref() { return suite_ / "ref"; }
  static fs::path ckpt(const fs::path& run_dir, int step) {
    char name[32];
    std::snprintf(name, sizeof(name), "step-%08d", step);
    return run_dir / "checkpoints" / name;
  }
  void SetUp() override { ASSERT_EQ(reference_.exit_code, 0) << reference_.output; }
  std::vector<double> reference_tail() {
    std::vector<double> l = losses(ref());
    return std::vector<double>(l.begin() + 10, l.end());
  }

  static fs::path suite_;
  static RunResult reference_;
};

fs::path CheckpointE2e::suite_;
RunResult CheckpointE2e::reference_;

TEST_F(CheckpointE2e, ReferenceRunCommitsCheckpointsAndLogsThem) {
  EXPECT_TRUE(fs::exists(ckpt(ref(), 10) / "index.json"));
  EXPECT_TRUE(fs::exists(ckpt(ref(), 20) / "rank-00001.h5"));
  std::string latest;
  std::ifstream(ref() / "checkpoints" / "latest") >> latest;
  EXPECT_EQ(latest, "step-00000020");
  int events = 0;
  for (const auto& j : metrics(ref())) {
    if (j.value("event", "") != "checkpoint") continue;
    ++events;
    EXPECT_EQ(j["path"].get<std::string>(), ckpt(ref(), j["step"].get<int>()).string());
  }
  EXPECT_EQ(events, 2);
  EXPECT_NE(reference_.output.find("checkpoint: " + ckpt(ref(), 20).string()), std::string::npos)
      << reference_.output;

  RunResult r =
      run(std::string(DSTRAIN_BINARY) + " inspect --checkpoint " + ckpt(ref(), 20).string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* s : {"step 20, world size 2, zero stage 3, dtype fp32",
                        "model.embed_tokens.weight", "[259, 32]", "exp_avg_sq", "checksums: ok"}) {
    EXPECT_NE(r.output.find(s), std::string::npos) << s << "\n" << r.output;
  }
}

TEST_F(CheckpointE2e, ResumeAtTheSameWorldSizeIsBitIdentical) {
  const fs::path out = suite_ / "resumed";
  RunResult r = run(dstrain(2, args(out, "--resume " + ckpt(ref(), 10).string())));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(losses(out), reference_tail());
  const auto lines = metrics(out);
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines.front()["event"], "resume");
  EXPECT_EQ(lines.front()["step"], 10);
  EXPECT_EQ(lines.front()["path"], ckpt(ref(), 10).string());
  // Final parameters and optimizer moments, read back from both final checkpoints.
  const auto names = tensor_names(ckpt(ref(), 20));
  EXPECT_GT(names.size(), 10u);
  for (const auto& [kind, name] : names) {
    EXPECT_EQ(read_tensor(ckpt(out, 20), kind, name), read_tensor(ckpt(ref(), 20), kind, name))
        << kind << "/" << name;
  }
}

TEST_F(CheckpointE2e, ResumeAtOtherWorldSizesAndStages) {
  const std::vector<double> expect = reference_tail();
  struct Case {
    int ranks;
    int stage;
  };
  for (const Case c : {Case{1, 3}, Case{4, 3}, Case{2, 1}}) {
    const fs::path out = suite_ / ("w" + std::to_string(c.ranks) + "s" + std::to_string(c.stage));
    RunResult r = run(dstrain(c.ranks, args(out, "--set zero.stage=" + std::to_string(c.stage) +
                                                     " --resume " + ckpt(ref(), 10).string())));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const std::vector<double> got = losses(out);
    ASSERT_EQ(got.size(), expect.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_NEAR(got[i], expect[i], 1e-5 * std::abs(expect[i]))
          << c.ranks << " ranks, stage " << c.stage << ", step " << i + 11;
    }
  }
}

TEST_F(CheckpointE2e, ResumeWithOffloadedStateContinuesTheSameRun) {
  // A checkpoint does not depend on where the state lived: the reference's (no offload) resumes
  // with the optimizer, and the parameters, in host memory or on disk (paged in for the load,
  // and again for the final save, which must match).
  const std::vector<double> expect = reference_tail();
  const std::string nvme = " --set offload.nvme_dir=" + (suite_ / "nvme").string();
  for (const std::string& offload : std::vector<std::string>{
           "--set offload.optimizer=cpu", "--set offload.optimizer=cpu --set offload.params=cpu",
           "--set offload.optimizer=cpu --set offload.params=cpu --set offload.ratio=0.5",
           "--set offload.optimizer=nvme --set offload.params=nvme" + nvme}) {
    const fs::path out = suite_ / ("offload" + std::to_string(offload.size()));
    RunResult r = run(dstrain(2, args(out, offload + " --resume " + ckpt(ref(), 10).string())));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const std::vector<double> got = losses(out);
    ASSERT_EQ(got.size(), expect.size());
    for (size_t i = 0; i < got.size(); ++i) {
      EXPECT_NEAR(got[i], expect[i], 1e-6 * std::abs(expect[i])) << offload << ", step " << i + 11;
    }
  }
}

TEST_F(CheckpointE2e, CorruptCheckpointIsNamedAndSkipped) {
  const fs::path out = suite_ / "corrupt";
  fs::create_directories(out);
  fs::copy(ref() / "checkpoints", out / "checkpoints", fs::copy_options::recursive);
  const fs::path bad = ckpt(out, 20) / "rank-00001.h5";
  {
    std::fstream f(bad, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(0, std::ios::end);
    const auto size = static_cast<std::streamoff>(f.tellg());
    f.seekp(size / 2);
    f.put('\x5a');
  }
  RunResult inspect =
      run(std::string(DSTRAIN_BINARY) + " inspect --checkpoint " + ckpt(out, 20).string());
  EXPECT_EQ(inspect.exit_code, 3) << inspect.output;
  EXPECT_NE(inspect.output.find(bad.string() + ": checksum mismatch"), std::string::npos)
      << inspect.output;

  RunResult r = run(dstrain(2, args(out, "--resume " + ckpt(out, 20).string())));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find(bad.string()), std::string::npos) << r.output;

  r = run(dstrain(2, args(out)));  // --resume auto
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("checkpoint " + ckpt(out, 20).string() + " is corrupt"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("resuming from " + ckpt(out, 10).string()), std::string::npos)
      << r.output;
  EXPECT_EQ(losses(out), reference_tail());
}

// Damage found while loading (checkpoints are verified as they are read): a flipped byte in the
// middle of a file names the file and the block with its byte range, also when four ranks
// reshard a two-rank checkpoint; auto falls back to step 10, and the resume event names the
// checkpoint actually loaded.
TEST_F(CheckpointE2e, DamageFoundWhileLoadingIsNamedAndTheResumeEventNamesWhatLoaded) {
  const fs::path out = suite_ / "damaged_block";
  fs::create_directories(out);
  fs::copy(ref() / "checkpoints", out / "checkpoints", fs::copy_options::recursive);
  const fs::path bad = ckpt(out, 20) / "rank-00001.h5";
  const auto size = static_cast<int64_t>(fs::file_size(bad));
  {
    std::fstream f(bad, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(size / 2);
    const char c = static_cast<char>(f.get());
    f.seekp(size / 2);
    f.put(static_cast<char>(c ^ 0x5a));
  }
  nlohmann::json index = nlohmann::json::parse(std::ifstream(ckpt(out, 20) / "index.json"));
  const int64_t block = index["files"][1]["block_bytes"].get<int64_t>();
  const int64_t first = size / 2 / block * block;
  const std::string named = bad.string() + ": checksum mismatch in block " +
                            std::to_string(size / 2 / block) + " (bytes " + std::to_string(first) +
                            ".." + std::to_string(std::min(size, first + block)) + ")";

  RunResult r = run(dstrain(4, args(suite_ / "damaged_w4", "--resume " + ckpt(out, 20).string())));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find(named), std::string::npos) << r.output;

  r = run(dstrain(2, args(out)));  // --resume auto
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("checkpoint " + ckpt(out, 20).string() + " is corrupt (" + named),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("resumed from " + ckpt(out, 10).string() + " at step 10"),
            std::string::npos)
      << r.output;
  const auto lines = metrics(out);
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines.front()["event"], "resume");
  EXPECT_EQ(lines.front()["step"], 10);
  EXPECT_EQ(lines.front()["path"], ckpt(out, 10).string());
  EXPECT_EQ(losses(out), reference_tail());
}

// A short file is found before anything is loaded: named as truncated, skipped by auto.
TEST_F(CheckpointE2e, TruncatedFileIsNamedAndSkipped) {
  const fs::path out = suite_ / "truncated";
  fs::create_directories(out);
  fs::copy(ref() / "checkpoints", out / "checkpoints", fs::copy_options::recursive);
  const fs::path cut = ckpt(out, 20) / "rank-00000.h5";
  fs::resize_file(cut, fs::file_size(cut) / 2);
  RunResult r =
      run(dstrain(2, args(suite_ / "truncated_explicit", "--resume " + ckpt(out, 20).string())));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find(cut.string() + ": size "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("truncated"), std::string::npos) << r.output;

  r = run(dstrain(1, args(out)));  // --resume auto, resharded to one rank
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("checkpoint " + ckpt(out, 20).string() + " is corrupt (" + cut.string()),
            std::string::npos)
      << r.output;
  const auto lines = metrics(out);
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines.front()["path"], ckpt(out, 10).string());
  const std::vector<double> got = losses(out), expect = reference_tail();
  ASSERT_EQ(got.size(), expect.size());
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], expect[i], 1e-5 * std::abs(expect[i])) << i;
}

TEST_F(CheckpointE2e, UnfinishedWriteIsIgnoredAndCleanedUp) {
  // The state a crash during the step-20 save leaves: a partial step-20.tmp/, latest on step 10.
  const fs::path out = suite_ / "unfinished";
  fs::create_directories(out / "checkpoints");
  fs::copy(ckpt(ref(), 10), ckpt(out, 10), fs::copy_options::recursive);
  const fs::path tmp = ckpt(out, 20).string() + ".tmp";
  fs::create_directories(tmp);
  fs::copy_file(ckpt(ref(), 20) / "rank-00000.h5", tmp / "rank-00000.h5");
  fs::resize_file(tmp / "rank-00000.h5", 1000);
  std::ofstream(out / "checkpoints" / "latest") << "step-00000010\n";
  RunResult r = run(dstrain(2, args(out)));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(losses(out), reference_tail());
  EXPECT_FALSE(fs::exists(tmp));
  std::string latest;
  std::ifstream(out / "checkpoints" / "latest") >> latest;
  EXPECT_EQ(latest, "step-00000020");
}

TEST_F(CheckpointE2e, RankKilledWhileSavingLeavesLatestOnThePreviousCheckpoint) {
  // Every step checkpoints; the test-only delay holds each save open with step-N.tmp/ on disk.
  const fs::path out = suite_ / "killed";
  fs::create_directories(out);
  const std::string command = dstrain(2, args(out, "--set checkpoint.every=1")) + " > " +
                              (suite_ / "killed.log").string() + " 2>&1";
  const pid_t job = fork();
  ASSERT_GE(job, 0);
  if (job == 0) {
    setenv("DSTRAIN_TEST_CHECKPOINT_DELAY_MS", "2500", 1);
    execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  const fs::path committed = ckpt(out, 2);
  const fs::path writing = ckpt(out, 3).string() + ".tmp";
  pid_t victim = -1;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(240);
  while (std::chrono::steady_clock::now() < deadline) {
    if (latest_of(out) == "step-00000002" && fs::exists(writing)) {
      victim = find_rank(out.string(), 1);
      if (victim > 0) break;
    }
    if (waitpid(job, nullptr, WNOHANG) == job)
      FAIL() << "the run ended early:\n" << read_file(suite_ / "killed.log");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_GT(victim, 0) << "step-00000003.tmp never appeared beside latest = step-00000002\n"
                       << read_file(suite_ / "killed.log");
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(waitpid(job, &status, 0), job);
  EXPECT_FALSE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << read_file(suite_ / "killed.log");
  EXPECT_EQ(latest_of(out), "step-00000002");
  EXPECT_TRUE(fs::exists(committed / "index.json"));
  EXPECT_FALSE(fs::exists(ckpt(out, 3)));

  RunResult r = run(dstrain(2, args(out)));  // --resume auto, no delay
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from " + committed.string() + " at step 2"), std::string::npos)
      << r.output;
  const std::vector<double> all = losses(ref());
  EXPECT_EQ(losses_since_resume(out), std::vector<double>(all.begin() + 2, all.end()));
  EXPECT_EQ(latest_of(out), "step-00000020");
}

TEST_F(CheckpointE2e, AsyncSaveWritesTheSameCheckpointsAsSync) {
  // The test-only delay holds each save's copy of the state back until the next optimizer step
  // is due (a step of this model takes milliseconds): that step must wait for the copy, or
  // step 11's state would land in step-10.
  const fs::path out = suite_ / "async";
  RunResult r = run("DSTRAIN_TEST_SNAPSHOT_DELAY_MS=1000 " +
                    dstrain(2, args(out, "--set checkpoint.async=true")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(losses(out), losses(ref()));
  EXPECT_EQ(latest_of(out), "step-00000020");
  std::vector<int> events;
  for (const auto& j : metrics(out)) {
    if (j.value("event", "") != "checkpoint") continue;
    events.push_back(j["step"].get<int>());
    // The wait for the held-back copy counts as stall.
    EXPECT_GE(j["stall_s"].get<double>(), 0.5) << j.dump();
    EXPECT_LE(j["commit_s"].get<double>(), j["stall_s"].get<double>()) << j.dump();
  }
  EXPECT_EQ(events, (std::vector<int>{10, 20}));
  for (int step : {10, 20}) {
    RunResult inspect =
        run(std::string(DSTRAIN_BINARY) + " inspect --checkpoint " + ckpt(out, step).string());
    EXPECT_EQ(inspect.exit_code, 0) << inspect.output;
    for (const auto& [kind, name] : tensor_names(ckpt(ref(), step))) {
      EXPECT_EQ(read_tensor(ckpt(out, step), kind, name),
                read_tensor(ckpt(ref(), step), kind, name))
          << step << " " << kind << "/" << name;
    }
  }
  // And it resumes like any other checkpoint.
  const fs::path resumed = suite_ / "async_resumed";
  r = run(
      dstrain(2, args(resumed, "--set checkpoint.async=true --resume " + ckpt(out, 10).string())));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(losses(resumed), reference_tail());
}

TEST_F(CheckpointE2e, H5pyReadsANamedTensorThroughTheIndex) {
  // The snippet of docs/checkpoint-format.md, as a user would run it.
  const fs::path script = suite_ / "read.py";
  std::ofstream(script) << R"(import json, sys, h5py, numpy as np
ckpt, kind, name, out = sys.argv[1:5]
index = json.load(open(f"{ckpt}/index.json"))
t = index["tensors"][kind][name]
parts = []
for p in sorted(t["pieces"], key=lambda p: p["offset"]):
    with h5py.File(f"{ckpt}/{p['file']}", "r") as f:
        parts.append(f[p["dataset"]][...])
full = np.concatenate(parts).reshape(t["shape"])
full.astype(np.float32).tofile(out)
print(full.shape)
)";
  for (const char* name : {"model.embed_tokens.weight", "model.layers.1.mlp.down_proj.weight"}) {
    const fs::path raw = suite_ / "tensor.bin";
    RunResult r = run(std::string(DSTRAIN_PYTHON) + " " + script.string() + " " +
                      ckpt(ref(), 20).string() + " param " + name + " " + raw.string());
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const std::vector<float> expect = read_tensor(ckpt(ref(), 20), "param", name);
    std::vector<float> got(expect.size());
    std::ifstream(raw, std::ios::binary)
        .read(reinterpret_cast<char*>(got.data()),
              static_cast<std::streamsize>(got.size() * sizeof(float)));
    EXPECT_EQ(got, expect) << name;
    EXPECT_EQ(fs::file_size(raw), expect.size() * sizeof(float));
  }
}

}  // namespace
