// config.json -> ModelConfig: each architecture's defaults and flags, both rope encodings, and
// refusals (kBadInput naming the file and the key) for what the decoder cannot represent.
#include "runtime/hf_model/hf_config.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "tests/runtime/hf_model/scratch_dir.h"

namespace dstrain::runtime::hf_model {
namespace {

using nlohmann::json;

constexpr char kOrigin[] = "/models/x/config.json";

json llama_json() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
    "vocab_size": 96, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-05,
    "max_position_embeddings": 256, "attention_bias": false, "mlp_bias": true,
    "tie_word_embeddings": false,
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 64}})");
}

json qwen2_json() {
  return json::parse(R"({
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 96,
    "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 1, "rms_norm_eps": 1e-06,
    "max_position_embeddings": 256, "tie_word_embeddings": true, "use_sliding_window": false,
    "sliding_window": 4096, "max_window_layers": 28,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}})");
}

json mistral_json() {
  return json::parse(R"({
    "architectures": ["MistralForCausalLM"], "model_type": "mistral", "vocab_size": 96,
    "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": null,
    "sliding_window": 8, "rope_theta": 10000.0})");
}

// Maps `j` and expects kBadInput whose message names the file and contains `needle`.
void expect_refused(const json& j, const std::string& needle) {
  auto cfg = model_config_from_hf_json(j, kOrigin);
  ASSERT_FALSE(cfg.ok()) << "accepted: " << j.dump();
  EXPECT_EQ(cfg.status().code(), base::StatusCode::kBadInput) << cfg.status().to_string();
  EXPECT_NE(cfg.status().message().find(kOrigin), std::string::npos) << cfg.status().message();
  EXPECT_NE(cfg.status().message().find(needle), std::string::npos) << cfg.status().message();
}

TEST(HfConfig, MapsLlamaWithLlama3Rope) {
  auto cfg = model_config_from_hf_json(llama_json(), kOrigin);
  ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
  EXPECT_EQ(cfg->architecture, "llama");
  EXPECT_EQ(cfg->vocab_size, 96);
  EXPECT_EQ(cfg->hidden_size, 48);
  EXPECT_EQ(cfg->intermediate_size, 80);
  EXPECT_EQ(cfg->num_layers, 2);
  EXPECT_EQ(cfg->num_heads, 4);
  EXPECT_EQ(cfg->num_kv_heads, 2);
  EXPECT_EQ(cfg->head_dim, 16);
  EXPECT_DOUBLE_EQ(cfg->rms_norm_eps, 1e-5);
  EXPECT_EQ(cfg->max_position_embeddings, 256);
  EXPECT_FALSE(cfg->attention_bias);
  EXPECT_TRUE(cfg->mlp_bias);
  EXPECT_FALSE(cfg->tie_embeddings);
  EXPECT_EQ(cfg->sliding_window, 0);
  EXPECT_DOUBLE_EQ(cfg->rope_theta, 500000.0);
  EXPECT_EQ(cfg->rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(cfg->rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(cfg->rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(cfg->rope_scaling.original_max_position_embeddings, 64);
}

// transformers 4 wrote rope_theta at the top level and the scaling as rope_scaling {"type": ..}.
TEST(HfConfig, MapsOlderRopeScalingEncoding) {
  json j = llama_json();
  j.erase("rope_parameters");
  j["rope_theta"] = 250000.0;
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  auto cfg = model_config_from_hf_json(j, kOrigin);
  ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
  EXPECT_DOUBLE_EQ(cfg->rope_theta, 250000.0);
  EXPECT_EQ(cfg->rope_scaling.type, "linear");
  EXPECT_DOUBLE_EQ(cfg->rope_scaling.factor, 2.0);

  j["rope_scaling"] = nullptr;
  cfg = model_config_from_hf_json(j, kOrigin);
  ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
  EXPECT_EQ(cfg->rope_scaling.type, "none");
}

TEST(HfConfig, Qwen2HasQkvBiasesAndTies) {
  auto cfg = model_config_from_hf_json(qwen2_json(), kOrigin);
  ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
  EXPECT_EQ(cfg->architecture, "qwen2");
  EXPECT_TRUE(cfg->attention_bias);
  EXPECT_FALSE(cfg->mlp_bias);
  EXPECT_TRUE(cfg->tie_embeddings);
  EXPECT_EQ(cfg->head_dim, 0);
  EXPECT_EQ(cfg->sliding_window, 0) << "use_sliding_window is false";
  EXPECT_EQ(cfg->rope_scaling.type, "none");
  EXPECT_DOUBLE_EQ(cfg->rope_theta, 1e6);
}

TEST(HfConfig, Qwen2SlidingWindowOnlyWhenEveryLayerAgrees) {
  json j = qwen2_json();
  j["use_sliding_window"] = true;
  j["sliding_window"] = 16;
  j["max_window_layers"] = 0;  // layers >= 0 slide: all of them
  auto cfg = model_config_from_hf_json(j, kOrigin);
  ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
  EXPECT_EQ(cfg->sliding_window, 16);

  j["max_window_layers"] = 2;  // no layer slides
  cfg = model_config_from_hf_json(j, kOrigin);
  ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
  EXPECT_EQ(cfg->sliding_window, 0);

  j["max_window_layers"] = 1;
  expect_refused(j, "max_window_layers");

  j["layer_types"] = {"full_attention", "sliding_attention"};
  expect_refused(j, "layer_types");
  j["layer_types"] = {"sliding_attention", "sliding_attention"};
  cfg = model_config_from_hf_json(j, kOrigin);
  ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
  EXPECT_EQ(cfg->sliding_window, 16);
}

TEST(HfConfig, MistralSlidingWindowUnlessNull) {
  auto cfg = model_config_from_hf_json(mistral_json(), kOrigin);
  ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
  EXPECT_EQ(cfg->architecture, "mistral");
  EXPECT_EQ(cfg->sliding_window, 8);
  EXPECT_FALSE(cfg->attention_bias);
  EXPECT_EQ(cfg->head_dim, 0);
  EXPECT_DOUBLE_EQ(cfg->rms_norm_eps, 1e-6) << "MistralConfig's default";
  EXPECT_EQ(cfg->max_position_embeddings, 4096 * 32) << "MistralConfig's default";

  json j = mistral_json();
  j["sliding_window"] = nullptr;
  cfg = model_config_from_hf_json(j, kOrigin);
  ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
  EXPECT_EQ(cfg->sliding_window, 0);
  j.erase("sliding_window");
  cfg = model_config_from_hf_json(j, kOrigin);
  ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
  EXPECT_EQ(cfg->sliding_window, 4096) << "MistralConfig's default";
}

TEST(HfConfig, ModelTypeStandsInForArchitectures) {
  json j = qwen2_json();
  j.erase("architectures");
  auto cfg = model_config_from_hf_json(j, kOrigin);
  ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
  EXPECT_EQ(cfg->architecture, "qwen2");
  j["model_type"] = "gpt2";
  expect_refused(j, "model_type");
}

TEST(HfConfig, RefusesUnsupportedArchitecture) {
  json j = llama_json();
  j["architectures"] = {"Qwen3ForCausalLM"};
  expect_refused(j, "Qwen3ForCausalLM");
  j["architectures"] = json::array();
  expect_refused(j, "architectures");
}

TEST(HfConfig, RefusesRopeVariantsTheDecoderLacks) {
  json j = llama_json();
  j["rope_parameters"] = {{"rope_type", "longrope"},
                          {"rope_theta", 10000.0},
                          {"short_factor", {1.0}},
                          {"long_factor", {1.0}}};
  expect_refused(j, "rope_parameters.rope_type");
  j["rope_parameters"] = {
      {"rope_type", "default"}, {"rope_theta", 10000.0}, {"partial_rotary_factor", 0.5}};
  expect_refused(j, "partial_rotary_factor");
  j["rope_parameters"] = {
      {"rope_type", "yarn"}, {"rope_theta", 10000.0}, {"factor", 4.0}, {"attention_factor", 2.0}};
  expect_refused(j, "rope_parameters.attention_factor");
}

TEST(HfConfig, RefusesMissingAndMistypedKeys) {
  json j = llama_json();
  j.erase("vocab_size");
  expect_refused(j, "\"vocab_size\" is missing");
  j = llama_json();
  j["hidden_size"] = "48";
  expect_refused(j, "\"hidden_size\" must be an integer");
  j = llama_json();
  j["tie_word_embeddings"] = 1;
  expect_refused(j, "tie_word_embeddings");
  j = llama_json();
  j["hidden_act"] = "gelu";
  expect_refused(j, "hidden_act");
}

TEST(HfConfig, RefusesShapesTheDecoderCannotBuild) {
  json j = llama_json();
  j["num_key_value_heads"] = 3;  // 4 heads are not a multiple of 3 KV heads
  expect_refused(j, "num_kv_heads");
}

TEST(HfConfig, FromDirKeepsTheDirectory) {
  ScratchDir dir;
  dir.write("config.json", qwen2_json().dump());
  auto cfg = model_config_from_hf_dir(dir.path());
  ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
  EXPECT_EQ(cfg->hf_dir, dir.path());
  EXPECT_EQ(cfg->num_kv_heads, 1);

  dir.write("config.json", "{\"vocab_size\": 1, \"vocab_size\": 2}");
  cfg = model_config_from_hf_dir(dir.path());
  EXPECT_EQ(cfg.status().code(), base::StatusCode::kBadInput);
  EXPECT_NE(cfg.status().message().find(dir.file("config.json")), std::string::npos)
      << cfg.status().message();

  auto missing = model_config_from_hf_dir(dir.file("absent"));
  EXPECT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("config.json"), std::string::npos);
}

}  // namespace
}  // namespace dstrain::runtime::hf_model
