#pragma once
// AdamW over optimizer state that lives in host memory (offload.optimizer = cpu, DESIGN.md
// "Offload tiers"). Each shard's fp32 gradient comes down from the device, the CPU AdamW
// (offload/cpu_adam.h) updates its fp32 master and moments in place and writes the updated
// parameters in the compute dtype, which go back up to the device. Shards flow through two
// staging slots: while the CPU updates shard i on a worker thread, the calling thread downloads
// shard i + 1 and uploads shard i - 1.
#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <vector>

#include "base/status.h"
#include "offload/cpu_adam.h"
#include "offload/host_buffer.h"
#include "sharding/nvme_state.h"

namespace dstrain::sharding {

struct HostShard {
  at::Tensor grad;    // fp32 gradient of the shard (device or host), read only
  at::Tensor master;  // fp32 host tensors, updated in place
  at::Tensor exp_avg;
  at::Tensor exp_avg_sq;
  at::Tensor out;  // receives the updated parameters (any device and dtype); may be undefined
  double weight_decay = 0.0;
  int nvme_shard = -1;  // >= 0: master and moments are that shard of the NVMe state file
  int nvme_param = -1;  // >= 0: the updated parameters go to that record of the parameter file
};

class HostOptimizer {
 public:
  // `max_numel`: the largest shard it will see (sizes the staging slots). `threads`: the CPU
  // AdamW's threads (0: all). Staging memory comes from `allocator` (pinned on GPU machines).
  static base::StatusOr<std::unique_ptr<HostOptimizer>> create(
      std::shared_ptr<offload::HostAllocator> allocator, int64_t max_numel,
      at::ScalarType out_dtype, int threads);

  // One AdamW step over every shard, in order; `hyper.weight_decay` is taken from each shard.
  // Shards with an nvme_shard take their state from `nvme` (fetched one shard ahead, written
  // back behind); shards with an nvme_param write their result to that record of `nvme_params`.
  // Returns after every `out` has been written (device copies included) and every write-back has
  // finished. `shard_done(i)`, when given, is called on the calling thread as soon as shard i's
  // `out` is written and its gradient no longer read, in increasing order of i.
  base::Status step(std::vector<HostShard>& shards, const offload::AdamWHyper& hyper,
                    NvmeStateFile* nvme = nullptr, NvmeStateFile* nvme_params = nullptr,
                    const std::function<void(int)>& shard_done = {});

 private:
  struct Slot {
    at::Tensor grad;  // fp32 [max_numel] host staging for a device gradient
    at::Tensor out;   // out_dtype [max_numel] host staging for a device upload
  };
  HostOptimizer(int threads, at::ScalarType out_dtype) : adam_(threads), out_dtype_(out_dtype) {}
  // The CPU update of one shard, run on the worker thread; `grad` is host memory.
  base::Status update(HostShard& shard, const at::Tensor& grad, const at::Tensor& host_out,
                      offload::AdamWHyper hyper);

  offload::CpuAdamW adam_;
  at::ScalarType out_dtype_;
  Slot slots_[2];
};

}  // namespace dstrain::sharding
