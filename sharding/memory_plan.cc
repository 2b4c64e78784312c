#include "sharding/memory_plan.h"

#include <algorithm>
#include <deque>
#include <map>

#include "sharding/activation_bytes.h"
#include "sharding/activation_checkpointing.h"
#include "sharding/comm_volume.h"
#include "sharding/flat_layout.h"
#include "sharding/offload_split.h"

namespace dstrain::sharding {
namespace {

// Gradient reductions the engine leaves in flight during backward (Engine::kReductionsInFlight).
constexpr size_t kReductionsInFlight = 4;
// cuBLAS's workspace (ATen's CublasHandlePool.cpp, torch 2.11): 32 MiB on Hopper and Blackwell
// (CUBLAS_WORKSPACE_CONFIG's default there), taken from the caching allocator at a handle's first
// matmul and kept for the process. ATen keeps one per (cuBLAS handle, stream), cuBLASLt shares it,
// and handles are per thread: the forward (and a checkpointed unit's recompute) runs its matmuls
// on the calling thread, autograd runs every CUDA backward op on its own device thread, so a
// training rank holds two.
constexpr int64_t kCublasWorkspace = int64_t{32} << 20;
constexpr int64_t kCublasThreads = 2;
// The CUDA caching allocator rounds every request up to this (kMinBlockSize,
// c10/cuda/CUDACachingAllocator.cpp).
constexpr int64_t kCudaBlockRound = 512;
// NVMe state files keep this many host slots per file (Engine::create_nvme_file).
constexpr int64_t kNvmeSlots = 4;
constexpr int64_t kNvmeAlign = 4096;

int64_t dtype_bytes(const std::string& dtype) { return dtype == "fp32" ? 4 : 2; }

int64_t align_up(int64_t n, int64_t a) { return (n + a - 1) / a * a; }

// One flat buffer of one unit, as Engine::init_storage places it.
struct BufferInfo {
  int64_t padded = 0;  // elements of the whole buffer
  int64_t shard = 0;   // elements of one rank's shard
  bool trainable = false;
  bool gathers = false;    // stage 3: gathered before use, released after
  int64_t owned = 0;       // elements of optimizer state this rank holds
  bool offloaded = false;  // its unit's state is in the offload tiers (offload_split.h)
  bool sinks = false;      // the unit's ops write its fp32 gradient (Engine: Buffer::sinks)
};

struct UnitInfo {
  std::vector<int> own;   // its buffers
  std::vector<int> uses;  // every buffer its forward reads (tied owners included)
  bool trainable = false;
};

struct Layouts {
  std::vector<BufferInfo> buffers;  // in init order
  std::vector<UnitInfo> units;
  int64_t parameters = 0;
  int64_t trainable_parameters = 0;
};

Layouts make_layouts(const base::UnitList& units, int world, int64_t stage, bool replicate_frozen,
                     const std::vector<bool>& offloaded, bool fused_weight_grad) {
  Layouts out;
  std::map<std::string, int> owner;  // parameter name -> buffer index
  for (size_t u = 0; u < units.size(); ++u) {
    const auto& unit = units[u];
    UnitInfo info;
    for (int k = 0; k < kNumBufferKinds; ++k) {
      const FlatLayout layout = make_flat_layout(unit->schema(), static_cast<BufferKind>(k), world);
      if (layout.empty()) continue;
      BufferInfo b;
      b.padded = layout.padded_numel;
      b.shard = layout.shard_numel;
      b.trainable = layout.kind != BufferKind::kFrozen;
      const bool whole = stage == 0 || (!b.trainable && (stage < 3 || replicate_frozen));
      b.gathers = stage == 3 && !whole;
      b.owned = whole ? b.padded : b.shard;
      b.offloaded = offloaded[u];
      b.sinks = fused_weight_grad && sinks_whole_buffer(unit->schema(), layout, u);
      const int index = static_cast<int>(out.buffers.size());
      for (const FlatEntry& e : layout.entries) {
        owner[e.name] = index;
        out.parameters += e.numel;
        if (b.trainable) out.trainable_parameters += e.numel;
      }
      info.trainable = info.trainable || b.trainable;
      info.own.push_back(index);
      info.uses.push_back(index);
      out.buffers.push_back(b);
    }
    for (const base::ParamSpec& p : unit->schema()) {
      if (p.tied_to.empty()) continue;
      auto it = owner.find(p.tied_to);
      if (it == owner.end()) continue;
      out.buffers[it->second].sinks = false;
      if (std::find(info.uses.begin(), info.uses.end(), it->second) == info.uses.end()) {
        info.uses.push_back(it->second);
      }
    }
    out.units.push_back(std::move(info));
  }
  return out;
}

// Engine::step: at stages 2 and 3 the device tier's gradient accumulators are given back after
// the step and made again by the next backward's first reduction of each; with one micro-batch
// per step that leaves them out of the forward (with more, a later micro-batch's forward has
// them all).
bool gradients_released(const BufferInfo& b, int64_t stage, int64_t micro_batches) {
  return b.trainable && stage >= 2 && !b.offloaded && micro_batches == 1;
}

bool frozen_base_replicated(const base::UnitList& units, const base::Config& cfg,
                            const PlanOptions& options) {
  const std::string& mode = cfg.lora.base_sharding;
  if (mode != "auto") return mode == "replicated";
  int64_t frozen = 0;
  for (const auto& unit : units) {
    for (const base::ParamSpec& p : unit->schema()) {
      if (!p.trainable && p.tied_to.empty()) frozen += p.numel();
    }
  }
  return options.gpu_bytes == 0 || frozen * dtype_bytes(cfg.train.dtype) <= options.gpu_bytes / 4;
}

// Parameters and optimizer state by tier (Engine::init_storage, init_stage3_buffer,
// init_optimizer_state, create_nvme_state).
// `cuda`: device tensors are counted as the caching allocator's blocks (cuda_allocated_bytes).
void place_state(const Layouts& l, const base::Config& cfg, bool cuda, MemoryPlan& plan) {
  const int64_t c = dtype_bytes(cfg.train.dtype);
  auto on_device = [cuda](int64_t bytes) { return cuda ? cuda_allocated_bytes(bytes) : bytes; };
  const int64_t stage = cfg.zero.stage;
  double budget = cfg.offload.host_budget_gib * static_cast<double>(int64_t{1} << 30);
  int64_t max_owned = 0, max_nvme_record = 0, max_param_record = 0;
  // One fp32 optimizer tensor of `numel` elements (Engine::optimizer_tensor).
  std::string opt, par;  // the tiers of the buffer at hand: "none" for those kept on the device
  auto add_optimizer = [&](int64_t numel) {
    if (opt == "none") {
      plan.device.optimizer += on_device(4 * numel);
    } else {
      plan.host.optimizer += 4 * numel;
    }
  };
  for (const BufferInfo& b : l.buffers) {
    opt = b.offloaded ? cfg.offload.optimizer : "none";
    par = b.offloaded ? cfg.offload.params : "none";
    if (b.gathers) {
      const int64_t bytes = b.shard * c;
      if (par == "none") {
        plan.device.params += on_device(bytes);
      } else {
        (par == "cpu" ? plan.host.params : plan.nvme.params) += bytes;
      }
      if (par == "nvme") max_param_record = std::max(max_param_record, b.shard);
    } else {
      plan.device.params += on_device(b.padded * c);
    }
    plan.compute_params += (b.gathers ? b.shard : b.padded) * c;
    if (!b.trainable) continue;
    const int64_t grad_bytes = on_device((stage >= 2 ? b.shard : b.padded) * 4);
    (gradients_released(b, stage, plan.grad_accumulation) ? plan.device.released_gradients
                                                          : plan.device.gradients) += grad_bytes;
    plan.optimizer_moments += 8 * b.owned;
    if (b.offloaded) max_owned = std::max(max_owned, b.owned);
    if (opt == "nvme") {  // master and moments together, host memory while the budget lasts
      const int64_t bytes = 12 * b.owned;
      plan.master_params += 4 * b.owned;
      if (static_cast<double>(bytes) <= budget) {
        budget -= static_cast<double>(bytes);
        plan.host.optimizer += bytes;
      } else {
        plan.nvme.optimizer += bytes;
        max_nvme_record = std::max(max_nvme_record, b.owned);
      }
      continue;
    }
    // The fp32 master is the parameters themselves where both are fp32 on the same side.
    const bool alias =
        c == 4 && (b.gathers ? (opt != "none") == (par != "none") && par != "nvme" : opt == "none");
    plan.master_params += alias ? 0 : 4 * b.owned;
    if (!alias) add_optimizer(b.owned);  // the master
    add_optimizer(b.owned);              // exp_avg
    add_optimizer(b.owned);              // exp_avg_sq
  }
  if (cfg.offload.optimizer != "none") {  // HostOptimizer: two slots of the largest shard
    plan.host.staging += 2 * max_owned * (4 + (c != 4 ? c : 0));
  }
  if (max_nvme_record > 0)
    plan.host.staging += kNvmeSlots * 3 * align_up(4 * max_nvme_record, kNvmeAlign);
  if (max_param_record > 0)
    plan.host.staging += kNvmeSlots * align_up(c * max_param_record, kNvmeAlign);
  plan.device.persistent = plan.device.params + plan.device.gradients + plan.device.optimizer;
  plan.host.total = plan.host.optimizer + plan.host.params + plan.host.staging;
  plan.nvme.total = plan.nvme.optimizer + plan.nvme.params;
}

// Per unit: activations, under the checkpointing policy.
std::vector<UnitActivations> unit_activations(const base::UnitList& units, const Layouts& l,
                                              const ActivationShape& shape) {
  std::vector<UnitActivations> acts;
  bool trainable_before = false;
  for (size_t u = 0; u < units.size(); ++u) {
    const std::string& name = units[u]->name();
    bool sinks = false;  // Engine::forward_unit: such a unit's input always needs a gradient
    for (int b : l.units[u].own) sinks = sinks || l.buffers[b].sinks;
    if (name == "embed") {
      acts.push_back(embed_activations(shape));
    } else if (name == "head") {
      // lm_head.weight, or the embedding it is tied to.
      bool head_trainable = false;
      for (const base::ParamSpec& p : units[u]->schema()) {
        if (p.name != "lm_head.weight") continue;
        head_trainable = p.tied_to.empty() ? p.trainable : l.units[0].trainable;
      }
      acts.push_back(head_activations(shape, trainable_before || sinks, head_trainable, sinks));
    } else {
      acts.push_back(layer_activations(shape, trainable_before || sinks, sinks));
    }
    trainable_before = trainable_before || l.units[u].trainable;
  }
  return acts;
}

// The live bytes beyond the persistent state through one micro-batch's forward and backward, as
// Engine::forward_backward walks the units; fills the device parts at the largest point.
void walk_micro_batch(const base::UnitList& units, const Layouts& l, const base::Config& cfg,
                      const std::vector<bool>& recompute, const ActivationShape& shape,
                      MemoryPlan& plan) {
  const int n = static_cast<int>(units.size());
  const int64_t c = dtype_bytes(cfg.train.dtype);
  const int64_t stage = cfg.zero.stage;
  const int64_t depth = cfg.zero.prefetch_depth;
  const int64_t wire = cfg.zero.reduce_dtype == "bf16" ? 2 : 4;
  const bool uploads = cfg.offload.params != "none";  // for the offloaded buffers
  // Engine::start_reduction: the step's first reduce-scatter of an fp32 gradient lands in the
  // cleared accumulator, so with one micro-batch per step no shard-sized output exists (nor for
  // a buffer whose gradient an overlapped host step clears, which keeps the output).
  // (Engine::overlap_host_step: not with the parameters on NVMe.)
  const bool overlap = cfg.offload.overlap_step && stage == 3 && cfg.offload.optimizer != "none" &&
                       cfg.offload.params != "nvme";
  auto reduced_in_place = [&](const BufferInfo& buf) {
    return stage >= 2 && wire == 4 && plan.grad_accumulation == 1 && !(overlap && buf.offloaded);
  };
  const std::vector<UnitActivations> acts = unit_activations(units, l, shape);
  plan.layer_activation_bytes = n > 2 ? acts[1].saved + acts[1].output : 0;

  // Stage 3: the gathered buffers of units [lo, hi] (each buffer once).
  auto in_flight = [&](int lo, int hi) {
    if (stage != 3) return int64_t{0};
    std::vector<int> seen;
    int64_t bytes = 0;
    for (int u = std::max(lo, 0); u <= std::min(hi, n - 1); ++u) {
      for (int b : l.units[u].uses) {
        if (!l.buffers[b].gathers || std::find(seen.begin(), seen.end(), b) != seen.end()) continue;
        seen.push_back(b);
        const bool upload = uploads && l.buffers[b].offloaded;
        bytes += l.buffers[b].padded * c + (upload ? l.buffers[b].shard * c : 0);
      }
    }
    return bytes;
  };
  std::vector<int64_t> kept_before(n + 1, 0);  // what units [0, u) keep for backward
  for (int u = 0; u < n; ++u) {
    kept_before[u + 1] = kept_before[u] + acts[u].output + (recompute[u] ? 0 : acts[u].saved);
  }
  struct Point {
    int64_t activations = 0, comm = 0, params = 0, workspace = 0;
    int64_t gradients = 0;  // released accumulators made again so far (gradients_released)
    int64_t total() const { return activations + comm + params + workspace + gradients; }
  };
  Point best;
  auto consider = [&](const Point& p) {
    if (p.total() > best.total()) best = p;
    plan.activations_at_backward = std::max(plan.activations_at_backward, p.activations);
  };
  // The end of the forward: the head's loss, with every unit's activations kept.
  consider({kept_before[n - 1] + acts[n - 1].saved, 0, in_flight(n - 1 - depth, n - 1),
            acts[n - 1].forward_ws});
  std::deque<int64_t> pending;  // reductions in flight, newest last
  int64_t last_reduced = 0;     // the reductions of the last unit that had any
  int64_t grads = 0;            // released accumulators made again (each at its first reduction)
  std::vector<bool> grad_made(l.buffers.size(), false);
  auto accumulator = [&](int b) {
    const BufferInfo& buf = l.buffers[b];
    if (grad_made[b] || !gradients_released(buf, stage, plan.grad_accumulation)) return int64_t{0};
    grad_made[b] = true;
    return shape.cuda ? cuda_allocated_bytes(buf.shard * 4) : buf.shard * 4;
  };
  const int64_t grad_in = shape.dtype_bytes * shape.batch * shape.seq * shape.hidden;
  for (int u = n - 1; u >= 0; --u) {
    const bool head = u == n - 1;
    // flat, micro_batch_grad: autograd's compute-dtype gradient of a flat buffer and the fp32
    // one made from it; sunk: the fp32 gradients the unit's ops write themselves during backward
    // (stages 2 and 3; below, into the persistent accumulators).
    int64_t flat = 0, micro_batch_grad = 0, sunk = 0, reduce_in = 0;
    for (int b : l.units[u].uses) {
      const BufferInfo& buf = l.buffers[b];
      if (!buf.trainable) continue;
      if (!buf.sinks) flat += buf.padded * c;
      if (stage >= 2) {
        (buf.sinks ? sunk : micro_batch_grad) += buf.padded * 4;
        reduce_in += buf.padded * wire + (reduced_in_place(buf) ? 0 : buf.shard * wire);
      } else if (wire != 4) {
        reduce_in += buf.padded * wire;  // the all-reduced copy of the fp32 gradient
      }
    }
    int64_t comm_bytes = 0;
    for (int64_t r : pending) comm_bytes += r;
    const int64_t params = in_flight(u - depth, u);
    // The unit's output and the gradient arriving for it (the head's is a scalar). The loss the
    // walk holds keeps the head's graph alive through the whole backward, but not what it saved:
    // autograd frees saved tensors as nodes run, and the fused loss drops its gradients itself.
    const int64_t ends = head ? 0 : 2 * acts[u].output;
    // Inside autograd: every saved tensor of the unit, its activations' gradients (the head's
    // are its loss gradients scaled, then its flat gradient beside them).
    consider({kept_before[u] + acts[u].saved + ends, comm_bytes, params,
              acts[u].backward_ws + (head ? flat : 0) + sunk, grads});
    // After it: the unit's saved tensors are gone; the flat gradient beside the per-parameter
    // gradients it was built from, or beside the fp32 micro-batch gradient it is added to.
    const int64_t after = kept_before[u] + ends;
    consider({after, comm_bytes, params, grad_in + flat + std::max(flat, micro_batch_grad) + sunk,
              grads});
    for (int b : l.units[u].own) grads += accumulator(b);  // Engine::start_reduction(u)
    // Its reductions join those in flight: at stages 2 and 3 reduce-scatters, which the engine
    // trims to its window once they are issued; at stages 0 and 1 with reduce_dtype = bf16 the
    // copies all-reduced in place, which the engine keeps until the step (it drains reductions
    // during backward only at stages 2 and 3). fp32 all-reduces use the gradients themselves.
    if (reduce_in > 0) consider({after, comm_bytes + reduce_in, params, grad_in + flat, grads});
    if (reduce_in > 0) {
      for (int b : l.units[u].uses) {
        const BufferInfo& buf = l.buffers[b];
        if (!buf.trainable) continue;
        const bool out = stage >= 2 && !reduced_in_place(buf);
        pending.push_back(buf.padded * wire + (out ? buf.shard * wire : 0));
      }
      while (stage >= 2 && pending.size() > kReductionsInFlight) pending.pop_front();
      last_reduced = reduce_in;
    }
  }
  plan.device.activations = best.activations;
  plan.device.comm_buffers = best.comm;
  plan.device.params_in_flight = best.params;
  plan.device.workspace = best.workspace;

  // The optimizer step: the grad norm reduces each gradient in place (Engine::grad_norm_squared)
  // and AdamW is fused and in place, so neither keeps a buffer-sized temporary; at stages 1 and 2
  // every updated shard waits in the compute dtype for its all-gather. On CUDA the NCCL
  // communicator keeps a collective's tensors until the host issues another collective after the
  // device has finished it (NcclCommunicator::release_finished). During the backward each unit's
  // reduce-scatter releases those done before it, so the engine's window is what stays; but the
  // last unit's reductions, issued just before the step and not yet done on the device when the
  // norm's all-reduce is issued, stay allocated through the norm and AdamW until the step's first
  // all-gather (stages 1, 2) or the next forward's (stage 3). The host tier's shards
  // (offload.ratio) are gathered when the host step ends, before the device tier's step begins, so
  // the two sets never wait at once.
  int64_t shards[2] = {0, 0};  // device tier, host tier
  for (const BufferInfo& b : l.buffers) {
    if (b.trainable) shards[b.offloaded ? 1 : 0] += b.shard * c;
  }
  const int64_t held = shape.cuda ? last_reduced : 0;
  const int64_t updated = std::max(shards[0], shards[1]);
  const int64_t step_ws = std::max(held, (stage == 1 || stage == 2) ? updated : 0);
  // The step reads every accumulator, the released ones made again by then.
  const int64_t at_step = plan.device.released_gradients + step_ws;
  plan.device.gradients += at_step > best.total() ? plan.device.released_gradients : best.gradients;
  plan.device.peak = plan.device.persistent + std::max(best.total(), at_step);
  if (shape.cuda) {
    plan.device.workspace += kCublasThreads * kCublasWorkspace;
    plan.device.peak += kCublasThreads * kCublasWorkspace;
  }
}

base::Status count_comm(const Layouts& l, const base::Config& cfg, int ranks_per_node,
                        MemoryPlan& plan) {
  const int64_t c = dtype_bytes(cfg.train.dtype);
  const int64_t wire = cfg.zero.reduce_dtype == "bf16" ? 2 : 4;
  // owned and offloaded_shards: of the offloaded buffers only (PCIe traffic).
  int64_t trainable = 0, gathered = 0, owned = 0, offloaded_shards = 0;
  for (const BufferInfo& b : l.buffers) {
    if (b.trainable) {
      trainable += b.padded;
      if (b.offloaded) owned += b.owned;
    }
    if (b.gathers) {
      gathered += b.padded;
      if (b.offloaded) offloaded_shards += b.shard;
    }
  }
  CommVolumeInput in;
  in.stage = cfg.zero.stage;
  in.shard_group = cfg.zero.shard_group;
  in.world_size = plan.world;
  in.ranks_per_node = ranks_per_node;
  in.micro_batches = plan.grad_accumulation;
  in.gathered_param_bytes = gathered * c;
  in.trainable_param_bytes = trainable * c;
  in.grad_bytes = trainable * wire;
  ASSIGN_OR_RETURN(CommVolume volume, comm_volume_per_step(in));
  CommBytes& comm = plan.comm;
  comm.shard_group = cfg.zero.shard_group;
  comm.ranks_per_node = ranks_per_node;
  comm.intra_node = volume.intra_node_bytes;
  comm.inter_node = volume.inter_node_bytes;
  // PCIe: an offloaded optimizer takes fp32 gradients down and sends updated parameters up
  // (unless they live on the host too: it writes them there); host parameter shards go up before
  // each gather (twice a micro-batch).
  const std::string& opt = cfg.offload.optimizer;
  const std::string& par = cfg.offload.params;
  if (opt != "none") comm.host_device += owned * (4 + (par == "none" ? c : 0));
  if (par != "none") comm.host_device += 2 * plan.grad_accumulation * offloaded_shards * c;
  comm.nvme = 2 * plan.nvme.optimizer;  // read and written back every step
  if (par == "nvme") comm.nvme += (2 * plan.grad_accumulation + 1) * offloaded_shards * c;
  return base::Status::Ok();
}

}  // namespace

int64_t cuda_allocated_bytes(int64_t bytes) {
  return bytes <= 0 ? 0 : align_up(bytes, kCudaBlockRound);
}

base::StatusOr<MemoryPlan> plan_memory(const base::UnitList& units, const base::Config& cfg,
                                       const PlanOptions& options) {
  if (options.world < 1) {
    return base::Status::InvalidArgument("plan: world size must be >= 1, got " +
                                         std::to_string(options.world));
  }
  if (units.size() < 2) return base::Status::InvalidArgument("plan: the model has no units");
  ASSIGN_OR_RETURN(
      std::vector<bool> recompute,
      recompute_plan(units, cfg.train.activation_checkpointing, cfg.train.recompute_layers));
  MemoryPlan plan;
  plan.world = options.world;
  const int ranks_per_node =
      options.ranks_per_node > 0 ? std::min(options.ranks_per_node, options.world) : options.world;
  // zero.shard_group = "node" shards over the node's ranks and replicates across nodes.
  plan.shard_world = cfg.zero.shard_group == "node" ? ranks_per_node : options.world;
  const int64_t per_step = cfg.train.micro_batch * options.world;
  plan.grad_accumulation = std::max<int64_t>(1, (cfg.train.global_batch + per_step - 1) / per_step);
  plan.replicate_frozen = frozen_base_replicated(units, cfg, options);
  const Layouts layouts =
      make_layouts(units, plan.shard_world, cfg.zero.stage, plan.replicate_frozen,
                   offloaded_units(units, cfg.offload), cfg.train.fused_weight_grad);
  plan.parameters = layouts.parameters;
  plan.trainable_parameters = layouts.trainable_parameters;
  place_state(layouts, cfg, options.cuda, plan);
  const ActivationShape shape = activation_shape(cfg.model, cfg.train, cfg.lora, options.cuda);
  walk_micro_batch(units, layouts, cfg, recompute, shape, plan);
  RETURN_IF_ERROR(count_comm(layouts, cfg, ranks_per_node, plan));
  return plan;
}

}  // namespace dstrain::sharding
