// The engine's offload tiers (DESIGN.md "Offload tiers", docs/architecture.md): where the
// optimizer state and the parameter shards live when they are not on the device, the host
// optimizer step, and paging NVMe-resident state in and out for checkpoints and loads.
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <cstdio>
#include <optional>

#include "base/fs.h"
#include "offload/uring_io_engine.h"
#include "sharding/async_host_step.h"
#include "sharding/engine.h"
#include "sharding/engine_state.h"
#include "sharding/host_tensor.h"

namespace dstrain::sharding {
namespace {

// A stream of the device's pool that first waits for the work queued so far on the calling
// thread's current stream of that device (through an event, without blocking the host).
c10::Stream side_stream_after_current(const at::Device& device,
                                      std::optional<c10::Stream> side = std::nullopt) {
  const c10::impl::VirtualGuardImpl impl(device.type());
  if (!side) side = impl.getStreamFromGlobalPool(device);
  c10::Event queued(device.type());
  queued.record(impl.getStream(device));
  queued.block(*side);
  return *side;
}

}  // namespace

base::StatusOr<at::Tensor> Engine::optimizer_tensor(int64_t numel, bool on_host) {
  if (on_host) return host_tensor(host_allocator_, numel, at::kFloat);
  return at::zeros({numel}, at::TensorOptions().dtype(at::kFloat).device(options_.device));
}

base::Status Engine::init_optimizer_state(Buffer& b, const at::Tensor& mine) {
  if (!b.master.defined()) {
    ASSIGN_OR_RETURN(b.master, optimizer_tensor(mine.numel(), b.offloaded));
    b.master.copy_(mine);
  }
  ASSIGN_OR_RETURN(b.exp_avg, optimizer_tensor(b.master.numel(), b.offloaded));
  ASSIGN_OR_RETURN(b.exp_avg_sq, optimizer_tensor(b.master.numel(), b.offloaded));
  return base::Status::Ok();
}

std::vector<FlatLayout> Engine::layouts_in_init_order() const {
  std::vector<FlatLayout> layouts;
  for (const auto& unit : units_) {
    for (int k = 0; k < kNumBufferKinds; ++k) {
      FlatLayout layout =
          make_flat_layout(unit->schema(), static_cast<BufferKind>(k), comm_.size());
      if (!layout.empty()) layouts.push_back(std::move(layout));
    }
  }
  return layouts;
}

base::Status Engine::store_initial_nvme_state(Buffer& b, const at::Tensor& mine) {
  if (!nvme_state_) RETURN_IF_ERROR(create_nvme_state());
  b.nvme_shard = nvme_shard_of_[next_trainable_++];
  // Within offload.host_budget_gib: host memory, as offload.optimizer = cpu.
  if (b.nvme_shard < 0) return init_optimizer_state(b, mine);
  // fp32 master copied (and converted) straight into a slot, moments written as zeros; the
  // write overlaps the next buffer's initialisation.
  return nvme_state_->write_behind(b.nvme_shard, {mine, at::Tensor(), at::Tensor()});
}

base::Status Engine::create_nvme_params() {
  // Every gathered buffer's shard in the order init_storage meets them.
  std::vector<int64_t> numels;
  for (const FlatLayout& layout : layouts_in_init_order()) {
    if (layout.kind == BufferKind::kFrozen && options_.replicate_frozen) continue;
    numels.push_back(shard_range(layout, comm_.rank()).numel());
  }
  ASSIGN_OR_RETURN(nvme_params_,
                   create_nvme_file("params", numels, /*arrays=*/1, options_.compute_dtype));
  return base::Status::Ok();
}

base::StatusOr<std::unique_ptr<NvmeStateFile>> Engine::create_nvme_file(
    const std::string& kind, const std::vector<int64_t>& numels, int arrays, at::ScalarType dtype) {
  RETURN_IF_ERROR(base::make_dirs(options_.offload.nvme_dir).with_context("offload.nvme_dir"));
  char name[48];
  // Replicas on other nodes share the shard rank: numbering by replica too keeps the names apart
  // where the nodes share a file system.
  const int id = (replicas_ != nullptr ? replicas_->rank() * comm_.size() : 0) + comm_.rank();
  std::snprintf(name, sizeof(name), "/%s-rank%05d.bin", kind.c_str(), id);
  auto io = offload::make_uring_io_engine(offload::IoOptions{});
  if (!io.ok()) return io.status().with_context("offload." + kind + " = nvme");
  return NvmeStateFile::create(options_.offload.nvme_dir + name, numels, arrays, dtype,
                               host_allocator_, /*slots=*/4, std::move(*io));
}

base::Status Engine::create_nvme_state() {
  // Every trainable shard in the order init_storage meets them: the first ones stay in host
  // memory while offload.host_budget_gib lasts (fp32 master and two moments: 12 bytes each).
  std::vector<int64_t> numels;
  double budget = options_.offload.host_budget_gib * (1 << 30);
  for (const FlatLayout& layout : layouts_in_init_order()) {
    if (layout.kind == BufferKind::kFrozen) continue;
    const int64_t n =
        options_.zero.stage == 0 ? layout.padded_numel : shard_range(layout, comm_.rank()).numel();
    const double bytes = 12.0 * static_cast<double>(n);
    if (bytes <= budget) {
      budget -= bytes;
      nvme_shard_of_.push_back(-1);
    } else {
      nvme_shard_of_.push_back(static_cast<int>(numels.size()));
      numels.push_back(n);
    }
  }
  ASSIGN_OR_RETURN(nvme_state_, create_nvme_file("optimizer", numels, /*arrays=*/3, at::kFloat));
  return base::Status::Ok();
}

base::Status Engine::host_step(double lr, double grad_scale) {
  const int64_t stage = options_.zero.stage;
  offload::AdamWHyper hyper;
  hyper.lr = lr;
  hyper.beta1 = options_.optim.beta1;
  hyper.beta2 = options_.optim.beta2;
  hyper.eps = options_.optim.eps;
  hyper.step = static_cast<int64_t>(step_count_.item<double>());
  hyper.grad_scale = grad_scale;
  // Unit order, so the pipeline's first download starts with the first unit (and, overlapped,
  // the next forward's first unit is the first one ready).
  const bool overlap = overlap_host_step();
  std::vector<HostShard> shards;
  for (auto& st : state_) {
    for (Buffer& b : st->buffers) {
      if (!b.present() || !b.trainable || !b.offloaded) continue;
      HostShard s;
      s.grad = b.master_grad(stage);
      s.master = b.master;  // undefined under nvme: the optimizer pages it in
      s.exp_avg = b.exp_avg;
      s.exp_avg_sq = b.exp_avg_sq;
      s.nvme_shard = b.nvme_shard;
      // The update writes the compute-dtype parameters where the next forward needs them:
      // the shard (stage 3), the whole buffer (stage 0), or a device shard to all-gather.
      if (stage == 3) {
        s.out = b.shard_param;  // undefined under offload.params = nvme: the record instead
        s.nvme_param = b.param_record;
      } else if (stage == 0) {
        s.out = b.full;
      } else {
        b.updated = at::empty({b.shard.numel()}, b.full.options());
        s.out = b.updated;
      }
      s.weight_decay = b.layout.kind == BufferKind::kDecay ? options_.optim.weight_decay : 0.0;
      if (overlap) b.host_shard = static_cast<int>(shards.size());
      shards.push_back(std::move(s));
    }
  }
  if (overlap) return start_host_step(std::move(shards), hyper);
  RETURN_IF_ERROR(host_optimizer_->step(shards, hyper, nvme_state_.get(), nvme_params_.get()));
  return refresh_compute_params(Refresh::kAfterHostStep);
}

base::Status Engine::upload_and_gather(Buffer& b) {
  if (!options_.device.is_cuda()) {
    b.upload = b.shard_param.to(options_.device);
    b.gather = comm_.all_gather(b.upload, b.full);
    return base::Status::Ok();
  }
  // Pinned memory goes up on a stream of its own, so the copy overlaps the kernels queued on the
  // compute stream. That stream first waits for the work queued so far, which may still read
  // the memory just allocated for `full` (the caching allocator hands out blocks by the compute
  // stream's order); the gather, issued with the upload stream current, follows the copy.
  upload_stream_ = side_stream_after_current(options_.device, upload_stream_);
  const c10::StreamGuard on_upload(*upload_stream_);
  b.upload = b.shard_param.to(options_.device, /*non_blocking=*/true);
  b.gather = comm_.all_gather(b.upload, b.full);
  return base::Status::Ok();
}

bool Engine::overlap_host_step() const {
  // Below stage 3 the updated shards are all-gathered right after the step, a collective on
  // the calling thread; NVMe-resident parameters share their file with the forward's reads.
  return options_.offload.overlap_step && options_.zero.stage == 3 && optimizer_on_host() &&
         !params_on_nvme();
}

base::Status Engine::start_host_step(std::vector<HostShard> shards,
                                     const offload::AdamWHyper& hyper) {
  host_shards_ = std::move(shards);
  // On a GPU the gradients come down on a side stream, ordered after the backward that wrote
  // them; the step's thread makes it current, so its copies never queue behind the next
  // forward's kernels.
  std::optional<c10::Stream> side;
  if (options_.device.is_cuda()) side = side_stream_after_current(options_.device);
  host_run_ = AsyncHostStep::start([this, hyper, side](const AsyncHostStep::ShardDone& done) {
    std::optional<c10::StreamGuard> on_side;
    if (side) on_side.emplace(*side);
    // Each gradient is cleared for the next step once its shard is done (on the side stream:
    // the next backward runs only after wait_host_step(), which follows the synchronize below).
    base::Status st =
        host_optimizer_->step(host_shards_, hyper, nvme_state_.get(), nullptr, [&](int i) {
          host_shards_[i].grad.zero_();
          done(i);
        });
    if (side) side->synchronize();
    return st;
  });
  return base::Status::Ok();
}

base::Status Engine::wait_host_step() {
  if (host_run_) {
    base::Status st = host_run_->wait_all();
    host_run_.reset();
    host_shards_.clear();
    for (auto& unit : state_) {
      for (Buffer& b : unit->buffers) b.host_shard = -1;
    }
    if (!st.ok() && host_error_.ok()) host_error_ = st.with_context("host optimizer step");
  }
  return host_error_;
}

base::Status Engine::wait_host_update(const Buffer& b) {
  if (!host_run_ || b.host_shard < 0) return host_error_;
  base::Status st = host_run_->wait_for(b.host_shard);
  if (!st.ok()) return wait_host_step();  // the step failed: collect and keep its error
  return base::Status::Ok();
}

base::Status Engine::page_in_state() {
  RETURN_IF_ERROR(wait_host_step());
  for (auto& st : state_) {
    for (Buffer& b : st->buffers) {
      if (b.param_record >= 0 && !b.shard_param.defined()) {
        b.shard_param =
            at::empty({b.shard.numel()}, at::TensorOptions().dtype(options_.compute_dtype));
        RETURN_IF_ERROR(nvme_params_->read(b.param_record, {b.shard_param}));
      }
      if (b.nvme_shard < 0 || b.master.defined()) continue;
      const int64_t n = nvme_state_->numel(b.nvme_shard);
      b.master = at::empty({n}, at::kFloat);
      b.exp_avg = at::empty({n}, at::kFloat);
      b.exp_avg_sq = at::empty({n}, at::kFloat);
      RETURN_IF_ERROR(nvme_state_->read(b.nvme_shard, {b.master, b.exp_avg, b.exp_avg_sq}));
    }
  }
  return base::Status::Ok();
}

base::Status Engine::page_out_state(bool write_back) {
  RETURN_IF_ERROR(wait_host_step());
  for (auto& st : state_) {
    for (Buffer& b : st->buffers) {
      if (b.param_record >= 0 && b.shard_param.defined()) {
        if (write_back) RETURN_IF_ERROR(nvme_params_->write(b.param_record, {b.shard_param}));
        b.shard_param = at::Tensor();
      }
      if (b.nvme_shard < 0 || !b.master.defined()) continue;
      if (write_back) {
        RETURN_IF_ERROR(nvme_state_->write(b.nvme_shard, {b.master, b.exp_avg, b.exp_avg_sq}));
      }
      b.master = b.exp_avg = b.exp_avg_sq = at::Tensor();
    }
  }
  return base::Status::Ok();
}

}  // namespace dstrain::sharding
