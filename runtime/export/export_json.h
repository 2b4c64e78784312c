#pragma once
// The JSON files of an export: config.json for transformers and adapter_config.json for PEFT.
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "base/config.h"
#include "base/status.h"

namespace dstrain::runtime::exporter {

// "float32" | "bfloat16" | "float16" for fp32 | bf16 | fp16.
std::string torch_dtype_name(const std::string& dtype);

// config.json of the exported model. With `base` (the config.json of model.hf_dir, an object)
// every field of it is kept and only the dtype is set: the model is the base's architecture.
// Otherwise it is written from `model`: transformers' config class for the architecture with
// every field that shapes the model. A model the architecture's class cannot express (Qwen2
// without q/k/v biases, Mistral with biases, ...) is kInvalidArgument naming the model keys.
base::StatusOr<nlohmann::json> hf_config_json(const base::ModelConfig& model,
                                              const nlohmann::json& base, const std::string& dtype);

// adapter_config.json in PEFT's layout for `modules` (HF module names, e.g. "q_proj").
nlohmann::json adapter_config_json(const base::LoraConfig& lora,
                                   const std::vector<std::string>& modules,
                                   const std::string& base_model);

}  // namespace dstrain::runtime::exporter
