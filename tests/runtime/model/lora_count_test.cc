// dstrain trains exactly as many LoRA parameters as PEFT for the same model, targets and rank:
// tiny Llama and tied-embedding Qwen2 models, targets {q,v}, all-linear and {gate,up,down}, with
// PEFT's counts written by make_lora_counts.py (ctest fixture model_lora_counts_data).
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "base/config.h"
#include "runtime/hf_model/hf_config.h"
#include "runtime/model/llama.h"
#include "runtime/model/lora.h"

namespace dstrain::runtime {
namespace {

using nlohmann::json;

struct Counts {
  int64_t trainable = 0;
  int64_t total = 0;  // every parameter once: a tied LM head is the embedding
};

Counts count(const base::UnitList& units) {
  Counts c;
  for (const auto& unit : units) {
    for (const base::ParamSpec& spec : unit->schema()) {
      if (!spec.tied_to.empty()) continue;
      c.total += spec.numel();
      if (spec.trainable) c.trainable += spec.numel();
    }
  }
  return c;
}

void check_case(const std::string& name) {
  const char* root = std::getenv("DSTRAIN_MODEL_LORA_COUNTS");
  ASSERT_NE(root, nullptr) << "DSTRAIN_MODEL_LORA_COUNTS is unset (run through ctest: "
                              "model_lora_counts)";
  const std::string dir = std::string(root) + "/" + name;
  std::ifstream in(dir + "/counts.json");
  ASSERT_TRUE(in.good()) << "no " << dir << "/counts.json";
  const json peft = json::parse(in);

  auto cfg = hf_model::model_config_from_hf_dir(dir);
  ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
  base::UnitList units = build_llama(*cfg);
  const Counts plain = count(units);
  ASSERT_EQ(plain.trainable, plain.total);

  base::LoraConfig lora;
  lora.enabled = true;
  lora.rank = peft.at("rank").get<int64_t>();
  lora.alpha = 2.0 * static_cast<double>(lora.rank);
  lora.targets = peft.at("targets").get<std::vector<std::string>>();
  const base::Status applied = apply_lora(units, lora);
  ASSERT_TRUE(applied.ok()) << applied.to_string();
  const Counts adapted = count(units);

  EXPECT_EQ(adapted.trainable, peft.at("trainable").get<int64_t>()) << name;
  EXPECT_EQ(adapted.total, peft.at("total").get<int64_t>()) << name;
  // The adapters are all that is new, and all that trains.
  EXPECT_EQ(adapted.total - plain.total, adapted.trainable) << name;
}

TEST(LoraCount, LlamaQV) { check_case("llama_qv"); }
TEST(LoraCount, LlamaAllLinear) { check_case("llama_all_linear"); }
TEST(LoraCount, LlamaMlp) { check_case("llama_mlp"); }
TEST(LoraCount, Qwen2TiedQV) { check_case("qwen2_tied_qv"); }
TEST(LoraCount, Qwen2TiedAllLinear) { check_case("qwen2_tied_all_linear"); }
TEST(LoraCount, Qwen2TiedMlp) { check_case("qwen2_tied_mlp"); }

}  // namespace
}  // namespace dstrain::runtime
