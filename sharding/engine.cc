#include "sharding/engine.h"

#include <c10/core/GradMode.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

#include "offload/pinned_host_allocator.h"
#include "runtime/kernels/fused_ops.h"
#include "sharding/activation_checkpointing.h"
#include "sharding/async_host_step.h"
#include "sharding/device_wait.h"
#include "sharding/engine_state.h"
#include "sharding/gathered_storage.h"
#include "sharding/host_tensor.h"
#include "sharding/offload_split.h"

namespace dstrain::sharding {

namespace {

// The micro-batch with its targets handed to the model: the head unit then returns the summed
// cross-entropy (computed chunk by chunk) instead of the full logits.
MicroBatch with_loss_targets(const MicroBatch& mb) {
  MicroBatch out = mb;
  out.ctx.targets = mb.target_ids;
  return out;
}

// Completes a gradient reduction: waits for the collective, issues and waits for the one across
// replicas that follows it (hybrid sharding), and folds the result in.
struct PendingReduction final : Work {
  std::unique_ptr<Work> work;
  std::function<std::unique_ptr<Work>()> then;
  std::function<void()> done;
  base::Status wait() override {
    base::Status st = work->wait();
    if (st.ok() && then) st = then()->wait();
    if (st.ok() && done) done();
    return st;
  }
  base::Status synchronize_device() override { return work->synchronize_device(); }
};

}  // namespace

base::Status torch_error(const std::exception& e, const std::string& where) {
  return base::Status::Internal(where + ": " + e.what());
}

Engine::Engine(base::UnitList units, const EngineOptions& options, Communicator& comm,
               Communicator* replicas)
    : units_(std::move(units)), options_(options), comm_(comm), replicas_(replicas) {}

Engine::~Engine() {
  // The host step and collectives still in flight reference our tensors: let them finish first.
  (void)wait_host_step();
  for (auto& w : pending_) (void)w->wait();
  for (auto& st : state_) {
    for (Buffer& b : st->buffers) {
      if (b.gather) (void)b.gather->wait();
    }
  }
}

base::StatusOr<std::unique_ptr<Engine>> Engine::create(base::UnitList units,
                                                       const EngineOptions& options,
                                                       Communicator& comm, const ParamInitFn& init,
                                                       Communicator* replicas) {
  if (options.zero.stage < 0 || options.zero.stage > 3) {
    return base::Status::InvalidArgument("zero.stage " + std::to_string(options.zero.stage) +
                                         " is out of range (0 to 3)");
  }
  if (options.zero.prefetch_depth < 0) {
    return base::Status::InvalidArgument("zero.prefetch_depth " +
                                         std::to_string(options.zero.prefetch_depth) +
                                         " must not be negative");
  }
  if (units.empty()) return base::Status::InvalidArgument("engine: the model has no units");
  ASSIGN_OR_RETURN(
      std::vector<bool> recompute,
      recompute_plan(units, options.activation_checkpointing, options.recompute_layers));
  std::unique_ptr<Engine> engine(new Engine(std::move(units), options, comm, replicas));
  engine->recompute_ = std::move(recompute);
  try {
    RETURN_IF_ERROR(engine->init_storage(init));
  } catch (const std::exception& e) {
    return torch_error(e, "engine: initialising parameters");
  }
  return engine;
}

base::Status Engine::init_storage(const ParamInitFn& init) {
  const int world = comm_.size();
  const int64_t stage = options_.zero.stage;
  const at::TensorOptions f32 = at::TensorOptions().dtype(at::kFloat).device(options_.device);
  step_count_ = at::zeros({}, f32);
  loss_scale_ = options_.dynamic_loss_scale ? options_.loss_scale_init : 1.0;
  if (optimizer_on_host() || params_on_host()) {
    ASSIGN_OR_RETURN(std::unique_ptr<offload::HostAllocator> alloc,
                     offload::make_host_allocator(options_.device.is_cuda()));
    host_allocator_ = std::move(alloc);
  }
  int64_t max_shard = 0;  // sizes the host optimizer's staging
  const std::vector<bool> offloaded = offloaded_units(units_, options_.offload);

  // Where each named parameter lives, for resolving tied references.
  struct Owner {
    int unit;
    BufferKind kind;
    int entry;
  };
  std::map<std::string, Owner> owners;

  for (int u = 0; u < static_cast<int>(units_.size()); ++u) {
    const base::Unit& unit = *units_[u];
    const auto& schema = unit.schema();
    auto st = std::make_unique<UnitState>();

    std::vector<at::Tensor> init_values;
    for (const auto& spec : schema) init_values.push_back(at::empty(spec.shape, at::kFloat));
    RETURN_IF_ERROR(init(unit, init_values).with_context("initialising unit " + unit.name()));

    for (int k = 0; k < kNumBufferKinds; ++k) {
      Buffer& b = st->buffers[k];
      b.layout = make_flat_layout(schema, static_cast<BufferKind>(k), world);
      if (!b.present()) continue;
      b.split = split_plan(b.layout);
      b.trainable = b.layout.kind != BufferKind::kFrozen;
      b.sinks = options_.fused_weight_grad && sinks_whole_buffer(schema, b.layout, u);
      b.offloaded = offloaded[u];
      // A frozen buffer has no optimizer state to shard: below stage 3, or replicated at stage 3,
      // every rank holds all of it.
      const bool whole = stage == 0 || (!b.trainable && (stage < 3 || options_.replicate_frozen));
      b.gathers = stage == 3 && !whole;
      b.shard = whole ? ShardRange{0, b.layout.padded_numel} : shard_range(b.layout, comm_.rank());

      at::Tensor flat = at::zeros({b.layout.padded_numel}, at::kFloat);
      for (int e = 0; e < static_cast<int>(b.layout.entries.size()); ++e) {
        const FlatEntry& entry = b.layout.entries[e];
        flat.narrow(0, entry.offset, entry.numel)
            .copy_(init_values[entry.schema_index].reshape({-1}));
        owners[entry.name] = {u, static_cast<BufferKind>(k), e};
      }
      flat = flat.to(f32);
      if (b.trainable && b.offloaded) max_shard = std::max(max_shard, b.shard.numel());
      if (b.gathers) {
        RETURN_IF_ERROR(init_stage3_buffer(b, flat));
        continue;
      }
      if (!b.trainable) {
        b.full = flat.to(options_.compute_dtype);  // frozen: compute dtype only, no master
        continue;
      }
      const at::Tensor mine = flat.narrow(0, b.shard.begin, b.shard.numel());
      init_accumulator(b, stage == 2 ? b.shard.numel() : b.layout.padded_numel, f32);
      if (optimizer_on_nvme()) {
        b.full = flat.to(options_.compute_dtype);
        RETURN_IF_ERROR(store_initial_nvme_state(b, mine));
        continue;
      }
      if (!b.offloaded && options_.compute_dtype == at::kFloat) {
        b.full = flat;
        b.master = stage == 0 ? b.full : b.full.narrow(0, b.shard.begin, b.shard.numel());
      } else {
        b.full = flat.to(options_.compute_dtype);
      }
      RETURN_IF_ERROR(init_optimizer_state(b, mine));
    }
    for (Buffer& b : st->buffers) {
      if (b.present()) st->uses.push_back(&b);
    }
    for (int i = 0; i < static_cast<int>(schema.size()); ++i) {
      if (schema[i].tied_to.empty()) continue;
      auto it = owners.find(schema[i].tied_to);
      if (it == owners.end()) {
        return base::Status::InvalidArgument("unit " + unit.name() + ": parameter " +
                                             schema[i].name + " is tied to " + schema[i].tied_to +
                                             ", which no earlier unit owns");
      }
      st->tied.push_back({i, it->second.unit, it->second.kind, it->second.entry});
      Buffer* owner = &state_[it->second.unit]->buffers[static_cast<int>(it->second.kind)];
      owner->sinks = false;  // two units' ops would share one sink buffer
      if (std::find(st->uses.begin(), st->uses.end(), owner) == st->uses.end()) {
        st->uses.push_back(owner);
      }
    }
    state_.push_back(std::move(st));
  }
  // A unit's input needs a gradient when an earlier unit trains, or when its own ops write
  // gradients into sinks (the graph is what runs those writes).
  input_grad_.assign(units_.size(), false);
  bool trainable_before = false;
  for (size_t u = 0; u < units_.size(); ++u) {
    bool trainable = false, sinks = false;
    for (const Buffer& b : state_[u]->buffers) {
      trainable = trainable || (b.present() && b.trainable);
      sinks = sinks || (b.present() && b.sinks);
    }
    input_grad_[u] = trainable_before || sinks;
    trainable_before = trainable_before || trainable;
  }
  if (optimizer_on_host()) {
    ASSIGN_OR_RETURN(host_optimizer_,
                     HostOptimizer::create(host_allocator_, max_shard, options_.compute_dtype,
                                           options_.offload_threads));
  }
  return base::Status::Ok();
}

base::Status Engine::init_stage3_buffer(Buffer& b, const at::Tensor& flat) {
  const at::Tensor mine = flat.narrow(0, b.shard.begin, b.shard.numel());
  b.full = at::empty({b.layout.padded_numel}, flat.options().dtype(options_.compute_dtype));
  release_storage(b.full);
  b.state = GatherState::kReleased;
  if (params_on_nvme()) {
    // The shard lives in its record of the parameter file; paged in only for loads and saves.
    if (!nvme_params_) RETURN_IF_ERROR(create_nvme_params());
    b.param_record = next_param_record_++;
    RETURN_IF_ERROR(nvme_params_->write_behind(b.param_record, {mine}));
  } else if (b.offloaded && params_on_host()) {
    ASSIGN_OR_RETURN(b.shard_param,
                     host_tensor(host_allocator_, b.shard.numel(), options_.compute_dtype));
    b.shard_param.copy_(mine);
  } else {
    b.shard_param = mine.to(options_.compute_dtype, /*non_blocking=*/false, /*copy=*/true);
  }
  if (!b.trainable) return base::Status::Ok();  // frozen: the compute-dtype shard only, no master
  init_accumulator(b, b.shard.numel(), flat.options());
  if (optimizer_on_nvme()) return store_initial_nvme_state(b, mine);
  // The master may alias the shard only where both live: fp32, and on the same side.
  // An offloaded buffer's master is in host memory (offloaded_units offloads nothing otherwise).
  const bool shard_on_host = b.offloaded && params_on_host();
  if (options_.compute_dtype == at::kFloat && b.offloaded == shard_on_host && !params_on_nvme()) {
    b.master = b.shard_param;
  }
  return init_optimizer_state(b, mine);
}

base::Status Engine::transition(Buffer& b, GatherState to) {
  if (!b.gathers || b.state == to) return base::Status::Ok();
  switch (to) {
    case GatherState::kGathering:
      if (b.state == GatherState::kGathered) return base::Status::Ok();  // nothing to fetch
      RETURN_IF_ERROR(wait_host_update(b));  // the overlapped host step writes the shard
      // Fresh memory for the same storage object; the gather writes it through a raw pointer.
      allocate_storage(b.full, static_cast<size_t>(b.full.numel() * b.full.element_size()));
      if (params_on_nvme()) {
        // Read into a pinned slot and copied up synchronously, so the slot is free again at once.
        RETURN_IF_ERROR(nvme_params_->fetch(b.param_record));
        ASSIGN_OR_RETURN(NvmeRecord record, nvme_params_->acquire(b.param_record));
        b.upload = record[0].to(options_.device, options_.compute_dtype, /*non_blocking=*/false,
                                /*copy=*/true);
        nvme_params_->discard(b.param_record);
        b.gather = comm_.all_gather(b.upload, b.full);
      } else if (b.offloaded && params_on_host()) {
        RETURN_IF_ERROR(upload_and_gather(b));
      } else {
        b.gather = comm_.all_gather(b.shard_param, b.full);
      }
      break;
    case GatherState::kGathered:
      if (b.state == GatherState::kReleased)
        RETURN_IF_ERROR(transition(b, GatherState::kGathering));
      RETURN_IF_ERROR(b.gather->wait());
      b.gather.reset();
      b.upload.reset();
      break;
    case GatherState::kReleased:
      if (b.gather) RETURN_IF_ERROR(b.gather->wait());  // the collective still writes into it
      b.gather.reset();
      b.upload.reset();
      release_storage(b.full);
      break;
  }
  b.state = to;
  return base::Status::Ok();
}

base::Status Engine::prefetch(int u) {
  if (options_.zero.stage != 3) return base::Status::Ok();
  for (Buffer* b : state_[u]->uses) RETURN_IF_ERROR(transition(*b, GatherState::kGathering));
  return base::Status::Ok();
}

base::Status Engine::gather(int u) {
  if (options_.zero.stage != 3) return base::Status::Ok();
  for (Buffer* b : state_[u]->uses) RETURN_IF_ERROR(transition(*b, GatherState::kGathered));
  return base::Status::Ok();
}

base::Status Engine::release(int u, int keep_lo, int keep_hi) {
  if (options_.zero.stage != 3) return base::Status::Ok();
  for (Buffer* b : state_[u]->uses) {
    bool needed = false;
    for (int v = keep_lo; v <= keep_hi && !needed; ++v) {
      const auto& uses = state_[v]->uses;
      needed = std::find(uses.begin(), uses.end(), b) != uses.end();
    }
    if (!needed) RETURN_IF_ERROR(transition(*b, GatherState::kReleased));
  }
  return base::Status::Ok();
}

base::StatusOr<at::Tensor> Engine::forward_units(const MicroBatch& mb, std::vector<UnitRun>& runs,
                                                 bool need_grad) {
  const int n = static_cast<int>(units_.size());
  const int depth = static_cast<int>(options_.zero.prefetch_depth);
  int issued = -1;  // gathers are issued for units [0, issued]
  at::Tensor x = mb.input_ids;
  for (int u = 0; u < n; ++u) {
    // Issue the next units' gathers before this unit's compute, so they overlap it.
    for (; issued < std::min(u + depth, n - 1); ++issued) RETURN_IF_ERROR(prefetch(issued + 1));
    RETURN_IF_ERROR(gather(u));
    x = forward_unit(u, x, mb.ctx, runs, need_grad);
    // Backward starts with the last unit at once: keep it.
    if (u < n - 1 || !need_grad) RETURN_IF_ERROR(release(u, u + 1, issued));
  }
  return x;
}

std::vector<at::Tensor> Engine::make_params(int u, std::vector<UnitRun>& runs, bool need_grad,
                                            base::GradSinks* sinks) {
  UnitState& st = *state_[u];
  UnitRun& run = runs[u];
  std::vector<at::Tensor> params(units_[u]->schema().size());
  sinks->clear();
  for (int k = 0; k < kNumBufferKinds; ++k) {
    Buffer& b = st.buffers[k];
    if (!b.present()) continue;
    if (need_grad && b.sinks) {
      // The unit's ops write this buffer's gradient: into the fp32 accumulator itself below
      // stage 2, else into this micro-batch's whole-buffer gradient, made when backward first
      // writes it. The parameters need no gradient.
      const bool whole_grad = options_.zero.stage < 2;
      const int64_t numel = b.layout.padded_numel;
      const at::TensorOptions opts = b.grad.options();
      at::Tensor accumulator = whole_grad ? b.grad : at::Tensor();
      run.sink[k] = c10::make_intrusive<base::GradSinkBuffer>(
          [accumulator, numel, opts]() {
            return accumulator.defined() ? accumulator : at::empty({numel}, opts);
          },
          /*accumulate=*/whole_grad);
      sinks->resize(params.size());
      for (const FlatEntry& entry : b.layout.entries) {
        (*sinks)[entry.schema_index] = base::GradSink{run.sink[k], entry.offset};
      }
      run.leaf[k] = b.full;
    } else {
      // A fresh alias per forward: the flat buffer is the one leaf, and backward lands in one
      // flat gradient. The stored buffer itself never requires grad, so the optimizer updates
      // it in place without touching any autograd graph.
      run.leaf[k] = need_grad && b.trainable ? b.full.detach().requires_grad_() : b.full;
    }
    std::vector<at::Tensor> chunks = run.leaf[k].split_with_sizes(b.split.sizes);
    for (size_t e = 0; e < b.layout.entries.size(); ++e) {
      const FlatEntry& entry = b.layout.entries[e];
      params[entry.schema_index] = chunks[b.split.param_chunks[e]].view(entry.shape);
    }
  }
  for (const TiedRef& t : st.tied) {
    const Buffer& owner = state_[t.owner_unit]->buffers[static_cast<int>(t.owner_kind)];
    const FlatEntry& entry = owner.layout.entries[t.owner_entry];
    params[t.schema_index] = runs[t.owner_unit]
                                 .leaf[static_cast<int>(t.owner_kind)]
                                 .narrow(0, entry.offset, entry.numel)
                                 .view(entry.shape);
  }
  return params;
}

at::Tensor Engine::forward_unit(int u, const at::Tensor& x, const base::StepContext& ctx,
                                std::vector<UnitRun>& runs, bool need_grad) {
  UnitRun& run = runs[u];
  // Detaching at the boundary gives every unit its own autograd graph. The input needs a
  // gradient only where input_grad_ says so (not token ids, not after a frozen embedding under
  // LoRA).
  run.in = need_grad && input_grad_[u] ? x.detach().requires_grad_() : x.detach();
  base::GradSinks sinks;
  if (need_grad && recompute_[u]) {
    // No graph, so the unit's intermediates die here; only `run.in` (and the parameter leaves,
    // aliases of the flat buffers) survive until backward recomputes them.
    c10::NoGradGuard no_grad;
    run.recompute = true;
    std::vector<at::Tensor> params = make_params(u, runs, need_grad, &sinks);
    return units_[u]->forward(run.in, params, sinks, ctx);
  }
  std::vector<at::Tensor> params = make_params(u, runs, need_grad, &sinks);
  run.out = units_[u]->forward(run.in, params, sinks, ctx);
  return run.out;
}

void Engine::recompute_unit(int u, const base::StepContext& ctx, std::vector<UnitRun>& runs) {
  UnitRun& run = runs[u];
  // Randomness in a unit (LoRA dropout) is keyed by ctx.sample_keys, so this replays the
  // forward exactly; the input keeps the requires-grad flag it got in forward_unit.
  c10::AutoGradMode grad_on(true);
  base::GradSinks sinks;
  std::vector<at::Tensor> params = make_params(u, runs, /*need_grad=*/true, &sinks);
  run.out = units_[u]->forward(run.in, params, sinks, ctx);
  run.recompute = false;
}

base::Status Engine::backward_unit(int u, std::vector<UnitRun>& runs, const at::Tensor& grad_out,
                                   const base::StepContext& ctx, at::Tensor* grad_in,
                                   bool reduce_now) {
  UnitState& st = *state_[u];
  UnitRun& run = runs[u];
  // Inputs of the grad call (slots, filled by a recompute), and where each result goes.
  std::vector<const at::Tensor*> slots;
  std::vector<Buffer*> targets;
  if (run.in.requires_grad()) {
    slots.push_back(&run.in);
    targets.push_back(nullptr);
  }
  for (int k = 0; k < kNumBufferKinds; ++k) {
    if (!st.buffers[k].present() || !st.buffers[k].trainable || st.buffers[k].sinks) continue;
    slots.push_back(&run.leaf[k]);
    targets.push_back(&st.buffers[k]);
  }
  for (const TiedRef& t : st.tied) {
    Buffer& owner = state_[t.owner_unit]->buffers[static_cast<int>(t.owner_kind)];
    if (!owner.trainable) continue;
    slots.push_back(&runs[t.owner_unit].leaf[static_cast<int>(t.owner_kind)]);
    targets.push_back(&owner);
  }
  if (slots.empty()) {  // nothing to train here or below: the walk can stop
    run = UnitRun();
    return base::Status::Ok();
  }
  if (run.recompute) recompute_unit(u, ctx, runs);
  std::vector<at::Tensor> inputs;
  for (const at::Tensor* slot : slots) inputs.push_back(*slot);
  std::vector<at::Tensor> grad_outputs;
  if (grad_out.defined()) grad_outputs.push_back(grad_out);
  std::vector<at::Tensor> grads = torch::autograd::grad({run.out}, inputs, grad_outputs,
                                                        /*retain_graph=*/false,
                                                        /*create_graph=*/false,
                                                        /*allow_unused=*/true);
  for (size_t i = 0; i < grads.size(); ++i) {
    if (targets[i] == nullptr) {
      *grad_in = grads[i];
      continue;
    }
    if (!grads[i].defined()) continue;
    Buffer& b = *targets[i];
    if (options_.zero.stage >= 2) {
      if (b.mb_grad.defined()) {
        b.mb_grad.add_(grads[i]);
      } else {
        // The first gradient of this micro-batch becomes the accumulator (widened once), which
        // saves zero-filling and re-reading a whole-unit buffer per unit.
        b.mb_grad = grads[i].to(b.grad.scalar_type()).contiguous();
      }
    } else {
      b.grad.add_(grads[i]);
    }
  }
  for (int k = 0; k < kNumBufferKinds; ++k) {
    if (!run.sink[k]) continue;
    // Complete (what no op wrote is zero); below stage 2 it is the accumulator itself.
    at::Tensor written = run.sink[k]->finish();
    Buffer& b = st.buffers[k];
    if (options_.zero.stage >= 2)
      b.mb_grad = b.mb_grad.defined() ? b.mb_grad.add_(written) : written;
  }
  run = UnitRun();  // the graph is consumed; drop the activations now
  if (reduce_now) RETURN_IF_ERROR(start_reduction(u));
  return base::Status::Ok();
}

std::function<std::unique_ptr<Work>()> Engine::across_replicas(const at::Tensor& t) {
  if (replicas_ == nullptr) return nullptr;
  return [r = replicas_, t]() { return r->all_reduce(t, ReduceOp::kSum); };
}

base::Status Engine::start_reduction(int u) {
  UnitState& st = *state_[u];
  // zero.reduce_dtype: gradients travel (and are summed across ranks) in this dtype; the
  // accumulators stay fp32.
  const at::ScalarType wire = wire_dtype();
  for (int k = 0; k < kNumBufferKinds; ++k) {
    Buffer& b = st.buffers[k];
    if (!b.present() || !b.trainable) continue;
    auto pending = std::make_unique<PendingReduction>();
    Buffer* bp = &b;
    if (options_.zero.stage >= 2) {
      if (!b.mb_grad.defined()) b.mb_grad = at::zeros({b.layout.padded_numel}, b.grad.options());
      // Taking the tensor leaves mb_grad empty, so the next micro-batch starts a new one.
      at::Tensor in = std::move(b.mb_grad);
      if (wire != in.scalar_type()) in = in.to(wire);
      // The step's first reduction into a cleared accumulator lands in it: no second buffer and
      // no add (a whole pass over the shard's fp32 gradient saved, three with its reads).
      const bool direct = b.grad_is_zero && b.host_shard < 0 && wire == b.grad.scalar_type() &&
                          b.grad.device() == in.device();
      restore_accumulator(b, /*overwritten=*/direct);
      at::Tensor out = direct ? b.grad : at::empty({b.shard.numel()}, b.grad.options().dtype(wire));
      if (b.grad_stale && !direct) b.grad.zero_();  // the sum lands on top of it
      pending->work = comm_.reduce_scatter(in, out, ReduceOp::kSum);
      b.grad_is_zero = false;
      b.grad_stale = false;
      // `in` is kept alive by the lambda until the collective has finished.
      pending->done = [bp, in, out, direct]() {
        if (!direct) bp->grad.add_(out);
      };
    } else if (wire == at::kFloat) {
      pending->work = comm_.all_reduce(b.grad, ReduceOp::kSum);
      pending->then = across_replicas(b.grad);
    } else {
      at::Tensor sum = b.grad.to(wire);
      pending->work = comm_.all_reduce(sum, ReduceOp::kSum);
      pending->then = across_replicas(sum);
      pending->done = [bp, sum]() { bp->grad.copy_(sum); };
    }
    pending_.push_back(std::move(pending));
  }
  return base::Status::Ok();
}

bool Engine::releases_accumulator(const Buffer& b) const {
  return options_.zero.stage >= 2 && !b.offloaded;
}

void Engine::init_accumulator(Buffer& b, int64_t numel, const at::TensorOptions& options) const {
  b.grad_released = releases_accumulator(b);  // made by the first backward's reduction
  b.grad = b.grad_released ? at::empty({0}, options) : at::zeros({numel}, options);
}

void Engine::restore_accumulator(Buffer& b, bool overwritten) {
  if (!b.grad_released) return;
  const int64_t n = b.shard.numel();
  b.grad = overwritten ? at::empty({n}, b.grad.options()) : at::zeros({n}, b.grad.options());
  b.grad_released = false;
}

base::Status Engine::reduce_shards_across_replicas() {
  if (replicas_ == nullptr || options_.zero.stage < 2) return base::Status::Ok();
  const at::ScalarType wire = wire_dtype();
  std::vector<std::unique_ptr<Work>> works;
  std::vector<std::pair<Buffer*, at::Tensor>> sums;  // accumulators sent in the wire dtype
  for (auto& st : state_) {
    for (Buffer& b : st->buffers) {
      if (!b.present() || !b.trainable) continue;
      at::Tensor t = wire == b.grad.scalar_type() ? b.grad : b.grad.to(wire);
      if (!t.is_same(b.grad)) sums.emplace_back(&b, t);
      works.push_back(replicas_->all_reduce(t, ReduceOp::kSum));
    }
  }
  base::Status first;
  for (auto& w : works) {
    base::Status st = w->wait();
    if (first.ok() && !st.ok()) first = st;
  }
  RETURN_IF_ERROR(first);
  for (auto& [b, t] : sums) b->grad.copy_(t);
  return base::Status::Ok();
}

base::Status Engine::settle_leaving_reductions(int u) {
  size_t incoming = 0;
  for (const Buffer& b : state_[u]->buffers) incoming += b.present() && b.trainable ? 1 : 0;
  const size_t total = pending_.size() + incoming;
  const size_t leaving =
      total > kReductionsInFlight ? std::min(pending_.size(), total - kReductionsInFlight) : 0;
  for (size_t i = 0; i < leaving; ++i) RETURN_IF_ERROR(pending_[i]->synchronize_device());
  return base::Status::Ok();
}

base::Status Engine::finish_reductions(size_t keep) {
  base::Status first;
  const size_t done = pending_.size() > keep ? pending_.size() - keep : 0;
  for (size_t i = 0; i < done; ++i) {
    base::Status st = pending_[i]->wait();
    if (first.ok() && !st.ok()) first = st;
  }
  pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(done));
  return first;
}

base::StatusOr<double> Engine::forward_backward(const MicroBatch& mb, double loss_weight,
                                                bool last_micro_batch) {
  const int n = static_cast<int>(units_.size());
  const bool reduce_now = last_micro_batch || options_.zero.stage >= 2;
  const int depth = static_cast<int>(options_.zero.prefetch_depth);
  try {
    // Stages 2 and 3 reduce-scatter every micro-batch: fold in the previous one's results first.
    if (options_.zero.stage >= 2) RETURN_IF_ERROR(finish_reductions());
    std::vector<UnitRun> runs(n);
    // The last unit's output is the loss, so its backward starts from a scalar.
    ASSIGN_OR_RETURN(at::Tensor ce, forward_units(with_loss_targets(mb), runs, /*need_grad=*/true));
    ASSIGN_OR_RETURN(const double ce_value,
                     read_scalar(ce, options_.device_timeout_s,
                                 "rank " + std::to_string(comm_.rank()) + ": the forward's loss"));
    runs[n - 1].out = ce * (loss_weight * loss_scale_);
    // Backward writes the gradients the overlapped host step reads and clears.
    RETURN_IF_ERROR(wait_host_step());
    at::Tensor grad;
    int issued = n - 1;  // under stage 3, gathers are issued for units [issued, n - 1]
    for (int u = n - 1; u >= 0; --u) {
      // The saved graph reads the parameters again: re-gather them, earlier units ahead.
      for (; issued > std::max(u - depth, 0); --issued) RETURN_IF_ERROR(prefetch(issued - 1));
      RETURN_IF_ERROR(gather(u));
      // Keeps the reductions alive on the device within the window (see the declaration).
      if (options_.zero.stage >= 2) RETURN_IF_ERROR(settle_leaving_reductions(u));
      at::Tensor grad_in;
      RETURN_IF_ERROR(backward_unit(u, runs, grad, mb.ctx, &grad_in, reduce_now));
      // Fold in the reductions of earlier units as backward goes on, so each unit's gradient
      // buffers are freed soon after its reduce-scatter rather than at the end of the step.
      if (options_.zero.stage >= 2) RETURN_IF_ERROR(finish_reductions(kReductionsInFlight));
      RETURN_IF_ERROR(release(u, issued, u - 1));
      grad = grad_in;
    }
    return ce_value;
  } catch (const std::exception& e) {
    return torch_error(e, "forward/backward");
  }
}

base::StatusOr<double> Engine::grad_norm_squared() {
  // Each rank sums the squares of the part it owns on the device; one all-reduce gives the
  // global value and one host read brings it back (a NaN anywhere propagates to every rank).
  // Under hybrid sharding the replicas hold equal gradients: summing over the shard group alone
  // counts each shard once.
  const int64_t stage = options_.zero.stage;
  at::Tensor total = at::zeros({1}, step_count_.options().dtype(at::kDouble));
  for (auto& st : state_) {
    for (Buffer& b : st->buffers) {
      if (!b.present() || !b.trainable) continue;
      const ShardRange mine = shard_range(b.layout, comm_.rank());
      at::Tensor owned = stage >= 2 ? b.grad : b.grad.narrow(0, mine.begin, mine.numel());
      // The norm reduces in fp32 without a widened copy of the buffer; squares sum in fp64.
      total += at::linalg_vector_norm(owned, 2).to(at::kDouble).pow(2);
    }
  }
  RETURN_IF_ERROR(all_reduce_now(comm_, total, ReduceOp::kSum));
  return read_scalar(total, options_.device_timeout_s,
                     "rank " + std::to_string(comm_.rank()) + ": the gradient norm");
}

base::StatusOr<StepResult> Engine::step(double lr) {
  StepResult result;
  try {
    RETURN_IF_ERROR(wait_host_step());
    RETURN_IF_ERROR(finish_reductions());
    RETURN_IF_ERROR(reduce_shards_across_replicas());
    for (auto& st : state_) {
      for (Buffer& b : st->buffers) {
        // No reduction reached these this step: their gradient is zero.
        restore_accumulator(b, /*overwritten=*/false);
        if (b.grad_stale) b.grad.zero_();
        b.grad_stale = false;
      }
    }
    ASSIGN_OR_RETURN(double norm_sq, grad_norm_squared());
    const double norm = std::sqrt(norm_sq) / loss_scale_;
    result.grad_norm = norm;
    result.loss_scale = loss_scale_;
    result.skipped = !std::isfinite(norm);
    if (!result.skipped) {
      const double clip = options_.optim.grad_clip;
      const double clip_coef = (clip > 0 && norm > clip) ? clip / (norm + 1e-6) : 1.0;
      // Both optimizers divide each gradient by grad_scale: unscaling and clipping in one pass.
      step_count_ += 1;  // the optimizers read the step; the caller advances it
      ++adam_steps_;
      // The host tier's step first: overlapped, it runs on its own thread while the device
      // tier's (offload.ratio below 1; else nothing) is queued on the device.
      if (host_optimizer_) RETURN_IF_ERROR(host_step(lr, loss_scale_ / clip_coef));
      RETURN_IF_ERROR(device_step(lr, loss_scale_ / clip_coef));
    }
    if (options_.dynamic_loss_scale) {
      if (result.skipped) {
        loss_scale_ = std::max(1.0, loss_scale_ / 2);
        good_steps_ = 0;
      } else if (++good_steps_ >= options_.loss_scale_window) {
        loss_scale_ *= 2;
        good_steps_ = 0;
      }
    }
    // An overlapped host step clears each gradient itself once it has read it. At stages 2 and
    // 3 the device tier's accumulators are given back until the next step's first reduction
    // (as FSDP frees gradients after the step: the next forward's activations use the memory);
    // the host tier's stay, since the host optimizer reads them from where they are. Where the
    // next step's first reduce-scatter of an fp32 gradient lands in the accumulator
    // (Engine::start_reduction), clearing it would write a shard nobody reads: it is marked.
    const bool overwritten = options_.zero.stage >= 2 && wire_dtype() == at::kFloat;
    for (auto& st : state_) {
      for (Buffer& b : st->buffers) {
        if (!b.present() || !b.trainable || b.host_shard >= 0) continue;
        b.grad_is_zero = true;
        if (releases_accumulator(b)) {
          b.grad = at::empty({0}, b.grad.options());
          b.grad_released = true;
          continue;
        }
        b.grad_stale = overwritten;
        if (!overwritten) b.grad.zero_();
      }
    }
  } catch (const std::exception& e) {
    return torch_error(e, "optimizer step");
  }
  return result;
}

base::Status Engine::device_step(double lr, double grad_scale_value) {
  // _fused_adamw_ divides each gradient by grad_scale: unscaling and clipping in one pass.
  at::Tensor grad_scale = at::full({}, grad_scale_value, step_count_.options());
  const int64_t stage = options_.zero.stage;
  // Stages 0 and 3 keep a compute-dtype copy of what this step updates (the whole buffer; the
  // shard the next gather reads). On CUDA one kernel updates the fp32 state and writes that
  // copy, where torch's fused AdamW and then a cast would read the parameters twice.
  auto copy_of = [&](const Buffer& b) {
    const bool kernel = kernels::cuda_kernels_built() && b.master.is_cuda() &&
                        options_.compute_dtype != at::kFloat && (stage == 0 || stage == 3);
    const at::Tensor& copy = stage == 0 ? b.full : b.shard_param;
    const bool usable = kernel && copy.defined() && copy.is_cuda() &&
                        copy.numel() == b.master.numel() && !copy.is_same(b.master);
    return usable ? copy : at::Tensor();
  };
  for (int kind : {static_cast<int>(BufferKind::kDecay), static_cast<int>(BufferKind::kNoDecay)}) {
    const double wd =
        kind == static_cast<int>(BufferKind::kDecay) ? options_.optim.weight_decay : 0.0;
    std::vector<at::Tensor> params, grads, m, v, steps;
    for (auto& st : state_) {
      Buffer& b = st->buffers[kind];
      if (!b.present() || b.offloaded) continue;
      const at::Tensor copy = copy_of(b);
      if (copy.defined()) {
        kernels::adamw_step(b.master, b.master_grad(stage), b.exp_avg, b.exp_avg_sq, copy,
                            {lr, options_.optim.beta1, options_.optim.beta2, options_.optim.eps, wd,
                             adam_steps_, grad_scale_value});
        b.copy_written = true;
        continue;
      }
      params.push_back(b.master);
      grads.push_back(b.master_grad(stage));
      m.push_back(b.exp_avg);
      v.push_back(b.exp_avg_sq);
      steps.push_back(step_count_);
    }
    if (params.empty()) continue;
    at::_fused_adamw_(params, grads, m, v, /*max_exp_avg_sqs=*/{}, steps, lr, options_.optim.beta1,
                      options_.optim.beta2, wd, options_.optim.eps,
                      /*amsgrad=*/false, /*maximize=*/false, grad_scale, /*found_inf=*/{});
  }
  return refresh_compute_params(Refresh::kDeviceTier);
}

base::Status Engine::refresh_compute_params(Refresh which) {
  const bool after_host_step = which == Refresh::kAfterHostStep;
  const int64_t stage = options_.zero.stage;
  std::vector<std::unique_ptr<Work>> gathers;
  std::vector<at::Tensor> keep_alive;
  for (auto& st : state_) {
    for (Buffer& b : st->buffers) {
      if (!b.present() || !b.trainable) continue;
      if ((which == Refresh::kDeviceTier && b.offloaded) || (after_host_step && !b.offloaded))
        continue;
      if (std::exchange(b.copy_written, false)) continue;  // Engine::device_step wrote it
      if (stage == 0) {
        if (!after_host_step && !b.master.is_same(b.full)) b.full.copy_(b.master);
        continue;
      }
      if (stage == 3) {
        // The next forward gathers from the compute-dtype shard (which the host optimizer has
        // written already).
        if (!after_host_step && !b.master.is_same(b.shard_param)) b.shard_param.copy_(b.master);
        continue;
      }
      // The shard may alias `full` (fp32), and a gather's input must not overlap its output. A
      // host master goes up to the device here.
      at::Tensor shard = after_host_step
                             ? std::move(b.updated)
                             : b.master.to(b.full.options(), /*non_blocking=*/false, /*copy=*/true);
      keep_alive.push_back(shard);
      gathers.push_back(comm_.all_gather(shard, b.full));
    }
  }
  for (auto& g : gathers) RETURN_IF_ERROR(g->wait());
  return base::Status::Ok();
}

base::StatusOr<double> Engine::eval_loss_sum(const MicroBatch& mb) {
  try {
    c10::NoGradGuard no_grad;
    std::vector<UnitRun> runs(units_.size());
    ASSIGN_OR_RETURN(at::Tensor ce,
                     forward_units(with_loss_targets(mb), runs, /*need_grad=*/false));
    return read_scalar(ce, options_.device_timeout_s,
                       "rank " + std::to_string(comm_.rank()) + ": the evaluation loss");
  } catch (const std::exception& e) {
    return torch_error(e, "evaluation");
  }
}

}  // namespace dstrain::sharding
