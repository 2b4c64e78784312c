// run.profile_start / run.profile_steps: the torch profiler records the chosen steps and each
// rank writes a Chrome trace that names the operators that ran.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "tests/launch/e2e_run_dir.h"
#include "tests/launch/e2e_util.h"

namespace {

namespace fs = std::filesystem;
using dstrain::e2e::RunResult;

TEST(ProfileE2e, EachRankWritesATraceOfTheProfiledSteps) {
  const fs::path dir = fs::temp_directory_path() / ("dstrain_profile_" + std::to_string(getpid()));
  fs::remove_all(dir);
  const RunResult r = dstrain::e2e::run(dstrain::e2e::dstrain(
      2, "--config " DSTRAIN_SOURCE_DIR "/configs/tiny.toml --set run.device=cpu --set run.dir=" +
             dir.string() +
             " --set train.steps=4 --set checkpoint.enabled=false --set run.profile_start=2"
             " --set run.profile_steps=2"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (int rank : {0, 1}) {
    const fs::path trace = dir / "profile" / ("rank" + std::to_string(rank) + ".json");
    ASSERT_TRUE(fs::exists(trace)) << trace;
    const nlohmann::json j = nlohmann::json::parse(dstrain::e2e::read_file(trace), nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << trace << " is not JSON";
    std::set<std::string> names;
    for (const nlohmann::json& e : j["traceEvents"]) {
      if (e.contains("name") && e["name"].is_string()) names.insert(e["name"].get<std::string>());
    }
    // The model's matmuls and the optimizer ran inside the window.
    EXPECT_TRUE(names.count("aten::mm") || names.count("aten::addmm") ||
                names.count("aten::matmul"))
        << trace;
    EXPECT_GT(names.size(), 20u) << trace;
  }
  fs::remove_all(dir);
}

}  // namespace
