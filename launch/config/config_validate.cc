#include "launch/config/config_validate.h"

#include <initializer_list>
#include <string_view>
#include <utility>

#include "launch/config/config_loader.h"
#include "launch/config/config_schema.h"

namespace dstrain::launch {
namespace {

// Reports at the first of `keys` that a --set gave, else the first the file gave (the user most
// likely to fix the value they just typed), else at the first key under the config's name.
base::Status fail(const base::Config& cfg, const KeyOrigins& origins,
                  std::initializer_list<std::string_view> keys, const std::string& reason) {
  std::string_view key = *keys.begin();
  std::string where = cfg.source.empty() ? "config" : cfg.source;
  auto pick = [&](bool from_set) {
    for (std::string_view k : keys) {
      const auto it = origins.find(k);
      if (it == origins.end() || (it->second == "--set") != from_set) continue;
      key = k;
      where = it->second;
      return true;
    }
    return false;
  };
  if (!pick(true)) pick(false);
  return base::Status::InvalidArgument(where + ": " + std::string(key) + ": " + reason);
}

// "model.num_heads = 4", the value written as in TOML.
std::string show(const base::Config& cfg, std::string_view key) {
  return std::string(key) + " = " + format_value(*find_key(key), cfg);
}

base::Status check_attention(const base::Config& cfg, const KeyOrigins& origins) {
  const base::ModelConfig& m = cfg.model;
  if (m.head_dim == 0 && m.hidden_size % m.num_heads != 0) {
    return fail(cfg, origins, {"model.hidden_size", "model.num_heads", "model.head_dim"},
                "model.hidden_size must be a multiple of model.num_heads when model.head_dim = 0, "
                "got " +
                    show(cfg, "model.hidden_size") + ", " + show(cfg, "model.num_heads"));
  }
  if (m.num_heads % m.num_kv_heads != 0) {
    return fail(cfg, origins, {"model.num_heads", "model.num_kv_heads"},
                "model.num_heads must be a multiple of model.num_kv_heads, got " +
                    show(cfg, "model.num_heads") + ", " + show(cfg, "model.num_kv_heads"));
  }
  if (m.head_dim > 0 && m.head_dim % 2 != 0) {
    return fail(cfg, origins, {"model.head_dim"},
                "must be even (RoPE rotates pairs), got " + std::to_string(m.head_dim));
  }
  if (m.resolved_head_dim() % 2 != 0) {
    return fail(cfg, origins, {"model.hidden_size", "model.num_heads", "model.head_dim"},
                "model.hidden_size / model.num_heads must be even (RoPE rotates pairs) when "
                "model.head_dim = 0, got " +
                    show(cfg, "model.hidden_size") + ", " + show(cfg, "model.num_heads"));
  }
  return base::Status::Ok();
}

base::Status check_rope_scaling(const base::Config& cfg, const KeyOrigins& origins) {
  const base::RopeScalingConfig& r = cfg.model.rope_scaling;
  if (r.type != "llama3") return base::Status::Ok();
  const std::string llama3 = "model.rope_scaling.type = \"llama3\" requires ";
  if (r.original_max_position_embeddings <= 0) {
    return fail(cfg, origins,
                {"model.rope_scaling.original_max_position_embeddings", "model.rope_scaling.type"},
                llama3 + "model.rope_scaling.original_max_position_embeddings > 0, got " +
                    show(cfg, "model.rope_scaling.original_max_position_embeddings"));
  }
  if (r.factor < 1) {
    return fail(
        cfg, origins, {"model.rope_scaling.factor", "model.rope_scaling.type"},
        llama3 + "model.rope_scaling.factor >= 1, got " + show(cfg, "model.rope_scaling.factor"));
  }
  if (!(r.high_freq_factor > r.low_freq_factor)) {
    return fail(cfg, origins,
                {"model.rope_scaling.high_freq_factor", "model.rope_scaling.low_freq_factor",
                 "model.rope_scaling.type"},
                llama3 +
                    "model.rope_scaling.high_freq_factor > model.rope_scaling.low_freq_factor, "
                    "got " +
                    show(cfg, "model.rope_scaling.high_freq_factor") + ", " +
                    show(cfg, "model.rope_scaling.low_freq_factor"));
  }
  return base::Status::Ok();
}

base::Status check_training(const base::Config& cfg, const KeyOrigins& origins) {
  // The data-parallel part of the division is checked at launch, where the world size is known.
  if (cfg.train.global_batch % cfg.train.micro_batch != 0) {
    return fail(cfg, origins, {"train.global_batch", "train.micro_batch"},
                "train.global_batch must be a multiple of train.micro_batch, got " +
                    show(cfg, "train.global_batch") + ", " + show(cfg, "train.micro_batch"));
  }
  if (cfg.train.eval_every > 0 && cfg.data.eval_path.empty() && cfg.data.eval_fraction == 0) {
    return fail(cfg, origins, {"train.eval_every", "data.eval_path", "data.eval_fraction"},
                "train.eval_every > 0 requires data.eval_path or data.eval_fraction > 0, got " +
                    show(cfg, "train.eval_every") + ", " + show(cfg, "data.eval_path") + ", " +
                    show(cfg, "data.eval_fraction"));
  }
  // Both would name the evaluation data; neither silently wins.
  if (!cfg.data.eval_path.empty() && cfg.data.eval_fraction > 0) {
    return fail(cfg, origins, {"data.eval_fraction", "data.eval_path"},
                "data.eval_fraction > 0 holds out part of data.path, which conflicts with a "
                "separate data.eval_path; set one of them, got " +
                    show(cfg, "data.eval_fraction") + ", " + show(cfg, "data.eval_path"));
  }
  if (cfg.train.recompute_layers >= 0 && cfg.train.activation_checkpointing != "selective") {
    return fail(cfg, origins, {"train.recompute_layers", "train.activation_checkpointing"},
                "train.recompute_layers >= 0 requires train.activation_checkpointing = "
                "\"selective\", got " +
                    show(cfg, "train.recompute_layers") + ", " +
                    show(cfg, "train.activation_checkpointing"));
  }
  if (cfg.lora.enabled && cfg.lora.targets.empty()) {
    return fail(
        cfg, origins, {"lora.targets", "lora.enabled"},
        "lora.enabled = true requires at least one target, got " + show(cfg, "lora.targets"));
  }
  return base::Status::Ok();
}

base::Status check_offload(const base::Config& cfg, const KeyOrigins& origins) {
  if (cfg.offload.params != "none" && cfg.zero.stage != 3) {
    return fail(cfg, origins, {"offload.params", "zero.stage"},
                "offload.params other than \"none\" requires zero.stage = 3, got " +
                    show(cfg, "offload.params") + ", " + show(cfg, "zero.stage"));
  }
  // The optimizer updates the parameter shards where they live: offloaded parameters need an
  // offloaded optimizer.
  if (cfg.offload.params != "none" && cfg.offload.optimizer == "none") {
    return fail(
        cfg, origins, {"offload.params", "offload.optimizer"},
        "offload.params other than \"none\" requires offload.optimizer other than \"none\", got " +
            show(cfg, "offload.params") + ", " + show(cfg, "offload.optimizer"));
  }
  // NVMe records are laid out for every unit; a device share only splits the host tier.
  if (cfg.offload.ratio < 1.0 && (cfg.offload.optimizer != "cpu" || cfg.offload.params == "nvme")) {
    return fail(cfg, origins, {"offload.ratio", "offload.optimizer", "offload.params"},
                "offload.ratio below 1 requires offload.optimizer = \"cpu\" and offload.params "
                "other than \"nvme\", got " +
                    show(cfg, "offload.ratio") + ", " + show(cfg, "offload.optimizer") + ", " +
                    show(cfg, "offload.params"));
  }
  const std::pair<std::string_view, const std::string*> modes[] = {
      {"offload.optimizer", &cfg.offload.optimizer}, {"offload.params", &cfg.offload.params}};
  for (const auto& [key, mode] : modes) {
    if (*mode == "nvme" && cfg.offload.nvme_dir.empty()) {
      return fail(cfg, origins, {key, "offload.nvme_dir"},
                  std::string(key) + " = \"nvme\" requires offload.nvme_dir, got " +
                      show(cfg, "offload.nvme_dir"));
    }
  }
  return base::Status::Ok();
}

}  // namespace

base::Status validate_config_at(const base::Config& cfg, const KeyOrigins& origins) {
  for (const KeySpec& spec : config_schema()) {
    if (auto reason = check_value(spec, cfg)) return fail(cfg, origins, {spec.name}, *reason);
  }
  RETURN_IF_ERROR(check_attention(cfg, origins));
  RETURN_IF_ERROR(check_rope_scaling(cfg, origins));
  RETURN_IF_ERROR(check_training(cfg, origins));
  return check_offload(cfg, origins);
}

base::Status validate_config(const base::Config& cfg) { return validate_config_at(cfg, {}); }

}  // namespace dstrain::launch
