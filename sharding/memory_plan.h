#pragma once
// What a training job needs per rank, before launch and without allocating the model: pure
// functions over the config, the model's unit schemas and the engine's own flat layouts
// (sharding/flat_layout.h), following what sharding/engine.cc and engine_offload.cc allocate for
// each ZeRO stage and offload tier, plus the activations of sharding/activation_bytes.h.
// docs/plan.md gives the formulas.
#include <cstdint>
#include <string>
#include <vector>

#include "base/config.h"
#include "base/status.h"
#include "base/unit.h"

namespace dstrain::sharding {

struct PlanOptions {
  int world = 1;
  int ranks_per_node = 0;  // 0: every rank on one node
  // The device the ranks train on: CUDA kernels keep slightly different activations.
  bool cuda = true;
  // lora.base_sharding = "auto" keeps the frozen base whole when it takes at most a quarter of
  // this (as the trainer decides); 0: unknown, whole (the CPU rule).
  int64_t gpu_bytes = 0;
};

// Per rank, on the device (GPU; on a CPU-only run, ordinary memory).
struct DeviceBytes {
  int64_t params = 0;            // compute-dtype parameters held throughout (shards at stage 3)
  int64_t params_in_flight = 0;  // stage 3: gathered units (running + prefetched) and uploads
  int64_t gradients = 0;         // fp32 accumulators at the peak (persistent, and at stages 2
                                 // and 3 those made again by the backward: see released_gradients)
  int64_t released_gradients = 0;  // stages 2, 3, one micro-batch per step: the device tier's
                                   // accumulators, given back after the step and made again as
                                   // the backward's reductions start (not in `persistent`)
  int64_t optimizer = 0;           // fp32 master (unless it is the parameters) and AdamW moments
  int64_t activations = 0;         // kept for backward, one micro-batch, at their largest
  int64_t comm_buffers = 0;        // gradient reductions in flight (their inputs and outputs)
  int64_t workspace = 0;           // autograd's gradient temporaries, the loss chunk, cuBLAS
  int64_t persistent = 0;          // params + optimizer + the gradients held between steps
  int64_t peak = 0;                // the most live at one time (at most the sum of the parts)
};

// Per rank, in host memory (offload tiers) or on NVMe.
struct TierBytes {
  int64_t optimizer = 0;  // master + moments
  int64_t params = 0;     // parameter shards (offload.params)
  int64_t staging = 0;    // the host optimizer's slots and the NVMe files' slots
  int64_t total = 0;
};

// Per step per rank (sharding/comm_volume.h for the network).
struct CommBytes {
  std::string shard_group = "world";
  int ranks_per_node = 1;
  int64_t intra_node = 0;
  int64_t inter_node = 0;
  int64_t host_device = 0;  // PCIe: offloaded state down and up, parameter uploads
  int64_t nvme = 0;         // bytes read plus written
};

struct MemoryPlan {
  int world = 1;
  int shard_world = 1;     // ranks a buffer is sharded over (the node's under "node")
  int64_t parameters = 0;  // real elements
  int64_t trainable_parameters = 0;
  int64_t grad_accumulation = 1;  // micro-batches per optimizer step per rank
  bool replicate_frozen = false;
  // The old per_rank_bytes view: every tier together.
  int64_t compute_params = 0;  // compute-dtype parameters wherever they live
  int64_t master_params = 0;   // fp32 masters not aliasing the parameters
  int64_t optimizer_moments = 0;
  DeviceBytes device;
  TierBytes host;
  TierBytes nvme;
  // Activations, bytes per micro-batch: what one decoder layer keeps, and all units together at
  // the start of backward (checkpointing included).
  int64_t layer_activation_bytes = 0;
  int64_t activations_at_backward = 0;
  CommBytes comm;
};

// What the CUDA caching allocator (c10/cuda/CUDACachingAllocator.cpp) counts as allocated for
// one tensor of `bytes`: its statistic counts blocks, and every request is rounded up to 512
// bytes. (A large-pool block keeps up to 1 MiB more when the rest of the free block it is cut
// from is too small to split off; whether it is depends on what the pool holds at that moment,
// so the plan does not count it.)
int64_t cuda_allocated_bytes(int64_t bytes);

// `units`: the built model (LoRA applied). `cfg.model` must be the resolved architecture.
base::StatusOr<MemoryPlan> plan_memory(const base::UnitList& units, const base::Config& cfg,
                                       const PlanOptions& options);

}  // namespace dstrain::sharding
