// data.packing and data.eval_fraction end to end: the same losses at 1 and 2 ranks with packed
// sequences, and a held-out share of the training file evaluated into metrics.jsonl and
// TensorBoard.
#include <gtest/gtest.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "tests/launch/e2e_util.h"

namespace {

using dstrain::e2e::dstrain;
using dstrain::e2e::kSmallModelToml;
using dstrain::e2e::run;
using dstrain::e2e::RunResult;

namespace fs = std::filesystem;

class PackingE2e : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("dstrain_packing_e2e_" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Prompt/completion records of 10..60 bytes, prepared with the byte tokenizer.
  std::string sft_file() {
    const fs::path jsonl = dir_ / "sft.jsonl";
    {
      std::ofstream out(jsonl);
      for (int i = 0; i < 160; ++i) {
        nlohmann::json record = {
            {"prompt", "Question " + std::to_string(i) + ": " + std::string(i % 23, 'q')},
            {"completion", " answer " + std::string(3 + (i * 7) % 29, 'a' + i % 5)}};
        out << record.dump() << "\n";
      }
    }
    const std::string tok = (dir_ / "sft.dstok").string();
    RunResult prep = run(std::string(DSTRAIN_BINARY) + " prepare --format sft --input " +
                         jsonl.string() + " --output " + tok);
    EXPECT_EQ(prep.exit_code, 0) << prep.output;
    return tok;
  }

  std::string config(const std::string& data_file) {
    const fs::path p = dir_ / "packing.toml";
    std::ofstream(p) << kSmallModelToml << R"(
[data]
path = ")" << data_file
                     << R"("
format = "sft"
packing = true
eval_fraction = 0.1
eval_batches = 2
[train]
steps = 6
global_batch = 4
micro_batch = 2
seq_len = 96
eval_every = 3
[optim]
lr = 1e-2
[checkpoint]
enabled = false
)";
    return p.string();
  }

  static std::vector<nlohmann::json> lines(const std::string& run_dir) {
    std::vector<nlohmann::json> out;
    std::ifstream in(fs::path(run_dir) / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
    return out;
  }

  fs::path dir_;
};

TEST_F(PackingE2e, PackedLossesAgreeAcrossWorldSizesAndEvaluationIsLogged) {
  const std::string cfg = config(sft_file());
  std::vector<std::vector<double>> losses;
  for (int ranks : {1, 2}) {
    const std::string out = (dir_ / ("np" + std::to_string(ranks))).string();
    RunResult r = run(dstrain(ranks, "--config " + cfg + " --set run.dir=" + out));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    std::vector<double> loss;
    int evals = 0;
    for (const auto& j : lines(out)) {
      if (j.contains("loss")) loss.push_back(j["loss"].get<double>());
      if (!j.contains("eval_loss")) continue;
      ++evals;
      EXPECT_EQ(j["step"].get<int>() % 3, 0);
      const double eval_loss = j["eval_loss"].get<double>();
      ASSERT_TRUE(std::isfinite(eval_loss));
      EXPECT_NEAR(j["eval_ppl"].get<double>(), std::exp(eval_loss), 1e-9 * std::exp(eval_loss));
    }
    EXPECT_EQ(evals, 2);
    ASSERT_EQ(loss.size(), 6u) << r.output;
    losses.push_back(loss);
    // TensorBoard's reader sees what metrics.jsonl says, eval/loss and eval/perplexity included.
    RunResult tb = run(std::string(DSTRAIN_PYTHON) + " " + DSTRAIN_SOURCE_DIR +
                       "/tests/runtime/tensorboard_check.py " + out);
    if (tb.exit_code != 77) EXPECT_EQ(tb.exit_code, 0) << tb.output;
  }
  for (size_t i = 0; i < losses[0].size(); ++i) {
    EXPECT_NEAR(losses[1][i], losses[0][i], 1e-5 * losses[0][i]) << "step " << i + 1;
  }
  EXPECT_LT(losses[0].back(), losses[0].front());
}

TEST_F(PackingE2e, PackingAPlainStreamExitsThreeNamingTheFile) {
  const std::string cfg = config("");
  const std::string out = (dir_ / "stream").string();
  // The demo corpus is a plain stream without document offsets.
  RunResult r =
      run(dstrain(1, "--config " + cfg + " --set data.format=tokens --set run.dir=" + out));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("data.packing"), std::string::npos) << r.output;
}

}  // namespace
