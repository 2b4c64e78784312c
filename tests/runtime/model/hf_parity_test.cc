// Parity with Hugging Face transformers: logits, loss and gradients of tiny random models
// written by make_hf_reference.py (ctest fixture model_hf_reference_data).
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "base/config.h"
#include "runtime/hf_model/hf_config.h"
#include "runtime/model/llama.h"
#include "runtime/model/lora.h"
#include "runtime/model/rope.h"

namespace dstrain::runtime {
namespace {

using nlohmann::json;

json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  return json::parse(in);
}

// The test's own tensor files: manifest.json + raw little-endian fp32/int64 .bin files.
std::map<std::string, at::Tensor> read_tensors(const std::string& dir) {
  std::map<std::string, at::Tensor> out;
  const json manifest = read_json(dir + "/manifest.json");
  for (const auto& [name, entry] : manifest.at("tensors").items()) {
    const std::vector<int64_t> shape = entry.at("shape").get<std::vector<int64_t>>();
    const bool is_int = entry.at("dtype").get<std::string>() == "i64";
    at::Tensor t = at::empty(shape, is_int ? at::kLong : at::kFloat);
    std::ifstream in(dir + "/" + entry.at("file").get<std::string>(), std::ios::binary);
    in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
    EXPECT_TRUE(in.good()) << name << ": short file";
    out[name] = t;
  }
  return out;
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

void check_case(const std::string& name) {
  const char* root = std::getenv("DSTRAIN_MODEL_HF_REF");
  ASSERT_NE(root, nullptr) << "DSTRAIN_MODEL_HF_REF is unset (run through ctest: model_hf_parity)";
  const std::string dir = std::string(root) + "/" + name;
  auto mapped = hf_model::model_config_from_hf_dir(dir);
  ASSERT_TRUE(mapped.ok()) << mapped.status().to_string();
  const base::ModelConfig cfg = *mapped;
  const base::Status valid = validate_llama_config(cfg);
  ASSERT_TRUE(valid.ok()) << valid.to_string();
  std::map<std::string, at::Tensor> ref = read_tensors(dir);

  // Every HF parameter must land in exactly one schema slot.
  base::UnitList units = build_llama(cfg);
  // LoRA cases (PEFT on the HF side): the same adapters through apply_lora.
  std::ifstream lora_file(dir + "/lora.json");
  if (lora_file) {
    const json l = json::parse(lora_file);
    base::LoraConfig lora;
    lora.enabled = true;
    lora.rank = l["rank"].get<int64_t>();
    lora.alpha = l["alpha"].get<double>();
    lora.rslora = l["rslora"].get<bool>();
    lora.targets = l["targets"].get<std::vector<std::string>>();
    const base::Status applied = apply_lora(units, lora);
    ASSERT_TRUE(applied.ok()) << applied.to_string();
  }
  std::set<std::string> trainable;
  for (const auto& unit : units) {
    for (const base::ParamSpec& spec : unit->schema()) {
      if (spec.trainable && spec.tied_to.empty()) trainable.insert(spec.name);
    }
  }
  std::vector<std::vector<at::Tensor>> params(units.size());
  std::map<std::string, at::Tensor> owned;
  for (size_t u = 0; u < units.size(); ++u) {
    for (const base::ParamSpec& spec : units[u]->schema()) {
      if (!spec.tied_to.empty()) {
        ASSERT_TRUE(owned.count(spec.tied_to)) << spec.name;
        params[u].push_back(owned[spec.tied_to]);
        continue;
      }
      auto it = ref.find("param:" + spec.name);
      ASSERT_NE(it, ref.end()) << "no HF parameter " << spec.name;
      ASSERT_EQ(it->second.sizes(), at::IntArrayRef(spec.shape)) << spec.name;
      at::Tensor p = it->second.clone().requires_grad_(true);
      owned[spec.name] = p;
      params[u].push_back(p);
    }
  }
  for (const auto& [key, tensor] : ref) {
    if (key.rfind("param:", 0) == 0) {
      EXPECT_TRUE(owned.count(key.substr(6))) << "HF parameter without a slot: " << key;
    }
  }

  const at::Tensor ids = ref.at("input_ids");
  const int64_t batch = ids.size(0);
  const int64_t seq = ids.size(1);
  const at::Tensor positions = at::arange(seq, at::kLong).unsqueeze(0).expand({batch, seq});
  const base::StepContext ctx = make_step_context(cfg, positions, at::kFloat);
  const at::Tensor logits = forward_all(units, params, ids, ctx);
  ASSERT_EQ(logits.sizes(), ref.at("logits").sizes());
  EXPECT_LE(max_abs_diff(logits, ref.at("logits")), 1e-4) << name << ": logits";

  const int64_t vocab = cfg.vocab_size;
  const at::Tensor loss = at::cross_entropy_loss(logits.narrow(1, 0, seq - 1).reshape({-1, vocab}),
                                                 ids.narrow(1, 1, seq - 1).reshape(-1));
  EXPECT_NEAR(loss.item<double>(), ref.at("loss").item<double>(), 1e-5) << name << ": loss";

  loss.backward();
  double worst_grad = 0.0;
  for (const auto& [pname, p] : owned) {
    // Frozen on one side means frozen on the other: HF gives no gradient for it.
    ASSERT_EQ(trainable.count(pname) == 1, ref.count("grad:" + pname) == 1) << pname;
    if (!trainable.count(pname)) continue;
    const at::Tensor& want = ref.at("grad:" + pname);
    ASSERT_TRUE(p.grad().defined()) << pname << ": no gradient";
    const double scale = want.abs().max().item<double>();
    const double diff = max_abs_diff(p.grad(), want);
    EXPECT_LE(diff, 1e-4 * scale + 1e-7)
        << name << ": gradient of " << pname << " (max |grad| " << scale << ")";
    worst_grad = std::max(worst_grad, diff / (scale + 1e-30));
  }
  std::printf("%s: max |logit diff| %.2e, worst gradient diff / max |grad| %.2e\n", name.c_str(),
              max_abs_diff(logits, ref.at("logits")), worst_grad);
}

TEST(HfParity, LlamaLlama3RopeGqaHeadDim) { check_case("llama3_gqa"); }
TEST(HfParity, Qwen2BiasesTiedEmbeddings) { check_case("qwen2_tied"); }
TEST(HfParity, MistralSlidingWindow) { check_case("mistral_sliding"); }
TEST(HfParity, LlamaYarnRopeAttentionBias) { check_case("llama_yarn"); }
TEST(HfParity, LlamaLinearRope) { check_case("llama_linear"); }
TEST(HfParity, LlamaDynamicRope) { check_case("llama_dynamic"); }
TEST(HfParity, LlamaLoraMatchesPeft) { check_case("llama_lora"); }
TEST(HfParity, Qwen2AllLinearRsLoraMatchesPeft) { check_case("qwen2_lora_rslora"); }

}  // namespace
}  // namespace dstrain::runtime
