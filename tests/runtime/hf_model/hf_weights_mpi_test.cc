// Checkpoints written by transformers' save_pretrained (make_hf_checkpoints.py, ctest fixture
// hf_model_checkpoints) loaded into the engine over MPI_COMM_WORLD at every ZeRO stage: the
// gathered parameters equal the file's tensors, and the loaded model reproduces transformers'
// logits and loss.
#include <gtest/gtest.h>
#include <mpi.h>

#include <ATen/ATen.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "base/config.h"
#include "runtime/hf/float16.h"
#include "runtime/hf/sharded_index.h"
#include "runtime/hf_model/hf_config.h"
#include "runtime/hf_model/hf_weights.h"
#include "runtime/model/init.h"
#include "runtime/model/llama.h"
#include "runtime/model/lora.h"
#include "runtime/model/rope.h"
#include "sharding/engine.h"
#include "sharding/mpi_communicator.h"

namespace dstrain::runtime::hf_model {
namespace {

constexpr double kLogitTolerance = 1e-4;
constexpr double kLossRelTolerance = 1e-5;

std::string case_dir(const std::string& name) {
  const char* root = std::getenv("DSTRAIN_HF_MODEL_REF");
  EXPECT_NE(root, nullptr) << "DSTRAIN_HF_MODEL_REF is unset (run through ctest)";
  return std::string(root != nullptr ? root : "") + "/" + name;
}

// A whole tensor of a file as fp32 (int64 for I64), widened by float16.h rather than ATen so the
// comparison does not share the loader's conversion.
at::Tensor read_tensor(const hf::SafetensorsFile& file, const hf::TensorInfo& info) {
  std::vector<uint8_t> bytes(info.nbytes());
  const base::Status read = file.read(info, 0, info.nbytes(), bytes.data());
  EXPECT_TRUE(read.ok()) << read.to_string();
  if (info.dtype == "I64") {
    at::Tensor t = at::empty(info.shape, at::kLong);
    std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
    return t;
  }
  at::Tensor t = at::empty(info.shape, at::kFloat);
  float* out = t.data_ptr<float>();
  const size_t n = static_cast<size_t>(t.numel());
  const auto* half = reinterpret_cast<const uint16_t*>(bytes.data());
  if (info.dtype == "BF16") {
    hf::bf16_to_fp32(half, out, n);
  } else if (info.dtype == "F16") {
    hf::fp16_to_fp32(half, out, n);
  } else {
    EXPECT_EQ(info.dtype, "F32");
    std::memcpy(out, bytes.data(), bytes.size());
  }
  return t;
}

std::map<std::string, at::Tensor> read_reference(const std::string& dir) {
  std::map<std::string, at::Tensor> out;
  auto file = hf::SafetensorsFile::open(dir + "/reference.safetensors");
  EXPECT_TRUE(file.ok()) << file.status().to_string();
  if (!file.ok()) return out;
  for (const hf::TensorInfo& info : file->tensors()) out[info.name] = read_tensor(*file, info);
  return out;
}

sharding::EngineOptions engine_options(int64_t stage) {
  sharding::EngineOptions o;
  o.zero.stage = stage;
  o.compute_dtype = at::kFloat;
  return o;
}

// Random initial values, so parameters the loader missed would show.
std::unique_ptr<sharding::Engine> make_engine(base::UnitList units, int64_t stage,
                                              sharding::Communicator& comm) {
  auto init = [](const base::Unit& unit, at::TensorList out) {
    return runtime::init_unit_params(unit, out, /*seed=*/77);
  };
  auto engine = sharding::Engine::create(std::move(units), engine_options(stage), comm, init);
  EXPECT_TRUE(engine.ok()) << engine.status().to_string();
  return engine.ok() ? std::move(engine).value() : nullptr;
}

// The engine after load_hf_weights against the files and transformers: gathered parameters equal
// the file's tensors exactly (bf16/fp16 widen exactly to fp32), and both a plain forward over them
// and the engine's own forward (its compute parameters refreshed by finish_load) reproduce
// transformers' logits and loss. LoRA adapters, absent from the file, must be B = 0.
void expect_matches_transformers(sharding::Engine& engine, sharding::Communicator& comm,
                                 const base::ModelConfig& cfg, const std::string& label) {
  auto ckpt = hf::open_checkpoint_dir(cfg.hf_dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().to_string();
  auto params = engine.full_parameters();
  ASSERT_TRUE(params.ok()) << params.status().to_string();
  std::map<std::string, at::Tensor> by_name;
  for (const auto& [name, t] : *params) {
    if (name.find(".lora_") != std::string::npos) {
      if (name.find(".lora_B.") != std::string::npos) EXPECT_EQ(t.abs().max().item<double>(), 0.0);
      continue;
    }
    auto ref = ckpt->find(name);
    ASSERT_TRUE(ref.has_value()) << name;
    EXPECT_TRUE(at::equal(t, read_tensor(*ref->file, *ref->info))) << label << ": " << name;
    by_name[name] = t;
  }
  EXPECT_EQ(by_name.size(), ckpt->size()) << "every tensor of the file is a parameter";

  const std::map<std::string, at::Tensor> ref = read_reference(cfg.hf_dir);
  ASSERT_EQ(ref.count("input_ids"), 1u);
  const at::Tensor ids = ref.at("input_ids");
  const int64_t batch = ids.size(0), seq = ids.size(1);
  const at::Tensor positions =
      at::arange(seq, at::kLong).unsqueeze(0).expand({batch, seq}).contiguous();
  const base::StepContext ctx = runtime::make_step_context(cfg, positions, at::kFloat);
  const base::UnitList units = runtime::build_llama(cfg);
  std::vector<std::vector<at::Tensor>> unit_params(units.size());
  for (size_t u = 0; u < units.size(); ++u) {
    for (const base::ParamSpec& spec : units[u]->schema()) {
      const std::string& owner = spec.tied_to.empty() ? spec.name : spec.tied_to;
      ASSERT_EQ(by_name.count(owner), 1u) << owner;
      unit_params[u].push_back(by_name.at(owner));
    }
  }
  const at::Tensor logits = runtime::forward_all(units, unit_params, ids, ctx);
  ASSERT_EQ(logits.sizes(), ref.at("logits").sizes());
  const double logit_diff = (logits - ref.at("logits")).abs().max().item<double>();
  EXPECT_LE(logit_diff, kLogitTolerance) << label;

  // transformers' loss is the mean CE over the B * (T - 1) next-token targets.
  sharding::MicroBatch mb;
  mb.input_ids = ids;
  mb.target_ids = at::full({batch, seq}, -100, at::kLong);
  mb.target_ids.narrow(1, 0, seq - 1).copy_(ids.narrow(1, 1, seq - 1));
  mb.ctx = ctx;
  auto ce_sum = engine.eval_loss_sum(mb);
  ASSERT_TRUE(ce_sum.ok()) << ce_sum.status().to_string();
  const double want = ref.at("loss").item<double>() * static_cast<double>(batch * (seq - 1));
  EXPECT_NEAR(*ce_sum, want, kLossRelTolerance * want) << label;
  if (comm.rank() == 0) {
    std::printf("%s: max |logit diff| %.2e, loss %.6f (transformers %.6f)\n", label.c_str(),
                logit_diff, *ce_sum / static_cast<double>(batch * (seq - 1)),
                ref.at("loss").item<double>());
  }
}

struct Case {
  const char* name;
  int64_t stage;
};

class HfWeights : public ::testing::TestWithParam<Case> {};

TEST_P(HfWeights, LoadsTransformersCheckpoint) {
  const Case c = GetParam();
  const std::string dir = case_dir(c.name);
  auto cfg = model_config_from_hf_dir(dir);
  ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
  EXPECT_EQ(cfg->hf_dir, dir);
  auto comm = sharding::MpiCommunicator::create(MPI_COMM_WORLD);
  ASSERT_TRUE(comm.ok()) << comm.status().to_string();
  std::unique_ptr<sharding::Engine> engine =
      make_engine(runtime::build_llama(*cfg), c.stage, **comm);
  ASSERT_NE(engine, nullptr);

  const base::Status loaded = load_hf_weights(dir, *engine);
  ASSERT_TRUE(loaded.ok()) << loaded.to_string();
  if (c.stage == 3) {
    EXPECT_EQ(engine->local_parameter_numel(), 0) << "stage 3 keeps only shards after loading";
  }
  expect_matches_transformers(*engine, **comm, *cfg,
                              std::string(c.name) + " stage " + std::to_string(c.stage));
}

// LoRA over a loaded base: frozen base weights (compute dtype, sharded at stage 3) come from the
// file, the adapters keep PEFT's initialisation (B = 0), so the model is still the checkpoint's.
TEST(HfWeightsLora, FrozenBaseLoadsAndAdaptersKeepTheirInit) {
  auto cfg = model_config_from_hf_dir(case_dir("qwen2_bf16"));
  ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
  auto comm = sharding::MpiCommunicator::create(MPI_COMM_WORLD);
  ASSERT_TRUE(comm.ok()) << comm.status().to_string();
  for (int64_t stage : {0, 3}) {
    base::UnitList units = runtime::build_llama(*cfg);
    base::LoraConfig lora;
    lora.enabled = true;
    lora.targets = {"all-linear"};
    ASSERT_TRUE(runtime::apply_lora(units, lora).ok());
    std::unique_ptr<sharding::Engine> engine = make_engine(std::move(units), stage, **comm);
    ASSERT_NE(engine, nullptr);
    ASSERT_LT(engine->num_trainable_parameters(), engine->num_parameters());
    const base::Status loaded = load_hf_weights(cfg->hf_dir, *engine);
    ASSERT_TRUE(loaded.ok()) << loaded.to_string();
    expect_matches_transformers(*engine, **comm, *cfg,
                                "qwen2_bf16 + LoRA stage " + std::to_string(stage));
  }
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  std::string name = info.param.name;
  for (char& ch : name) {
    if (ch == '_') ch = 'X';
  }
  return name + "Stage" + std::to_string(info.param.stage);
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, HfWeights,
                         ::testing::Values(Case{"llama_sharded", 0}, Case{"llama_sharded", 1},
                                           Case{"llama_sharded", 3}, Case{"qwen2_bf16", 0},
                                           Case{"qwen2_bf16", 2}, Case{"qwen2_bf16", 3},
                                           Case{"mistral_fp16", 0}, Case{"mistral_fp16", 3}),
                         case_name);

// A checkpoint that does not fit the engine's model fails on every rank before any collective,
// so no rank is left waiting in finish_load.
TEST(HfWeightsErrors, MismatchedCheckpointIsBadInputOnEveryRank) {
  auto cfg = model_config_from_hf_dir(case_dir("llama_sharded"));
  ASSERT_TRUE(cfg.ok()) << cfg.status().to_string();
  auto comm = sharding::MpiCommunicator::create(MPI_COMM_WORLD);
  ASSERT_TRUE(comm.ok()) << comm.status().to_string();
  std::unique_ptr<sharding::Engine> engine =
      make_engine(runtime::build_llama(*cfg), /*stage=*/3, **comm);
  ASSERT_NE(engine, nullptr);
  const base::Status s = load_hf_weights(case_dir("qwen2_bf16"), *engine);
  EXPECT_EQ(s.code(), base::StatusCode::kBadInput) << s.to_string();
  EXPECT_NE(s.message().find("model.safetensors"), std::string::npos) << s.message();
  EXPECT_TRUE((*comm)->barrier().ok());
}

}  // namespace
}  // namespace dstrain::runtime::hf_model
