// `dstrain plan`: per-rank bytes of parameters, gradients and optimizer state, and bytes moved
// per optimizer step, from the same flat layout the engine allocates.
#include <algorithm>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "launch/commands.h"
#include "launch/config/config_loader.h"
#include "runtime/model/llama.h"
#include "sharding/flat_layout.h"

namespace dstrain::launch {
namespace {

int64_t dtype_bytes(const std::string& dtype) { return dtype == "fp32" ? 4 : 2; }

}  // namespace

base::Status run_plan(const Command& cmd) {
  ASSIGN_OR_RETURN(base::Config cfg, load_config(cmd.config_path, cmd.overrides));
  RETURN_IF_ERROR(runtime::validate_llama_config(cfg.model));
  const int world = cmd.world > 0 ? cmd.world : 1;
  const int64_t stage = cfg.zero.stage;
  const int64_t compute = dtype_bytes(cfg.train.dtype);
  const bool fp32 = cfg.train.dtype == "fp32";

  int64_t params = 0, trainable_padded = 0, frozen_padded = 0, largest_unit = 0;
  base::UnitList units = runtime::build_llama(cfg.model);
  for (const auto& unit : units) {
    int64_t unit_padded = 0;
    for (int k = 0; k < sharding::kNumBufferKinds; ++k) {
      const auto kind = static_cast<sharding::BufferKind>(k);
      sharding::FlatLayout layout = sharding::make_flat_layout(unit->schema(), kind, world);
      for (const auto& e : layout.entries) params += e.numel;
      (kind == sharding::BufferKind::kFrozen ? frozen_padded : trainable_padded) += layout.padded_numel;
      unit_padded += layout.padded_numel;
    }
    largest_unit = std::max(largest_unit, unit_padded);
  }
  const int64_t shard = trainable_padded / world;
  const int64_t owned = stage == 0 ? trainable_padded : shard;
  // Per rank, in bytes. In fp32 the master weights are the compute weights themselves.
  // Stage 3 holds its shard plus the units in flight: the running one and the prefetched ones
  // (the tied embedding may stay gathered beside them, hence one more).
  const int64_t in_flight = largest_unit * (cfg.zero.prefetch_depth + 2);
  const int64_t compute_params =
      stage == 3 ? ((trainable_padded + frozen_padded) / world + in_flight) * compute
                 : (trainable_padded + frozen_padded) * compute;
  const int64_t master = fp32 ? 0 : owned * 4;
  const int64_t moments = owned * 8;
  const int64_t grads = (stage >= 2 ? shard : trainable_padded) * 4;
  // Ring collectives move (n-1)/n of the buffer per rank for a gather or a reduce-scatter,
  // twice that for an all-reduce.
  const double ring = world > 1 ? static_cast<double>(world - 1) / world : 0.0;
  const double grad_bytes = static_cast<double>(trainable_padded) * 4;
  const double param_bytes = static_cast<double>(trainable_padded) * compute;
  // Stage 3 gathers every unit twice per micro-batch (forward and backward); the figure is for
  // one micro-batch per step.
  const double comm = stage <= 1   ? 2 * ring * grad_bytes + (stage == 1 ? ring * param_bytes : 0)
                      : stage == 2 ? ring * grad_bytes + ring * param_bytes
                                   : ring * grad_bytes + 2 * ring * param_bytes;

  nlohmann::json plan = {
      {"world", world}, {"zero_stage", stage}, {"dtype", cfg.train.dtype},
      {"parameters", params},
      {"per_rank_bytes", {{"compute_params", compute_params}, {"master_params", master},
                          {"optimizer_moments", moments}, {"gradients", grads},
                          {"total", compute_params + master + moments + grads}}},
      {"comm_bytes_per_step_per_rank", static_cast<int64_t>(comm)},
      {"not_counted", "activations, workspace and communication buffers"}};
  if (cmd.json) {
    std::printf("%s\n", plan.dump(2).c_str());
    return base::Status::Ok();
  }
  auto gib = [](int64_t b) { return static_cast<double>(b) / (1 << 30); };
  std::printf("model: %lld parameters; %d rank(s), zero stage %lld, %s\n",
              static_cast<long long>(params), world, static_cast<long long>(stage),
              cfg.train.dtype.c_str());
  std::printf("%-22s %12s\n", "per rank", "GiB");
  for (const char* key : {"compute_params", "master_params", "optimizer_moments", "gradients", "total"}) {
    std::printf("%-22s %12.3f\n", key, gib(plan["per_rank_bytes"][key].get<int64_t>()));
  }
  std::printf("%-22s %12.3f\n", "comm per step", comm / (1 << 30));
  std::printf("not counted yet: activations, workspace, communication buffers\n");
  return base::Status::Ok();
}

}  // namespace dstrain::launch
