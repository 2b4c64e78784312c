#include "runtime/export/model_plan.h"

#include <map>
#include <set>

#include "runtime/hf_model/hf_config.h"
#include "runtime/model/llama.h"
#include "runtime/model/lora.h"

namespace dstrain::runtime::exporter {
namespace {

constexpr const char* kLoraA = ".lora_A.weight";
constexpr const char* kLoraB = ".lora_B.weight";

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// "model.layers.0.self_attn.q_proj" -> "q_proj"
std::string last_component(const std::string& path) {
  const size_t dot = path.rfind('.');
  return dot == std::string::npos ? path : path.substr(dot + 1);
}

}  // namespace

base::StatusOr<ModelPlan> plan_model(const base::Config& cfg,
                                     const checkpoint::CheckpointIndex& index,
                                     const std::string& dir) {
  const std::string origin = dir + "/" + checkpoint::kIndexFile;
  ModelPlan plan;
  plan.model = cfg.model;
  if (!cfg.model.hf_dir.empty()) {
    ASSIGN_OR_RETURN(plan.model, hf_model::model_config_from_hf_dir(cfg.model.hf_dir));
  }
  const base::Status valid = validate_llama_config(plan.model);
  if (!valid.ok()) return base::Status::BadInput(origin + ": config: " + valid.message());

  base::UnitList units = build_llama(plan.model);
  if (cfg.lora.enabled) {
    const base::Status lora = apply_lora(units, cfg.lora);
    if (!lora.ok()) return base::Status::BadInput(origin + ": config: " + lora.message());
    plan.lora_scale = lora_scale(cfg.lora);
  }

  // Adapters pair up by the projection they wrap; everything else is a base weight.
  std::map<std::string, PlannedAdapter> adapters;
  std::vector<std::string> adapter_order;
  std::set<std::string> known;
  for (const auto& unit : units) {
    for (const base::ParamSpec& spec : unit->schema()) {
      known.insert(spec.name);
      if (!spec.tied_to.empty()) continue;  // HF omits lm_head.weight when tied
      const PlannedTensor t{spec.name, spec.shape};
      const bool is_a = ends_with(spec.name, kLoraA);
      if (!is_a && !ends_with(spec.name, kLoraB)) {
        plan.weights.push_back(t);
        continue;
      }
      const std::string module = spec.name.substr(0, spec.name.size() - std::string(kLoraA).size());
      PlannedAdapter& a = adapters[module];
      if (a.base.empty()) {
        adapter_order.push_back(module);
        a.module = last_component(module);
        a.base = module + ".weight";
      }
      (is_a ? a.a : a.b) = t;
    }
  }
  for (const std::string& m : adapter_order) plan.adapters.push_back(adapters[m]);

  const auto params = index.tensors.find("param");
  if (params == index.tensors.end())
    return base::Status::BadInput(origin + ": holds no parameters");
  auto check = [&](const PlannedTensor& t) -> base::Status {
    const auto it = params->second.find(t.name);
    if (it == params->second.end()) {
      return base::Status::BadInput(origin + ": has no parameter " + t.name +
                                    " (its config snapshot describes a different model)");
    }
    if (it->second.shape != t.shape) {
      return base::Status::BadInput(origin + ": " + t.name + " has shape " +
                                    shape_text(it->second.shape) + ", its config says " +
                                    shape_text(t.shape));
    }
    return base::Status::Ok();
  };
  for (const PlannedTensor& t : plan.weights) RETURN_IF_ERROR(check(t));
  for (const PlannedAdapter& a : plan.adapters) {
    RETURN_IF_ERROR(check(a.a));
    RETURN_IF_ERROR(check(a.b));
  }
  for (const auto& [name, t] : params->second) {
    if (known.count(name) == 0) {
      return base::Status::BadInput(origin + ": parameter " + name +
                                    " is not part of the model its config snapshot describes");
    }
  }
  return plan;
}

}  // namespace dstrain::runtime::exporter
