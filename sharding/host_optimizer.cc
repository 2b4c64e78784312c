#include "sharding/host_optimizer.h"

#include <future>

#include "sharding/host_tensor.h"

namespace dstrain::sharding {
namespace {

offload::LowPrecision low_precision(at::ScalarType t) {
  if (t == at::kBFloat16) return offload::LowPrecision::kBFloat16;
  if (t == at::kHalf) return offload::LowPrecision::kFloat16;
  return offload::LowPrecision::kNone;
}

}  // namespace

base::StatusOr<std::unique_ptr<HostOptimizer>> HostOptimizer::create(
    std::shared_ptr<offload::HostAllocator> allocator, int64_t max_numel, at::ScalarType out_dtype,
    int threads) {
  std::unique_ptr<HostOptimizer> opt(new HostOptimizer(threads, out_dtype));
  for (Slot& s : opt->slots_) {
    ASSIGN_OR_RETURN(s.grad, host_tensor(allocator, max_numel, at::kFloat));
    if (out_dtype != at::kFloat) {
      ASSIGN_OR_RETURN(s.out, host_tensor(allocator, max_numel, out_dtype));
    }
  }
  return opt;
}

base::Status HostOptimizer::update(HostShard& shard, const at::Tensor& grad,
                                   const at::Tensor& host_out, offload::AdamWHyper hyper) {
  hyper.weight_decay = shard.weight_decay;
  const bool low = host_out.defined() && host_out.scalar_type() != at::kFloat;
  return adam_.step(hyper, shard.master.data_ptr<float>(), grad.data_ptr<float>(),
                    shard.exp_avg.data_ptr<float>(), shard.exp_avg_sq.data_ptr<float>(),
                    shard.master.numel(), low ? host_out.data_ptr() : nullptr,
                    low ? low_precision(host_out.scalar_type()) : offload::LowPrecision::kNone);
}

base::Status HostOptimizer::step(std::vector<HostShard>& shards, const offload::AdamWHyper& hyper,
                                 NvmeStateFile* nvme, NvmeStateFile* nvme_params,
                                 const std::function<void(int)>& shard_done) {
  const int n = static_cast<int>(shards.size());
  std::vector<std::future<base::Status>> updates(n);
  // Where each shard's low-precision result lands on the host (a staging slot, or `out` itself).
  std::vector<at::Tensor> host_out(n);
  base::Status first;
  auto keep_first = [&first](const base::Status& st) {
    if (first.ok() && !st.ok()) first = st;
  };
  auto on_nvme = [&](int i) { return nvme != nullptr && shards[i].nvme_shard >= 0; };
  auto finish = [&](int i) {
    if (!updates[i].valid()) return;  // never started: an earlier error
    base::Status st = updates[i].get();
    keep_first(st);
    HostShard& s = shards[i];
    if (st.ok() && s.nvme_param >= 0) {
      // fp32 compute: the master is the result; otherwise the staging slot.
      keep_first(
          nvme_params->write(s.nvme_param, {out_dtype_ == at::kFloat ? s.master : host_out[i]}));
    } else if (st.ok() && s.out.defined()) {
      // fp32 compute: the master is the result. Otherwise the staging slot, unless the update
      // wrote straight into a host `out`.
      if (s.out.scalar_type() == at::kFloat) {
        if (!s.out.is_same(s.master)) s.out.copy_(s.master);
      } else if (!host_out[i].is_same(s.out)) {
        s.out.copy_(host_out[i]);
      }
    }
    if (on_nvme(i)) keep_first(nvme->release(s.nvme_shard));
    if (first.ok() && shard_done) shard_done(i);
  };
  if (n > 0 && on_nvme(0)) keep_first(nvme->fetch(shards[0].nvme_shard));
  for (int i = 0; i < n && first.ok(); ++i) {
    // Slot i % 2 was shard i - 2's: finish that one (its upload reads the slot) first.
    if (i >= 2) finish(i - 2);
    if (i + 1 < n && on_nvme(i + 1)) keep_first(nvme->fetch(shards[i + 1].nvme_shard));
    HostShard& s = shards[i];
    if (on_nvme(i)) {
      auto state = nvme->acquire(s.nvme_shard);
      if (!state.ok()) {
        keep_first(state.status());
        break;
      }
      s.master = (*state)[0];
      s.exp_avg = (*state)[1];
      s.exp_avg_sq = (*state)[2];
    }
    Slot& slot = slots_[i % 2];
    const int64_t numel = s.master.numel();
    at::Tensor grad = s.grad;
    if (!grad.is_cpu()) {
      grad = slot.grad.narrow(0, 0, numel);
      grad.copy_(s.grad);  // blocking download into pinned memory
    }
    if (s.nvme_param >= 0 && out_dtype_ != at::kFloat) {
      host_out[i] = slot.out.narrow(0, 0, numel);
    } else if (s.out.defined() && s.out.scalar_type() != at::kFloat) {
      const bool direct =
          s.out.is_cpu() && s.out.is_contiguous() && s.out.scalar_type() == out_dtype_;
      host_out[i] = direct ? s.out : slot.out.narrow(0, 0, numel);
    }
    updates[i] = std::async(std::launch::async, [this, &s, grad, out = host_out[i], hyper]() {
      return update(s, grad, out, hyper);
    });
  }
  for (int i = std::max(0, n - 2); i < n; ++i) finish(i);
  if (!first.ok()) {
    for (auto& u : updates) {
      if (u.valid()) u.wait();  // no update may outlive the slots it writes
    }
  }
  if (nvme != nullptr) keep_first(nvme->flush());
  // The slot views die with the step.
  for (HostShard& s : shards) {
    if (s.nvme_shard >= 0) s.master = s.exp_avg = s.exp_avg_sq = at::Tensor();
  }
  return first;
}

}  // namespace dstrain::sharding
