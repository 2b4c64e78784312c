// `dstrain plan`: per-rank bytes of parameters, gradients and optimizer state in each tier (GPU,
// host memory, NVMe), and bytes moved per optimizer step, from the same flat layout the engine
// allocates; says when the host memory or the disk of this machine cannot hold a config.
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "launch/commands.h"
#include "launch/config/config_loader.h"
#include "runtime/model/llama.h"
#include "runtime/model/lora.h"
#include "sharding/flat_layout.h"

namespace dstrain::launch {
namespace {

int64_t dtype_bytes(const std::string& dtype) { return dtype == "fp32" ? 4 : 2; }

// Sizes of the model as the engine lays it out for `world` ranks.
struct ModelSizes {
  int64_t params = 0;            // real elements
  int64_t trainable_padded = 0;  // elements of the trainable flat buffers
  int64_t frozen_padded = 0;
  int64_t largest_unit = 0;      // elements of the largest unit's buffers
  int64_t largest_shard = 0;     // elements of the largest trainable buffer's shard
};

ModelSizes model_sizes(const base::UnitList& units, int world) {
  ModelSizes m;
  for (const auto& unit : units) {
    int64_t unit_padded = 0;
    for (int k = 0; k < sharding::kNumBufferKinds; ++k) {
      const auto kind = static_cast<sharding::BufferKind>(k);
      sharding::FlatLayout layout = sharding::make_flat_layout(unit->schema(), kind, world);
      for (const auto& e : layout.entries) m.params += e.numel;
      if (kind == sharding::BufferKind::kFrozen) {
        m.frozen_padded += layout.padded_numel;
      } else {
        m.trainable_padded += layout.padded_numel;
        m.largest_shard = std::max(m.largest_shard, layout.padded_numel / world);
      }
      unit_padded += layout.padded_numel;
    }
    m.largest_unit = std::max(m.largest_unit, unit_padded);
  }
  return m;
}

// Bytes of this machine's memory, and free bytes of the file system holding `dir` (its nearest
// existing ancestor); 0 when unknown.
int64_t host_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  return pages > 0 && page > 0 ? static_cast<int64_t>(pages) * page : 0;
}

int64_t free_disk_bytes(std::string dir) {
  struct statvfs st {};
  while (!dir.empty() && statvfs(dir.c_str(), &st) != 0) {
    const size_t slash = dir.find_last_of('/');
    dir = slash == std::string::npos ? std::string() : dir.substr(0, slash);
  }
  if (dir.empty() && statvfs(".", &st) != 0) return 0;
  return static_cast<int64_t>(st.f_bavail) * static_cast<int64_t>(st.f_frsize);
}

}  // namespace

base::Status run_plan(const Command& cmd) {
  ASSIGN_OR_RETURN(base::Config cfg, load_config(cmd.config_path, cmd.overrides));
  RETURN_IF_ERROR(runtime::validate_llama_config(cfg.model));
  const int world = cmd.world > 0 ? cmd.world : 1;
  const int64_t stage = cfg.zero.stage;
  const int64_t compute = dtype_bytes(cfg.train.dtype);
  const bool fp32 = cfg.train.dtype == "fp32";
  const std::string& opt_tier = cfg.offload.optimizer;
  const std::string& param_tier = cfg.offload.params;

  base::UnitList units = runtime::build_llama(cfg.model);
  if (cfg.lora.enabled) RETURN_IF_ERROR(runtime::apply_lora(units, cfg.lora));
  const ModelSizes m = model_sizes(units, world);
  const bool frozen_whole = stage < 3 || (cfg.lora.enabled && cfg.lora.base_sharding == "replicated");
  const int64_t shard = m.trainable_padded / world;
  const int64_t owned = stage == 0 ? m.trainable_padded : shard;

  // Per rank, in bytes. Compute-dtype parameters: everything below stage 3; at stage 3 the
  // shards plus the units in flight (the running one, the prefetched ones, and a tied embedding
  // that may stay gathered beside them), or only those when the shards live on the host.
  const int64_t in_flight = m.largest_unit * (cfg.zero.prefetch_depth + 2);
  const int64_t frozen = (frozen_whole ? m.frozen_padded : m.frozen_padded / world) * compute;
  const int64_t param_shards = (stage == 3 ? m.trainable_padded / world : m.trainable_padded) * compute;
  const int64_t device_params = param_tier == "none" ? param_shards + frozen + (stage == 3 ? in_flight * compute : 0)
                                                     : frozen + in_flight * compute;
  // fp32 master (the compute weights themselves in fp32 on the device without offload) and the
  // two AdamW moments: on the device, in host memory, or split between host and NVMe by the
  // host budget.
  const int64_t master = (fp32 && opt_tier == "none") ? 0 : owned * 4;
  const int64_t state = master + owned * 8;
  const int64_t grads = (stage >= 2 ? shard : m.trainable_padded) * 4;
  int64_t device_state = 0, host_state = 0, nvme_state = 0;
  if (opt_tier == "none") {
    device_state = state;
  } else if (opt_tier == "cpu") {
    host_state = state;
  } else {
    host_state = std::min<int64_t>(state, static_cast<int64_t>(cfg.offload.host_budget_gib * (1 << 30)));
    nvme_state = state - host_state;
  }
  // The host optimizer's staging: two slots of the largest shard (fp32 gradient, compute-dtype
  // result), and four NVMe slots of three fp32 arrays.
  const int64_t staging = opt_tier == "none" ? 0
                          : 2 * m.largest_shard * (4 + compute) + (opt_tier == "nvme" ? 4 * 12 * m.largest_shard : 0);
  const int64_t host_params = param_tier == "cpu" ? param_shards : 0;
  const int64_t nvme_params = param_tier == "nvme" ? param_shards : 0;
  const int64_t device_total = device_params + device_state + grads;
  const int64_t host_total = host_state + host_params + staging;
  const int64_t nvme_total = nvme_state + nvme_params;

  // Ring collectives move (n-1)/n of the buffer per rank for a gather or a reduce-scatter,
  // twice that for an all-reduce.
  const double ring = world > 1 ? static_cast<double>(world - 1) / world : 0.0;
  const double grad_bytes = static_cast<double>(m.trainable_padded) * 4;
  const double param_bytes = static_cast<double>(m.trainable_padded) * compute;
  // Stage 3 gathers every unit twice per micro-batch (forward and backward); the figure is for
  // one micro-batch per step.
  const double comm = stage <= 1   ? 2 * ring * grad_bytes + (stage == 1 ? ring * param_bytes : 0)
                      : stage == 2 ? ring * grad_bytes + ring * param_bytes
                                   : ring * grad_bytes + 2 * ring * param_bytes;
  // Host <-> device per step: gradients down and results up with an offloaded optimizer,
  // parameter shards up before each gather (twice a micro-batch) when they live on the host.
  const double pcie = (opt_tier == "none" ? 0.0 : static_cast<double>(owned) * (4 + compute)) +
                      (param_tier == "none" ? 0.0 : 2.0 * static_cast<double>(param_shards));

  // This machine, with all `world` ranks on it (one node).
  const int64_t host_have = host_memory_bytes();
  const bool uses_nvme = opt_tier == "nvme" || param_tier == "nvme";
  const int64_t disk_have = uses_nvme ? free_disk_bytes(cfg.offload.nvme_dir) : 0;
  std::vector<std::string> problems;
  auto gib = [](double b) { return b / (1 << 30); };
  char line[256];
  if (host_have > 0 && host_total * world > host_have) {
    std::snprintf(line, sizeof(line), "host memory: %d rank(s) need %.1f GiB, this machine has %.1f GiB",
                  world, gib(static_cast<double>(host_total) * world), gib(static_cast<double>(host_have)));
    problems.emplace_back(line);
  }
  if (uses_nvme && nvme_total * world > disk_have) {
    std::snprintf(line, sizeof(line), "offload.nvme_dir %s: %d rank(s) need %.1f GiB, %.1f GiB free",
                  cfg.offload.nvme_dir.c_str(), world, gib(static_cast<double>(nvme_total) * world),
                  gib(static_cast<double>(disk_have)));
    problems.emplace_back(line);
  }

  nlohmann::json plan = {
      {"world", world}, {"zero_stage", stage}, {"dtype", cfg.train.dtype},
      {"offload", {{"optimizer", opt_tier}, {"params", param_tier}}},
      {"parameters", m.params},
      {"per_rank_bytes", {{"compute_params", device_params + host_params + nvme_params},
                          {"master_params", master}, {"optimizer_moments", owned * 8},
                          {"gradients", grads}, {"total", device_total + host_total + nvme_total}}},
      {"per_rank_tier_bytes", {{"device", device_total}, {"host", host_total}, {"nvme", nvme_total}}},
      {"comm_bytes_per_step_per_rank", static_cast<int64_t>(comm)},
      {"host_device_bytes_per_step_per_rank", static_cast<int64_t>(pcie)},
      {"machine", {{"host_memory_bytes", host_have}, {"nvme_free_bytes", disk_have}}},
      {"fits", problems.empty()},
      {"problems", problems},
      {"not_counted", "activations, workspace and communication buffers"}};
  if (cmd.json) {
    std::printf("%s\n", plan.dump(2).c_str());
    return base::Status::Ok();
  }
  std::printf("model: %lld parameters; %d rank(s), zero stage %lld, %s, offload optimizer %s, params %s\n",
              static_cast<long long>(m.params), world, static_cast<long long>(stage),
              cfg.train.dtype.c_str(), opt_tier.c_str(), param_tier.c_str());
  std::printf("%-22s %12s\n", "per rank", "GiB");
  for (const char* key : {"compute_params", "master_params", "optimizer_moments", "gradients", "total"}) {
    std::printf("%-22s %12.3f\n", key, gib(plan["per_rank_bytes"][key].get<double>()));
  }
  for (const char* key : {"device", "host", "nvme"}) {
    std::printf("%-22s %12.3f\n", (std::string("in ") + key).c_str(),
                gib(plan["per_rank_tier_bytes"][key].get<double>()));
  }
  std::printf("%-22s %12.3f\n", "comm per step", gib(comm));
  std::printf("%-22s %12.3f\n", "host<->device per step", gib(pcie));
  for (const std::string& p : problems) std::printf("does not fit: %s\n", p.c_str());
  std::printf("not counted yet: activations, workspace, communication buffers\n");
  return base::Status::Ok();
}

}  // namespace dstrain::launch
