#include "runtime/model/lora.h"

#include <cmath>

#include "runtime/model/llama.h"

namespace dstrain::runtime {

double lora_scale(const base::LoraConfig& cfg) {
  const double r = static_cast<double>(cfg.rank);
  return cfg.rslora ? cfg.alpha / std::sqrt(r) : cfg.alpha / r;
}

std::vector<std::string> lora_target_list(const base::LoraConfig& cfg) {
  for (const std::string& t : cfg.targets) {
    if (t == "all-linear") return {"q", "k", "v", "o", "gate", "up", "down"};
  }
  return cfg.targets;
}

base::Status apply_lora(base::UnitList& units, const base::LoraConfig& cfg) {
  if (cfg.rank < 1) {
    return base::Status::InvalidArgument("lora.rank must be >= 1, got " + std::to_string(cfg.rank));
  }
  const std::vector<std::string> targets = lora_target_list(cfg);
  int added = 0;
  for (auto& unit : units) {
    auto* llama = dynamic_cast<LlamaUnit*>(unit.get());
    if (llama == nullptr) {
      return base::Status::InvalidArgument("LoRA needs Llama-family units; unit " + unit->name() +
                                           " is not one");
    }
    llama->freeze();
    added += llama->add_lora(targets, cfg.rank, lora_scale(cfg), cfg.dropout);
  }
  if (added == 0) return base::Status::InvalidArgument("lora.targets: no projection matched");
  return base::Status::Ok();
}

}  // namespace dstrain::runtime
