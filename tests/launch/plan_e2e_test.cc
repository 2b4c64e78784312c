// `dstrain plan` as users and scripts see it: a Hugging Face directory's config.json alone, the
// verdict against the hardware given, the suggested change (which fits when planned again), and
// exit code 0 whether it fits or not.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "tests/launch/e2e_util.h"

namespace dstrain::e2e {
namespace {

std::string temp_dir(const std::string& name) {
  const std::string dir =
      (std::filesystem::temp_directory_path() / ("dstrain-plan-e2e-" + name)).string();
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// A Llama-3-8B-shaped config.json: no weights, no tokenizer.
std::string hf_dir() {
  const std::string dir = temp_dir("hf");
  std::ofstream(dir + "/config.json")
      << R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
  "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
  "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
  "rope_theta": 500000.0, "max_position_embeddings": 8192, "tie_word_embeddings": false})";
  return dir;
}

nlohmann::json plan_json(const std::string& args) {
  RunResult r = run(std::string(DSTRAIN_BINARY) + " plan --json " + args, /*with_stderr=*/false);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  return r.exit_code == 0 ? nlohmann::json::parse(r.output) : nlohmann::json();
}

TEST(PlanE2e, AHuggingFaceConfigAloneIsEnough) {
  const std::string dir = hf_dir();
  nlohmann::json j =
      plan_json("--hf-dir " + dir + " --world 8 --ranks-per-node 8 --gpu-mem 80" +
                " --set train.dtype=bf16 --set zero.stage=3 --set train.seq_len=2048" +
                " --set train.micro_batch=1 --set train.global_batch=8");
  ASSERT_FALSE(j.is_null());
  EXPECT_NEAR(j["parameters"].get<double>(), 8.03e9, 0.01e9);
  EXPECT_EQ(j["comm"]["ranks_per_node"], 8);
  EXPECT_EQ(j["comm"]["inter_node_bytes_per_step"], 0);
  EXPECT_GT(j["comm"]["intra_node_bytes_per_step"].get<int64_t>(), 0);
  EXPECT_GT(j["device_bytes"]["activations"].get<int64_t>(), 0);
  EXPECT_TRUE(j["fits"].get<bool>()) << j.dump(2);

  // Two nodes of four: part of the ring's bytes cross nodes.
  j = plan_json("--hf-dir " + dir + " --world 8 --ranks-per-node 4 --set zero.stage=3");
  EXPECT_GT(j["comm"]["inter_node_bytes_per_step"].get<int64_t>(), 0);
}

TEST(PlanE2e, ADoesNotFitVerdictNamesAChangeThatFits) {
  const std::string dir = hf_dir();
  const std::string base =
      "--hf-dir " + dir + " --gpu-mem 80 --set train.dtype=bf16 --set zero.stage=0" +
      " --set train.seq_len=4096 --set train.micro_batch=1 --set train.global_batch=8";
  nlohmann::json j = plan_json(base + " --world 8");
  ASSERT_FALSE(j.is_null());
  EXPECT_FALSE(j["fits"].get<bool>());
  ASSERT_FALSE(j["problems"].empty());
  EXPECT_EQ(j["problems"][0].get<std::string>().rfind("gpu memory", 0), 0u) << j["problems"];
  ASSERT_TRUE(j.contains("suggestion")) << j.dump(2);
  ASSERT_FALSE(j["fixes"].empty());
  const std::string change = j["fixes"][0]["change"];
  EXPECT_LE(j["fixes"][0]["device_peak_bytes"].get<int64_t>(), int64_t{80} << 30);

  // The table says the same, and a plain run still exits 0.
  RunResult table = run(std::string(DSTRAIN_BINARY) + " plan " + base + " --world 8");
  EXPECT_EQ(table.exit_code, 0) << table.output;
  EXPECT_NE(table.output.find("does not fit: gpu memory"), std::string::npos) << table.output;
  EXPECT_NE(table.output.find("smallest change that fits: " + change), std::string::npos)
      << table.output;
}

TEST(PlanE2e, UsageAndInputErrorsKeepTheirExitCodes) {
  EXPECT_EQ(run(std::string(DSTRAIN_BINARY) + " plan --world 2").exit_code, 2);
  EXPECT_EQ(
      run(std::string(DSTRAIN_BINARY) + " plan --hf-dir /nonexistent-dir --gpu-mem -1").exit_code,
      2);
  const std::string empty = temp_dir("empty");
  EXPECT_EQ(run(std::string(DSTRAIN_BINARY) + " plan --hf-dir " + empty).exit_code, 3);
}

}  // namespace
}  // namespace dstrain::e2e
