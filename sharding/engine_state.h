#pragma once
// The engine's per-buffer and per-unit state, shared by its implementation files (engine.cc: the
// unit walk and the device optimizer; engine_offload.cc: the host and NVMe tiers;
// engine_slices.cc: named state for checkpoints and export). Not part of the engine's interface:
// include only from those.
#include <ATen/ATen.h>

#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "sharding/engine.h"

namespace dstrain::sharding {

// Where a buffer's full parameters are. Below stage 3 always kGathered; under stage 3 the
// transitions live in Engine::transition and nowhere else.
enum class Engine::GatherState { kReleased, kGathering, kGathered };

// One flat buffer of a unit (decay, no-decay or frozen parameters).
struct Engine::Buffer {
  FlatLayout layout;
  SplitPlan split;
  ShardRange shard;  // this rank's range of the state it holds (the whole buffer at stage 0
                     // and for frozen buffers kept whole)
  bool trainable = false;
  bool sinks = false;    // the unit's ops write its gradient (EngineOptions::fused_weight_grad)
  bool gathers = false;  // stage 3: `full` comes and goes (false: it is always there)
  // Compute dtype, [padded_numel]: what forward reads. Under stage 3 its memory exists only
  // between a gather and the release after use; the tensor (and its storage object, which saved
  // graphs reference) is permanent.
  at::Tensor full;
  at::Tensor shard_param;  // stage 3: this rank's part of `full` in the compute dtype (the gather's
                           // input); aliases `master` in fp32
  at::Tensor master;   // fp32 master: whole buffer (stage 0) or the shard; aliases `full` in fp32
                       // below stage 3
  at::Tensor exp_avg;  // AdamW moments, shaped like `master`
  at::Tensor exp_avg_sq;
  at::Tensor grad;     // fp32 accumulator: whole buffer (stages 0, 1) or the shard (stages 2, 3)
  at::Tensor mb_grad;  // stages 2, 3: this micro-batch's whole-buffer gradient until reduce-scatter
  bool grad_is_zero = true;    // `grad` was just made or cleared: the step's first reduce-scatter
                               // writes into it instead of into a buffer that is then added
  bool copy_written = false;   // the device step's kernel wrote the compute-dtype copy already
  bool grad_stale = false;     // with grad_is_zero: cleared in name only (the last step's values
                               // are still there) because that first reduce-scatter overwrites it
  bool grad_released = false;  // with grad_is_zero: stages 2, 3 on the device tier give the
                               // accumulator's memory back between the step and the next
                               // reduction (`grad` is then an empty tensor with its options), so
                               // the next forward's activations can use it; made again by
                               // Engine::restore_accumulator
  GatherState state = GatherState::kGathered;
  std::unique_ptr<Work> gather;  // the all-gather into `full` while kGathering
  at::Tensor upload;             // offload.params: the device copy of `shard_param` being gathered
  at::Tensor updated;            // stages 1, 2 with the host optimizer: the updated shard, on the
                                 // device in the compute dtype, until the all-gather
  int nvme_shard = -1;           // offload.optimizer = nvme: its record in the state file; master
                                 // and moments exist only while paged in
  int param_record = -1;         // offload.params = nvme: its record in the parameter file;
                                 // `shard_param` exists only while paged in
  int host_shard = -1;           // offload.overlap_step: its shard in the host step in flight
  bool offloaded = false;        // its unit's state is in the offload tiers (offload.ratio):
                                 // the host optimizer updates it; else the device one

  bool present() const { return !layout.empty(); }
  // The slice of `grad` that matches `master`.
  at::Tensor master_grad(int64_t stage) const {
    return stage == 1 ? grad.narrow(0, shard.begin, shard.numel()) : grad;
  }
};

// A parameter of this unit that lives in an earlier unit's buffer (tied embedding / LM head).
struct TiedRef {
  int schema_index;
  int owner_unit;
  BufferKind owner_kind;
  int owner_entry;
};

struct Engine::UnitState {
  Buffer buffers[kNumBufferKinds];
  std::vector<TiedRef> tied;
  std::vector<Buffer*> uses;  // every buffer the unit's forward reads: its own and tied owners'
};

// A LibTorch exception as an error naming what the engine was doing.
base::Status torch_error(const std::exception& e, const std::string& where);

// Per micro-batch, per unit: what backward needs.
struct Engine::UnitRun {
  at::Tensor in;                     // detached input (requires grad) or token ids
  at::Tensor out;                    // unit output; for the last unit, the weighted loss.
                                     // Undefined between a checkpointed forward and its recompute.
  bool recompute = false;            // forward ran under no-grad: backward recomputes it first
  at::Tensor leaf[kNumBufferKinds];  // the grad-requiring aliases of the flat buffers
  // Buffers whose gradient the unit's ops write: where they write it in this backward.
  c10::intrusive_ptr<base::GradSinkBuffer> sink[kNumBufferKinds];
};

}  // namespace dstrain::sharding
