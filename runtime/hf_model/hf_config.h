#pragma once
// Hugging Face config.json -> ModelConfig for the decoders build_llama implements
// (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM). Defaults for absent keys follow each
// transformers config class, so a config.json means here what it means to transformers; a
// feature the decoder lacks (per-layer sliding windows, longrope, partial rotary, ...) is refused
// rather than approximated.
#include <nlohmann/json.hpp>
#include <string>

#include "base/config.h"
#include "base/status.h"

namespace dstrain::runtime::hf_model {

// Maps a parsed config.json (`origin` names it in messages). Errors are kBadInput naming origin
// and the key, including values that validate_llama_config refuses.
base::StatusOr<base::ModelConfig> model_config_from_hf_json(const nlohmann::json& hf,
                                                            const std::string& origin);

// Reads `<hf_dir>/config.json` and maps it; the result's hf_dir is `hf_dir`. Fields config.json
// does not describe (init_std) keep ModelConfig's defaults.
base::StatusOr<base::ModelConfig> model_config_from_hf_dir(const std::string& hf_dir);

}  // namespace dstrain::runtime::hf_model
