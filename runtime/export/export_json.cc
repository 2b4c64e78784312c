#include "runtime/export/export_json.h"

#include <cmath>

namespace dstrain::runtime::exporter {
namespace {

using nlohmann::json;

// An integral double as a JSON integer (lora_alpha = 16, not 16.0, as PEFT writes it).
json number(double v) {
  if (std::floor(v) == v && std::fabs(v) < 1e15) return static_cast<int64_t>(v);
  return v;
}

// rope_scaling as transformers' config classes read it (null: plain RoPE).
json rope_scaling_json(const base::ModelConfig& m) {
  const base::RopeScalingConfig& rs = m.rope_scaling;
  if (rs.type == "none") return nullptr;
  json j = {{"rope_type", rs.type}, {"factor", rs.factor}};
  if (rs.type == "llama3") {
    j["low_freq_factor"] = rs.low_freq_factor;
    j["high_freq_factor"] = rs.high_freq_factor;
  }
  if (rs.type == "yarn") {
    j["beta_fast"] = rs.beta_fast;
    j["beta_slow"] = rs.beta_slow;
  }
  if (rs.original_max_position_embeddings > 0) {
    j["original_max_position_embeddings"] = rs.original_max_position_embeddings;
  }
  return j;
}

base::Status inexpressible(const base::ModelConfig& m, const std::string& what) {
  return base::Status::InvalidArgument("export --format hf: model.architecture = \"" +
                                       m.architecture + "\" with " + what +
                                       " has no Hugging Face config class");
}

}  // namespace

std::string torch_dtype_name(const std::string& dtype) {
  if (dtype == "bf16") return "bfloat16";
  if (dtype == "fp16") return "float16";
  return "float32";
}

base::StatusOr<json> hf_config_json(const base::ModelConfig& m, const json& base,
                                    const std::string& dtype) {
  if (base.is_object()) {
    json j = base;
    // transformers >= 5 writes "dtype"; older versions, and vLLM, read "torch_dtype".
    if (j.contains("dtype")) j["dtype"] = torch_dtype_name(dtype);
    if (j.contains("torch_dtype") || !j.contains("dtype"))
      j["torch_dtype"] = torch_dtype_name(dtype);
    return j;
  }
  json j = {{"model_type", m.architecture},
            {"vocab_size", m.vocab_size},
            {"hidden_size", m.hidden_size},
            {"intermediate_size", m.intermediate_size},
            {"num_hidden_layers", m.num_layers},
            {"num_attention_heads", m.num_heads},
            {"num_key_value_heads", m.num_kv_heads},
            {"head_dim", m.resolved_head_dim()},
            {"hidden_act", "silu"},
            {"rms_norm_eps", m.rms_norm_eps},
            {"rope_theta", m.rope_theta},
            {"rope_scaling", rope_scaling_json(m)},
            {"max_position_embeddings", m.max_position_embeddings},
            {"tie_word_embeddings", m.tie_embeddings},
            {"initializer_range", m.init_std},
            {"attention_dropout", 0.0},
            {"use_cache", true},
            {"torch_dtype", torch_dtype_name(dtype)}};
  if (m.architecture == "llama") {
    j["architectures"] = {"LlamaForCausalLM"};
    j["attention_bias"] = m.attention_bias;
    j["mlp_bias"] = m.mlp_bias;
    if (m.sliding_window > 0) return inexpressible(m, "model.sliding_window");
  } else if (m.architecture == "qwen2") {
    j["architectures"] = {"Qwen2ForCausalLM"};
    // Qwen2Attention always has q/k/v biases and never MLP biases.
    if (!m.attention_bias) return inexpressible(m, "model.attention_bias = false");
    if (m.mlp_bias) return inexpressible(m, "model.mlp_bias = true");
    j["use_sliding_window"] = m.sliding_window > 0;
    j["sliding_window"] = m.sliding_window > 0 ? json(m.sliding_window) : json(nullptr);
    // Layers at or past max_window_layers use the window: all of them, or none.
    j["max_window_layers"] = m.sliding_window > 0 ? int64_t{0} : m.num_layers;
  } else if (m.architecture == "mistral") {
    j["architectures"] = {"MistralForCausalLM"};
    if (m.attention_bias || m.mlp_bias) return inexpressible(m, "biases");
    j["sliding_window"] = m.sliding_window > 0 ? json(m.sliding_window) : json(nullptr);
  } else {
    return inexpressible(m, "this architecture");
  }
  return j;
}

json adapter_config_json(const base::LoraConfig& lora, const std::vector<std::string>& modules,
                         const std::string& base_model) {
  return {{"peft_type", "LORA"},
          {"task_type", "CAUSAL_LM"},
          {"base_model_name_or_path", base_model},
          {"r", lora.rank},
          {"lora_alpha", number(lora.alpha)},
          {"lora_dropout", lora.dropout},
          {"target_modules", modules},
          {"use_rslora", lora.rslora},
          {"use_dora", false},
          {"bias", "none"},
          {"fan_in_fan_out", false},
          {"init_lora_weights", true},
          {"inference_mode", true},
          {"modules_to_save", nullptr},
          {"layers_to_transform", nullptr},
          {"layers_pattern", nullptr},
          {"rank_pattern", json::object()},
          {"alpha_pattern", json::object()},
          {"revision", nullptr}};
}

}  // namespace dstrain::runtime::exporter
