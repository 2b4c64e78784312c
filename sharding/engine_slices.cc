// The engine's state as the rest of dstrain sees it: named slices for checkpoints (saved and
// loaded at any world size and stage), full parameters for export and tests, and counts.
#include <algorithm>
#include <cmath>

#include "sharding/engine.h"
#include "sharding/engine_state.h"
#include "sharding/gathered_storage.h"

namespace dstrain::sharding {

base::StatusOr<std::vector<std::pair<std::string, at::Tensor>>> Engine::full_parameters() {
  std::vector<std::pair<std::string, at::Tensor>> out;
  RETURN_IF_ERROR(page_in_state());  // the fp32 masters, wherever they live
  try {
    for (auto& st : state_) {
      for (Buffer& b : st->buffers) {
        if (!b.present()) continue;
        at::Tensor full;
        if (options_.zero.stage == 0 || (!b.trainable && !b.gathers)) {
          full = b.trainable ? b.master : b.full;
        } else {
          // Frozen buffers under stage 3 exist only as compute-dtype shards.
          // On the device, wherever the offload tiers keep it.
          const at::Tensor mine = (b.trainable ? b.master : b.shard_param)
                                      .to(options_.device, /*non_blocking=*/false, /*copy=*/true);
          full = at::empty({b.layout.padded_numel}, mine.options());
          RETURN_IF_ERROR(comm_.all_gather(mine, full)->wait());
        }
        full = full.to(at::kFloat).cpu();
        for (const FlatEntry& e : b.layout.entries) {
          out.emplace_back(e.name, full.narrow(0, e.offset, e.numel).view(e.shape).clone());
        }
      }
    }
  } catch (const std::exception& e) {
    return torch_error(e, "gathering parameters");
  }
  RETURN_IF_ERROR(page_out_state(/*write_back=*/false));
  return out;
}

int64_t Engine::count_parameters(bool trainable_only) const {
  int64_t n = 0;
  for (const auto& st : state_) {
    for (const Buffer& b : st->buffers) {
      if (trainable_only && !b.trainable) continue;
      for (const FlatEntry& e : b.layout.entries) n += e.numel;
    }
  }
  return n;
}

int64_t Engine::num_parameters() const { return count_parameters(/*trainable_only=*/false); }

int64_t Engine::num_trainable_parameters() const {
  return count_parameters(/*trainable_only=*/true);
}

const char* state_kind_name(StateKind k) {
  switch (k) {
    case StateKind::kParam:
      return "param";
    case StateKind::kExpAvg:
      return "exp_avg";
    case StateKind::kExpAvgSq:
      return "exp_avg_sq";
  }
  return "?";
}

std::vector<StateSlice> Engine::state_slices(bool owned_only) {
  const int64_t stage = options_.zero.stage;
  std::vector<StateSlice> out;
  // The slices view the state the overlapped host step writes. Its error, if any, stays with
  // the engine and fails the next call that can return it.
  (void)wait_host_step();
  if (owned_only && replicas_ != nullptr && replicas_->rank() != 0) return out;
  for (auto& st : state_) {
    for (Buffer& b : st->buffers) {
      if (!b.present()) continue;
      // The elements of the buffer this rank's tensors hold, and where `base` starts in it.
      const ShardRange range = owned_only ? shard_range(b.layout, comm_.rank()) : b.shard;
      const bool whole = stage == 0 || (!b.trainable && !b.gathers);  // tensors span the buffer
      const int64_t base_offset = whole ? 0 : b.shard.begin;
      std::vector<std::pair<StateKind, at::Tensor>> tensors;
      if (b.trainable) {
        tensors = {{StateKind::kParam, b.master},
                   {StateKind::kExpAvg, b.exp_avg},
                   {StateKind::kExpAvgSq, b.exp_avg_sq}};
      } else {
        tensors = {{StateKind::kParam, b.gathers ? b.shard_param : b.full}};
      }
      for (const FlatEntry& e : b.layout.entries) {
        const EntrySlice piece = entry_slice(e, range);
        if (piece.numel == 0) continue;
        const int64_t at = range.begin + piece.shard_begin - base_offset;
        for (const auto& [kind, t] : tensors) {
          out.push_back({e.name, kind, e.shape, piece.entry_begin, t.narrow(0, at, piece.numel)});
        }
      }
    }
  }
  return out;
}

EngineScalars Engine::scalars() const {
  return {step_count_.item<double>(), loss_scale_, good_steps_};
}

void Engine::set_scalars(const EngineScalars& s) {
  (void)wait_host_step();  // it read the step count when it started; keeps the error for later
  step_count_.fill_(s.adam_step);
  adam_steps_ = std::llround(s.adam_step);
  loss_scale_ = s.loss_scale;
  good_steps_ = s.good_steps;
}

base::Status Engine::finish_load() {
  RETURN_IF_ERROR(wait_host_step());
  try {
    RETURN_IF_ERROR(refresh_compute_params(Refresh::kAll));
  } catch (const std::exception& e) {
    return torch_error(e, "loading state");
  }
  return page_out_state(/*write_back=*/true);
}

int64_t Engine::optimizer_state_numel() const {
  int64_t n = 0;
  for (const auto& st : state_) {
    for (const Buffer& b : st->buffers) {
      if (!b.present() || !b.trainable) continue;
      n += b.master.numel() + b.exp_avg.numel() + b.exp_avg_sq.numel();
    }
  }
  return n;
}

int64_t Engine::local_parameter_numel() const {
  int64_t n = 0;
  for (const auto& st : state_) {
    for (const Buffer& b : st->buffers) {
      if (b.present()) n += static_cast<int64_t>(storage_bytes(b.full)) / b.full.element_size();
    }
  }
  return n;
}

}  // namespace dstrain::sharding
