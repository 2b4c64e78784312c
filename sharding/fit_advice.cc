#include "sharding/fit_advice.h"

#include <algorithm>
#include <cstdio>
#include <functional>

#include "sharding/activation_checkpointing.h"
#include "sharding/offload_split.h"

namespace dstrain::sharding {
namespace {

double gib(double bytes) { return bytes / static_cast<double>(int64_t{1} << 30); }

std::string describe(const char* what, double need, double have, const char* unit_of) {
  char line[200];
  std::snprintf(line, sizeof(line), "%s: needs %.2f GiB %s, has %.2f GiB", what, gib(need), unit_of,
                gib(have));
  return line;
}

// A change applied to a config and a world size; false when it does not apply.
using Edit = std::function<bool(base::Config&, int&)>;

struct Candidate {
  std::string description;
  Edit edit;
};

std::vector<Candidate> candidates(const base::Config& cfg, int world) {
  std::vector<Candidate> out;
  const std::string& ckpt = cfg.train.activation_checkpointing;
  if (ckpt == "none") {
    out.push_back({"train.activation_checkpointing=selective", [](base::Config& c, int&) {
                     c.train.activation_checkpointing = "selective";
                     return true;
                   }});
  }
  for (int64_t mb = cfg.train.micro_batch / 2; mb >= 1; mb /= 2) {
    out.push_back({"train.micro_batch=" + std::to_string(mb), [mb](base::Config& c, int&) {
                     c.train.micro_batch = mb;
                     return true;
                   }});
  }
  if (ckpt != "full") {
    out.push_back({"train.activation_checkpointing=full", [](base::Config& c, int&) {
                     c.train.activation_checkpointing = "full";
                     return true;
                   }});
  }
  for (int64_t s = cfg.zero.stage + 1; s <= 3; ++s) {
    out.push_back({"zero.stage=" + std::to_string(s), [s](base::Config& c, int&) {
                     c.zero.stage = s;
                     return true;
                   }});
  }
  if (cfg.offload.optimizer != "cpu") {  // from the device, or back from NVMe
    out.push_back({"offload.optimizer=cpu", [](base::Config& c, int&) {
                     c.offload.optimizer = "cpu";
                     return true;
                   }});
  }
  for (int factor = 2; factor <= 64; factor *= 2) {
    out.push_back(
        {"--world " + std::to_string(world * factor), [world, factor](base::Config&, int& w) {
           w = world * factor;
           return true;
         }});
  }
  if (cfg.offload.params != "cpu") {
    out.push_back({"zero.stage=3, offload.params=cpu", [](base::Config& c, int&) {
                     c.zero.stage = 3;
                     c.offload.params = "cpu";
                     return true;
                   }});
  }
  if (!cfg.offload.nvme_dir.empty()) {
    if (cfg.offload.optimizer != "nvme") {
      out.push_back({"offload.optimizer=nvme", [](base::Config& c, int&) {
                       c.offload.optimizer = "nvme";
                       return true;
                     }});
    }
    if (cfg.offload.params != "nvme") {
      out.push_back({"zero.stage=3, offload.params=nvme", [](base::Config& c, int&) {
                       c.zero.stage = 3;
                       c.offload.params = "nvme";
                       return true;
                     }});
    }
  }
  return out;
}

// Escalation when no single change fits, each step kept: the most memory each lever can save.
// A step that is already in the config does not apply.
std::vector<Candidate> escalation() {
  auto set_in = [](auto section, auto member, auto value) {
    return [section, member, value](base::Config& c, int&) {
      if ((c.*section).*member == value) return false;
      (c.*section).*member = value;
      return true;
    };
  };
  return {{"zero.stage=3", set_in(&base::Config::zero, &base::ZeroConfig::stage, int64_t{3})},
          {"train.activation_checkpointing=full",
           set_in(&base::Config::train, &base::TrainConfig::activation_checkpointing,
                  std::string("full"))},
          {"train.micro_batch=1",
           set_in(&base::Config::train, &base::TrainConfig::micro_batch, int64_t{1})},
          {"offload.optimizer=cpu",
           set_in(&base::Config::offload, &base::OffloadConfig::optimizer, std::string("cpu"))},
          {"offload.params=cpu",
           set_in(&base::Config::offload, &base::OffloadConfig::params, std::string("cpu"))}};
}

using PlanFn = std::function<base::StatusOr<MemoryPlan>(const base::Config&, int)>;

// A config that fits, and GPU memory to spare: the changes that do less work per step and still
// fit with 5% of the GPU left (the plan's error on GPUs, docs/plan.md), into Verdict::faster.
base::Status find_faster(const base::UnitList& units, const base::Config& cfg, int world,
                         const Hardware& hw, const PlanFn& try_plan, Verdict& v) {
  Hardware spare = hw;
  spare.gpu_bytes = hw.gpu_bytes / 20 * 19;
  // Plans `change`; keeps it in v.faster when it fits, and says whether it did.
  auto keep_if_fits = [&](Change change) -> base::StatusOr<bool> {
    ASSIGN_OR_RETURN(change.plan, try_plan(change.config, change.world));
    if (!fit_problems(change.plan, spare).empty()) return false;
    v.faster.push_back(std::move(change));
    return true;
  };
  // Fewer recomputed layers: memory falls as layers are added, so the first count that fits is
  // the smallest, below the decoder layers the configured policy recomputes.
  ASSIGN_OR_RETURN(
      const std::vector<bool> recompute,
      recompute_plan(units, cfg.train.activation_checkpointing, cfg.train.recompute_layers));
  int64_t now = 0;
  for (size_t u = 0; u < units.size(); ++u)
    now += recompute[u] && is_decoder_layer(*units[u]) ? 1 : 0;
  for (int64_t k = 0; k < now; ++k) {
    Change change{"", cfg, world, {}};
    change.config.train.activation_checkpointing = k == 0 ? "none" : "selective";
    change.config.train.recompute_layers = k == 0 ? -1 : k;
    change.description = k == 0
                             ? "train.activation_checkpointing=none"
                             : "train.activation_checkpointing=selective, train.recompute_layers=" +
                                   std::to_string(k);
    ASSIGN_OR_RETURN(const bool kept, keep_if_fits(std::move(change)));
    if (kept) break;
  }
  if (cfg.offload.optimizer != "cpu" || cfg.offload.params == "nvme") return base::Status::Ok();
  // Fewer units on the host means more on the device: the first ratio that fits is the smallest.
  // Units are whole, so several ratios may pick the configured units: those change nothing.
  const std::vector<bool> offloaded = offloaded_units(units, cfg.offload);
  for (int twentieths = 1; twentieths < 20 && twentieths * 0.05 < cfg.offload.ratio - 1e-9;
       ++twentieths) {
    Change change{"", cfg, world, {}};
    change.config.offload.ratio = twentieths * 0.05;
    if (offloaded_units(units, change.config.offload) == offloaded) break;
    char text[48];
    std::snprintf(text, sizeof(text), "offload.ratio=%.2f", change.config.offload.ratio);
    change.description = text;
    ASSIGN_OR_RETURN(const bool kept, keep_if_fits(std::move(change)));
    if (kept) break;
  }
  return base::Status::Ok();
}

}  // namespace

std::vector<std::string> fit_problems(const MemoryPlan& plan, const Hardware& hw) {
  std::vector<std::string> problems;
  const int per_node = hw.ranks_per_node > 0 ? std::min(hw.ranks_per_node, plan.world) : plan.world;
  if (hw.gpu_bytes >= 0 && plan.device.peak > hw.gpu_bytes) {
    problems.push_back(describe("gpu memory", static_cast<double>(plan.device.peak),
                                static_cast<double>(hw.gpu_bytes), "per rank"));
  }
  const double host = static_cast<double>(plan.host.total) * per_node;
  if (hw.host_bytes >= 0 && host > static_cast<double>(hw.host_bytes)) {
    problems.push_back(
        describe("host memory", host, static_cast<double>(hw.host_bytes), "per node"));
  }
  const double nvme = static_cast<double>(plan.nvme.total) * per_node;
  if (nvme > 0 && hw.nvme_bytes >= 0 && nvme > static_cast<double>(hw.nvme_bytes)) {
    problems.push_back(describe("nvme", nvme, static_cast<double>(hw.nvme_bytes), "per node"));
  }
  return problems;
}

base::StatusOr<Verdict> judge(const base::UnitList& units, const base::Config& cfg,
                              const PlanOptions& options, const Hardware& hw) {
  Verdict v;
  ASSIGN_OR_RETURN(MemoryPlan plan, plan_memory(units, cfg, options));
  v.problems = fit_problems(plan, hw);
  v.fits = v.problems.empty();
  auto try_plan = [&](const base::Config& c, int world) -> base::StatusOr<MemoryPlan> {
    PlanOptions o = options;
    o.world = world;
    return plan_memory(units, c, o);
  };
  if (v.fits && hw.gpu_bytes >= 0)
    RETURN_IF_ERROR(find_faster(units, cfg, options.world, hw, try_plan, v));
  if (v.fits) return v;
  for (const Candidate& cand : candidates(cfg, options.world)) {
    Change change{cand.description, cfg, options.world, {}};
    if (!cand.edit(change.config, change.world)) continue;
    ASSIGN_OR_RETURN(change.plan, try_plan(change.config, change.world));
    if (fit_problems(change.plan, hw).empty()) v.fixes.push_back(std::move(change));
  }
  if (!v.fixes.empty()) return v;
  base::Config c = cfg;
  int world = options.world;
  for (const Candidate& step : escalation()) {
    if (!step.edit(c, world)) continue;
    v.combined.push_back(step.description);
    ASSIGN_OR_RETURN(v.combined_plan, try_plan(c, world));
    if (fit_problems(v.combined_plan, hw).empty()) {
      v.combined_fits = true;
      return v;
    }
  }
  for (int w = world * 2; w <= 65536; w *= 2) {  // then ranks, while sharding still helps
    ASSIGN_OR_RETURN(v.combined_plan, try_plan(c, w));
    if (fit_problems(v.combined_plan, hw).empty()) {
      v.combined.push_back("--world " + std::to_string(w));
      v.combined_fits = true;
      return v;
    }
  }
  return v;
}

}  // namespace dstrain::sharding
