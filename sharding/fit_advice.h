#pragma once
// Does a plan fit the hardware, and if not, what is the smallest change that makes it fit. Every
// suggested change is checked by planning again with it (sharding/memory_plan.h).
#include <cstdint>
#include <string>
#include <vector>

#include "base/config.h"
#include "base/status.h"
#include "base/unit.h"
#include "sharding/memory_plan.h"

namespace dstrain::sharding {

struct Hardware {
  int64_t gpu_bytes = -1;   // per GPU; -1: unknown, not checked
  int64_t host_bytes = -1;  // per node
  int64_t nvme_bytes = -1;  // free per node under offload.nvme_dir
  int ranks_per_node = 0;   // 0: every rank on one node
};

// Why `plan` does not fit `hw` (empty: it fits). Host memory and NVMe are shared by the ranks of a
// node. Host problems start with "host memory", NVMe ones with "nvme", GPU ones with "gpu memory".
std::vector<std::string> fit_problems(const MemoryPlan& plan, const Hardware& hw);

// One change to the config (or the world size) and the plan it gives.
struct Change {
  std::string description;  // "train.activation_checkpointing=selective", "--world 8", ...
  base::Config config;
  int world = 1;
  MemoryPlan plan;
};

struct Verdict {
  bool fits = false;
  std::vector<std::string> problems;
  // When it does not fit: single changes that fit, smallest first; else empty, and `combined`
  // holds changes applied together until it fits (also empty when nothing tried fits).
  std::vector<Change> fixes;
  std::vector<std::string> combined;
  bool combined_fits = false;
  MemoryPlan combined_plan;
  // When it fits and the GPU's memory is known: changes that do less work per step and still fit
  // with 5% of the GPU's memory to spare, each on its own: the fewest recomputed decoder layers
  // (train.activation_checkpointing = none, or selective with train.recompute_layers), and with
  // offload.optimizer = cpu the smallest offload.ratio (a multiple of 0.05), whose units kept on
  // the device take their host AdamW work and PCIe traffic off the step.
  std::vector<Change> faster;
};

// Candidates, smallest first: selective checkpointing, halving the micro-batch, full
// checkpointing, each higher ZeRO stage, offload.optimizer = cpu, more ranks (x2 .. x64),
// offload.params = cpu at stage 3, then NVMe for the optimizer and the parameters.
// Also fills Verdict::faster.
base::StatusOr<Verdict> judge(const base::UnitList& units, const base::Config& cfg,
                              const PlanOptions& options, const Hardware& hw);

}  // namespace dstrain::sharding
