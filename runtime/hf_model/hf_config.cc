#include "runtime/hf_model/hf_config.h"

#include <optional>
#include <utility>

#include "runtime/hf/json_file.h"
#include "runtime/model/llama.h"

namespace dstrain::runtime::hf_model {
namespace {

using nlohmann::json;

// Typed access to one JSON object of config.json; errors name the file and the key's path.
// An absent or null key takes the fallback (transformers writes null for "derived"); without a
// fallback it is an error.
class Keys {
 public:
  Keys(const json& object, std::string origin, std::string prefix)
      : object_(object), origin_(std::move(origin)), prefix_(std::move(prefix)) {}

  bool has(const char* key) const {
    const auto it = object_.find(key);
    return it != object_.end() && !it->is_null();
  }
  // Present with the value null (which can differ from absent: MistralConfig's default window).
  bool is_null(const char* key) const {
    const auto it = object_.find(key);
    return it != object_.end() && it->is_null();
  }
  const json& at(const char* key) const { return object_.at(key); }

  base::Status error(const char* key, const std::string& problem) const {
    return base::Status::BadInput(origin_ + ": \"" + prefix_ + key + "\" " + problem);
  }

  base::StatusOr<int64_t> integer(const char* key, std::optional<int64_t> fallback) const {
    if (!has(key)) return or_missing(key, fallback);
    const json& v = object_.at(key);
    if (!v.is_number_integer()) return error(key, "must be an integer, got " + v.dump());
    return v.get<int64_t>();
  }
  base::StatusOr<double> number(const char* key, std::optional<double> fallback) const {
    if (!has(key)) return or_missing(key, fallback);
    const json& v = object_.at(key);
    if (!v.is_number()) return error(key, "must be a number, got " + v.dump());
    return v.get<double>();
  }
  base::StatusOr<bool> boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const json& v = object_.at(key);
    if (!v.is_boolean()) return error(key, "must be true or false, got " + v.dump());
    return v.get<bool>();
  }
  base::StatusOr<std::string> string(const char* key, std::optional<std::string> fallback) const {
    if (!has(key)) return or_missing(key, fallback);
    const json& v = object_.at(key);
    if (!v.is_string()) return error(key, "must be a string, got " + v.dump());
    return v.get<std::string>();
  }

 private:
  template <typename T>
  base::StatusOr<T> or_missing(const char* key, const std::optional<T>& fallback) const {
    if (fallback.has_value()) return *fallback;
    return error(key, "is missing");
  }

  const json& object_;
  std::string origin_;
  std::string prefix_;
};

struct Architecture {
  const char* class_name;
  const char* model_type;
  int64_t max_position_embeddings;  // the transformers config class's default
};
constexpr Architecture kArchitectures[] = {
    {"LlamaForCausalLM", "llama", 2048},
    {"Qwen2ForCausalLM", "qwen2", 32768},
    {"MistralForCausalLM", "mistral", 4096 * 32},
};
constexpr char kSupported[] = "LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM";
constexpr int64_t kDefaultSlidingWindow = 4096;  // Qwen2Config and MistralConfig

// "architectures" names the model class; files without it (a bare config) fall back on
// "model_type".
base::StatusOr<const Architecture*> find_architecture(const Keys& keys) {
  if (keys.has("architectures")) {
    const json& list = keys.at("architectures");
    if (!list.is_array() || list.size() != 1 || !list[0].is_string()) {
      return keys.error("architectures", "must list one model class, got " + list.dump());
    }
    const std::string name = list[0].get<std::string>();
    for (const Architecture& a : kArchitectures) {
      if (name == a.class_name) return &a;
    }
    return keys.error("architectures", "names unsupported model class '" + name +
                                           "' (supported: " + kSupported + ")");
  }
  ASSIGN_OR_RETURN(const std::string type, keys.string("model_type", std::nullopt));
  for (const Architecture& a : kArchitectures) {
    if (type == a.model_type) return &a;
  }
  return keys.error("model_type", "'" + type + "' is not supported (llama, qwen2, mistral)");
}

// rope_parameters (transformers >= 5, rope_theta inside) or rope_scaling + rope_theta (older).
base::Status map_rope(const Keys& top, const json& hf, const std::string& origin,
                      base::ModelConfig& cfg) {
  const char* section = top.has("rope_parameters") ? "rope_parameters"
                        : top.has("rope_scaling")  ? "rope_scaling"
                                                   : nullptr;
  const json empty = json::object();
  const json& object = section != nullptr ? hf.at(section) : empty;
  if (!object.is_object()) return top.error(section, "must be an object, got " + object.dump());
  const Keys rope(object, origin, section != nullptr ? std::string(section) + "." : "");

  ASSIGN_OR_RETURN(const double top_theta, top.number("rope_theta", 10000.0));
  ASSIGN_OR_RETURN(cfg.rope_theta, rope.number("rope_theta", top_theta));
  const char* type_key = rope.has("rope_type") ? "rope_type" : "type";
  ASSIGN_OR_RETURN(const std::string type, rope.string(type_key, std::string("default")));
  if (type != "default" && type != "linear" && type != "dynamic" && type != "llama3" &&
      type != "yarn") {
    return rope.error(type_key,
                      "'" + type + "' is not supported (default, linear, dynamic, llama3, yarn)");
  }
  for (const Keys* keys : {&top, &rope}) {
    ASSIGN_OR_RETURN(const double partial, keys->number("partial_rotary_factor", 1.0));
    if (partial != 1.0)
      return keys->error("partial_rotary_factor", "other than 1 is not supported");
  }
  base::RopeScalingConfig& rs = cfg.rope_scaling;
  rs.type = type == "default" ? "none" : type;
  ASSIGN_OR_RETURN(rs.factor, rope.number("factor", 1.0));
  ASSIGN_OR_RETURN(rs.low_freq_factor, rope.number("low_freq_factor", rs.low_freq_factor));
  ASSIGN_OR_RETURN(rs.high_freq_factor, rope.number("high_freq_factor", rs.high_freq_factor));
  ASSIGN_OR_RETURN(rs.original_max_position_embeddings,
                   rope.integer("original_max_position_embeddings", int64_t{0}));
  ASSIGN_OR_RETURN(rs.beta_fast, rope.number("beta_fast", rs.beta_fast));
  ASSIGN_OR_RETURN(rs.beta_slow, rope.number("beta_slow", rs.beta_slow));
  if (type == "yarn") {
    // The decoder computes YaRN's attention factor from `factor` alone, as HF does by default.
    if (rope.has("attention_factor")) {
      return rope.error("attention_factor", "is not supported (derived from factor only)");
    }
    if (rope.has("mscale") && rope.has("mscale_all_dim")) {
      return rope.error("mscale", "with mscale_all_dim is not supported");
    }
    ASSIGN_OR_RETURN(const bool truncate, rope.boolean("truncate", true));
    if (!truncate) return rope.error("truncate", "false is not supported");
  }
  return base::Status::Ok();
}

// Sliding-window attention: Mistral windows every layer unless sliding_window is null; Qwen2
// only with use_sliding_window and then per layer (layer_types, or layers >= max_window_layers),
// which maps only when every layer agrees.
base::Status map_sliding_window(const Keys& keys, const Architecture& arch,
                                base::ModelConfig& cfg) {
  const std::string type = arch.model_type;
  cfg.sliding_window = 0;
  if (type == "mistral") {
    if (!keys.is_null("sliding_window")) {
      ASSIGN_OR_RETURN(cfg.sliding_window, keys.integer("sliding_window", kDefaultSlidingWindow));
    }
    return base::Status::Ok();
  }
  if (type != "qwen2") return base::Status::Ok();
  ASSIGN_OR_RETURN(const bool use, keys.boolean("use_sliding_window", false));
  if (!use || keys.is_null("sliding_window")) return base::Status::Ok();
  ASSIGN_OR_RETURN(const int64_t window, keys.integer("sliding_window", kDefaultSlidingWindow));
  int64_t sliding_layers = 0;
  const char* culprit = "max_window_layers";
  if (keys.has("layer_types")) {
    culprit = "layer_types";
    const json& types = keys.at("layer_types");
    if (!types.is_array() || static_cast<int64_t>(types.size()) != cfg.num_layers) {
      return keys.error("layer_types", "must list one type per layer, got " + types.dump());
    }
    for (const json& t : types) {
      if (t == "sliding_attention") {
        ++sliding_layers;
      } else if (t != "full_attention") {
        return keys.error("layer_types", "has unsupported entry " + t.dump());
      }
    }
  } else {
    ASSIGN_OR_RETURN(const int64_t first, keys.integer("max_window_layers", int64_t{28}));
    for (int64_t i = 0; i < cfg.num_layers; ++i) sliding_layers += i >= first ? 1 : 0;
  }
  if (sliding_layers == cfg.num_layers) {
    cfg.sliding_window = window;
  } else if (sliding_layers != 0) {
    return keys.error(culprit, "with use_sliding_window gives " + std::to_string(sliding_layers) +
                                   " of " + std::to_string(cfg.num_layers) +
                                   " layers a sliding window; per-layer windows are not supported");
  }
  return base::Status::Ok();
}

}  // namespace

base::StatusOr<base::ModelConfig> model_config_from_hf_json(const json& hf,
                                                            const std::string& origin) {
  if (!hf.is_object()) return base::Status::BadInput(origin + ": must be a JSON object");
  const Keys keys(hf, origin, "");
  ASSIGN_OR_RETURN(const Architecture* arch, find_architecture(keys));
  base::ModelConfig cfg;
  cfg.architecture = arch->model_type;
  ASSIGN_OR_RETURN(const std::string act, keys.string("hidden_act", std::string("silu")));
  if (act != "silu") return keys.error("hidden_act", "'" + act + "' is not supported (silu)");
  ASSIGN_OR_RETURN(cfg.vocab_size, keys.integer("vocab_size", std::nullopt));
  ASSIGN_OR_RETURN(cfg.hidden_size, keys.integer("hidden_size", std::nullopt));
  ASSIGN_OR_RETURN(cfg.intermediate_size, keys.integer("intermediate_size", std::nullopt));
  ASSIGN_OR_RETURN(cfg.num_layers, keys.integer("num_hidden_layers", std::nullopt));
  ASSIGN_OR_RETURN(cfg.num_heads, keys.integer("num_attention_heads", std::nullopt));
  ASSIGN_OR_RETURN(cfg.num_kv_heads, keys.integer("num_key_value_heads", cfg.num_heads));
  ASSIGN_OR_RETURN(cfg.head_dim, keys.integer("head_dim", int64_t{0}));
  ASSIGN_OR_RETURN(cfg.rms_norm_eps, keys.number("rms_norm_eps", 1e-6));
  ASSIGN_OR_RETURN(cfg.max_position_embeddings,
                   keys.integer("max_position_embeddings", arch->max_position_embeddings));
  ASSIGN_OR_RETURN(cfg.tie_embeddings, keys.boolean("tie_word_embeddings", false));
  const std::string type = arch->model_type;
  if (type == "llama") {
    ASSIGN_OR_RETURN(cfg.attention_bias, keys.boolean("attention_bias", false));
    ASSIGN_OR_RETURN(cfg.mlp_bias, keys.boolean("mlp_bias", false));
  } else {
    cfg.attention_bias = type == "qwen2";  // Qwen2Attention hard-codes q/k/v biases
    cfg.mlp_bias = false;
  }
  RETURN_IF_ERROR(map_rope(keys, hf, origin, cfg));
  RETURN_IF_ERROR(map_sliding_window(keys, *arch, cfg));
  const base::Status valid = validate_llama_config(cfg);
  if (!valid.ok()) return base::Status::BadInput(origin + ": " + valid.message());
  return cfg;
}

base::StatusOr<base::ModelConfig> model_config_from_hf_dir(const std::string& hf_dir) {
  ASSIGN_OR_RETURN(const json hf, hf::read_config_json(hf_dir));
  ASSIGN_OR_RETURN(base::ModelConfig cfg,
                   model_config_from_hf_json(hf, hf::join_path(hf_dir, "config.json")));
  cfg.hf_dir = hf_dir;
  return cfg;
}

}  // namespace dstrain::runtime::hf_model
