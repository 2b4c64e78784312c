// configs/tiny-lora.toml as its header comment says to use it, in a scratch working directory:
// train configs/tiny.toml, export it as runs/tiny-hf, fine-tune it with LoRA under mpirun -np 2
// (short runs: train.steps overridden), and let PEFT (PyPI) load the exported adapter.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "tests/launch/e2e_util.h"

namespace {

using dstrain::e2e::run;
using dstrain::e2e::RunResult;

namespace fs = std::filesystem;
using nlohmann::json;

// A base far from converged (tiny.toml's 120 steps reach ~1.8 from 5.6; 40 steps ~2.55), so that
// adapters alone have something to learn in a short run.
constexpr int kBaseSteps = 40;
constexpr int kLoraSteps = 20;

double mean(const std::vector<double>& v, size_t begin, size_t n) {
  double sum = 0;
  for (size_t i = begin; i < begin + n; ++i) sum += v[i];
  return sum / static_cast<double>(n);
}

// The adapter in PeftModel on the base, against the merged export: the same logits, and not the
// base's. Token ids are arbitrary bytes: the check is about the files, not the data.
constexpr const char* kPeftCheck = R"(import json, sys
import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

base_dir, adapter, merged_dir, out = sys.argv[1:5]
load = lambda d: AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
ids = torch.randint(0, 256, (2, 33), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    base = load(base_dir)
    base_logits = base(ids).logits
    model = PeftModel.from_pretrained(base, adapter).eval()
    peft_logits = model(ids).logits
    merged_logits = load(merged_dir)(ids).logits
cfg = model.peft_config["default"]
loaded = get_peft_model_state_dict(model)
in_file = load_file(f"{adapter}/adapter_model.safetensors")
json.dump({"class": type(model).__name__, "r": cfg.r, "alpha": cfg.lora_alpha,
           "targets": sorted(cfg.target_modules), "adapters": len(loaded),
           "same_keys": sorted(loaded) == sorted(in_file),
           "same_values": all(torch.equal(loaded[k], in_file[k]) for k in in_file),
           "merged_vs_peft": float((merged_logits - peft_logits).abs().max()),
           "base_vs_peft": float((base_logits - peft_logits).abs().max())}, open(out, "w"))
)";

class LoraE2e : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("dstrain_lora_e2e_" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // `command` run in the scratch directory, as a user runs it from the repository root.
  RunResult here(const std::string& command) {
    return run("cd " + dir_.string() + " && " + command);
  }
  static std::string config(const std::string& name) {
    return std::string(DSTRAIN_SOURCE_DIR) + "/configs/" + name;
  }
  std::vector<double> losses(const std::string& run_dir) {
    std::vector<double> out;
    std::ifstream in(dir_ / run_dir / "metrics.jsonl");
    for (std::string line; std::getline(in, line);) {
      const json j = json::parse(line);
      if (!j.contains("event") && j.contains("loss")) out.push_back(j["loss"].get<double>());
    }
    return out;
  }

  fs::path dir_;
};

TEST_F(LoraE2e, TinyLoraTomlFineTunesTheTinyExportAndPeftLoadsTheAdapter) {
  // The two commands of the config's header (the CPU proofs stay on the CPU on GPU machines).
  RunResult r = here(dstrain::e2e::dstrain(
      2, "--config " + config("tiny.toml") +
             " --set run.device=cpu --set train.steps=" + std::to_string(kBaseSteps)));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = here(std::string(DSTRAIN_BINARY) +
           " export --checkpoint runs/tiny --format hf --out runs/tiny-hf");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(fs::exists(dir_ / "runs/tiny-hf/config.json"));

  // The config as shipped; only the length of the run is changed.
  r = here(dstrain::e2e::dstrain(2, "--config " + config("tiny-lora.toml") +
                                        " --set train.steps=" + std::to_string(kLoraSteps)));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::vector<double> l = losses("runs/tiny-lora");
  ASSERT_EQ(l.size(), static_cast<size_t>(kLoraSteps));
  for (double v : l) ASSERT_TRUE(std::isfinite(v));
  // Adapters alone bring the loss down (~5% here), on averages of four steps: single batches
  // differ by ~1%.
  const double first = mean(l, 0, 4);
  const double last = mean(l, l.size() - 4, 4);
  EXPECT_LT(last, 0.97 * first) << "first four " << first << ", last four " << last;

  r = here(std::string(DSTRAIN_BINARY) +
           " export --checkpoint runs/tiny-lora --format peft --out runs/tiny-lora-peft");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = here(std::string(DSTRAIN_BINARY) +
           " export --checkpoint runs/tiny-lora --format hf --out runs/tiny-lora-merged");
  ASSERT_EQ(r.exit_code, 0) << r.output;

  std::ofstream(dir_ / "peft_check.py") << kPeftCheck;
  r = here(std::string(DSTRAIN_PYTHON) +
           " peft_check.py runs/tiny-hf runs/tiny-lora-peft runs/tiny-lora-merged peft.json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json got = json::parse(std::ifstream(dir_ / "peft.json"));
  EXPECT_EQ(got["class"], "PeftModelForCausalLM");
  EXPECT_EQ(got["r"], 8);
  EXPECT_EQ(got["alpha"], 16);
  EXPECT_EQ(got["targets"].get<std::set<std::string>>(),
            (std::set<std::string>{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                   "down_proj"}));
  EXPECT_EQ(got["adapters"], 4 * 7 * 2);  // four layers, seven projections, A and B
  EXPECT_TRUE(got["same_keys"].get<bool>());
  EXPECT_TRUE(got["same_values"].get<bool>());
  EXPECT_LT(got["merged_vs_peft"].get<double>(), 1e-4);
  EXPECT_GT(got["base_vs_peft"].get<double>(), 1e-3);  // the trained adapter changes the model
}

TEST_F(LoraE2e, MalformedBaseWeightsExitThreeNamingTheFile) {
  // The reader's refusals reach the user as exit 3 (tests/runtime/hf/malformed_corpus_test.cc
  // has the corpus): a base whose safetensors header claims more bytes than the file has.
  fs::create_directories(dir_ / "runs/tiny-hf");
  std::ofstream(dir_ / "runs/tiny-hf/config.json") << R"({"architectures": ["LlamaForCausalLM"],
    "model_type": "llama", "vocab_size": 259, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 256, "tie_word_embeddings": true})";
  const std::string header =
      R"({"model.norm.weight":{"dtype":"F32","shape":[32],"data_offsets":[0,128]}})";
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>(header.size() >> (8 * i));
  std::ofstream(dir_ / "runs/tiny-hf/model.safetensors", std::ios::binary)
      << bytes << header << std::string(64, '\0');
  const RunResult r = here(
      dstrain::e2e::dstrain(2, "--config " + config("tiny-lora.toml") + " --set train.steps=2"));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("runs/tiny-hf/model.safetensors"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("run past the data section of 64 bytes"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir_ / "runs/tiny-lora/checkpoints"));
}

}  // namespace
