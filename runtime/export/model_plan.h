#pragma once
// What an export writes, derived from the run's config (the model build_llama makes, with
// apply_lora's adapters when LoRA was on) and checked against what the checkpoint holds, so a
// checkpoint that does not match its own config snapshot is refused before anything is written.
#include <cstdint>
#include <string>
#include <vector>

#include "base/config.h"
#include "base/status.h"
#include "runtime/checkpoint/index.h"

namespace dstrain::runtime::exporter {

struct PlannedTensor {
  std::string name;  // Hugging Face parameter name
  std::vector<int64_t> shape;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// One LoRA-wrapped projection: W [out, in] += scale * B [out, r] @ A [r, in].
struct PlannedAdapter {
  std::string module;  // Hugging Face module name as PEFT targets it: "q_proj", "down_proj", ...
  std::string base;    // "model.layers.0.self_attn.q_proj.weight"
  PlannedTensor a;     // "....q_proj.lora_A.weight"
  PlannedTensor b;     // "....q_proj.lora_B.weight"
};

struct ModelPlan {
  base::ModelConfig model;               // resolved: from model.hf_dir's config.json when set
  std::vector<PlannedTensor> weights;    // base parameters in model order; a tied lm_head omitted
  std::vector<PlannedAdapter> adapters;  // empty unless lora.enabled
  double lora_scale = 0.0;
};

// Builds the plan for `cfg` (the checkpoint's config snapshot) and checks that the checkpoint at
// `dir` with `index` holds every planned tensor with its shape, and nothing the plan lacks.
// Mismatches and an unreadable model.hf_dir config.json are kBadInput naming the file.
base::StatusOr<ModelPlan> plan_model(const base::Config& cfg,
                                     const checkpoint::CheckpointIndex& index,
                                     const std::string& dir);

}  // namespace dstrain::runtime::exporter
