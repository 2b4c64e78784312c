// check_hf_checkpoint: what a checkpoint must hold for the model before any weight is read.
// Files are written with hf::write_safetensors from each test's own tensor list.
#include "runtime/hf_model/hf_weights.h"

#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "runtime/hf/safetensors.h"
#include "runtime/hf/sharded_index.h"
#include "runtime/model/llama.h"
#include "runtime/model/lora.h"
#include "tests/runtime/hf_model/scratch_dir.h"

namespace dstrain::runtime::hf_model {
namespace {

base::ModelConfig tiny(bool tie) {
  base::ModelConfig cfg;
  cfg.vocab_size = 16;
  cfg.hidden_size = 8;
  cfg.intermediate_size = 12;
  cfg.num_layers = 2;
  cfg.num_heads = 2;
  cfg.num_kv_heads = 1;
  cfg.tie_embeddings = tie;
  return cfg;
}

// name -> (dtype, shape); the file's bytes are zeros.
using Spec = std::map<std::string, std::pair<std::string, std::vector<int64_t>>>;

// Every tensor the schema owns, as F32 (tied slots left out, as save_pretrained does).
Spec schema_tensors(const base::UnitList& units) {
  Spec out;
  for (const auto& unit : units) {
    for (const base::ParamSpec& p : unit->schema()) {
      if (p.tied_to.empty()) out[p.name] = {"F32", p.shape};
    }
  }
  return out;
}

class CheckpointCheck : public ::testing::Test {
 protected:
  // Writes `spec` as model.safetensors and checks it against `units`.
  base::Status check(const Spec& spec, const base::UnitList& units) {
    std::vector<std::vector<uint8_t>> storage;
    std::vector<hf::TensorData> tensors;
    for (const auto& [name, entry] : spec) {
      uint64_t n = hf::dtype_size(entry.first);
      for (int64_t d : entry.second) n *= static_cast<uint64_t>(d);
      storage.emplace_back(n, 0);
      tensors.push_back({name, entry.first, entry.second, storage.back().data(), n});
    }
    const base::Status written = hf::write_safetensors(path(), tensors, {{"format", "pt"}});
    EXPECT_TRUE(written.ok()) << written.to_string();
    auto ckpt = hf::open_checkpoint_dir(dir_.path());
    EXPECT_TRUE(ckpt.ok()) << ckpt.status().to_string();
    if (!ckpt.ok()) return ckpt.status();
    return check_hf_checkpoint(*ckpt, units);
  }

  // Expects kBadInput naming the file, the tensor and `problem`.
  void expect_bad(const base::Status& s, const std::string& tensor, const std::string& problem) {
    EXPECT_EQ(s.code(), base::StatusCode::kBadInput) << s.to_string();
    EXPECT_NE(s.message().find(path()), std::string::npos) << s.message();
    EXPECT_NE(s.message().find(tensor), std::string::npos) << s.message();
    EXPECT_NE(s.message().find(problem), std::string::npos) << s.message();
  }

  std::string path() const { return dir_.file("model.safetensors"); }

  ScratchDir dir_;
};

TEST_F(CheckpointCheck, AcceptsCompleteCheckpointInEachFloatDtype) {
  const base::UnitList units = build_llama(tiny(false));
  Spec spec = schema_tensors(units);
  EXPECT_TRUE(check(spec, units).ok());
  const char* dtypes[] = {"BF16", "F16", "F32"};
  int i = 0;
  for (auto& [name, entry] : spec) entry.first = dtypes[i++ % 3];
  const base::Status s = check(spec, units);
  EXPECT_TRUE(s.ok()) << s.to_string();
}

TEST_F(CheckpointCheck, RefusesMissingTensor) {
  const base::UnitList units = build_llama(tiny(false));
  Spec spec = schema_tensors(units);
  spec.erase("model.layers.1.self_attn.q_proj.weight");
  expect_bad(check(spec, units), "model.layers.1.self_attn.q_proj.weight", "");
}

TEST_F(CheckpointCheck, LmHeadMayBeAbsentOnlyWhenTied) {
  const base::UnitList tied = build_llama(tiny(true));
  Spec spec = schema_tensors(tied);
  ASSERT_EQ(spec.count("lm_head.weight"), 0u);
  const base::Status s = check(spec, tied);
  EXPECT_TRUE(s.ok()) << s.to_string();

  const base::UnitList untied = build_llama(tiny(false));
  expect_bad(check(spec, untied), "lm_head.weight", "");
}

TEST_F(CheckpointCheck, RefusesWrongShape) {
  const base::UnitList units = build_llama(tiny(false));
  Spec spec = schema_tensors(units);
  spec["model.layers.0.mlp.up_proj.weight"].second = {12, 9};
  expect_bad(check(spec, units), "model.layers.0.mlp.up_proj.weight", "shape [12, 9]");
}

TEST_F(CheckpointCheck, RefusesNonFloatDtype) {
  const base::UnitList units = build_llama(tiny(false));
  Spec spec = schema_tensors(units);
  spec["model.norm.weight"].first = "I32";
  expect_bad(check(spec, units), "model.norm.weight", "dtype I32");
  spec["model.norm.weight"].first = "F64";
  expect_bad(check(spec, units), "model.norm.weight", "dtype F64");
}

TEST_F(CheckpointCheck, IgnoresBuffersButRefusesUnknownWeights) {
  const base::UnitList units = build_llama(tiny(false));
  Spec spec = schema_tensors(units);
  spec["model.layers.0.self_attn.rotary_emb.inv_freq"] = {"F32", {2}};
  const base::Status s = check(spec, units);
  EXPECT_TRUE(s.ok()) << s.to_string();

  // A q/k/v bias where config.json says there is none: the file is another model.
  spec["model.layers.0.self_attn.q_proj.bias"] = {"F32", {8}};
  expect_bad(check(spec, units), "model.layers.0.self_attn.q_proj.bias", "not a parameter");
}

// A base checkpoint under LoRA: adapters are absent from the file and keep their initialisation,
// while every frozen base weight must still be there.
TEST_F(CheckpointCheck, AdaptersMayBeAbsentBaseWeightsMayNot) {
  base::UnitList units = build_llama(tiny(false));
  Spec spec = schema_tensors(units);
  base::LoraConfig lora;
  lora.targets = {"q", "v"};
  ASSERT_TRUE(apply_lora(units, lora).ok());
  const base::Status s = check(spec, units);
  EXPECT_TRUE(s.ok()) << s.to_string();
  spec.erase("model.layers.0.self_attn.v_proj.weight");
  expect_bad(check(spec, units), "model.layers.0.self_attn.v_proj.weight", "");
}

}  // namespace
}  // namespace dstrain::runtime::hf_model
