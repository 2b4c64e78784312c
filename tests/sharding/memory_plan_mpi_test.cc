// The plan's per-rank device bytes against the peak of live bytes measured by a counting CPU
// allocator (independent of the layout code) over real training steps, for configurations that
// span the ZeRO stages, LoRA, the host optimizer, activation checkpointing and micro-batch sizes.
// On a CPU-only run the "device" is ordinary memory; the host tier's pinned-or-aligned buffers
// come from the offload allocator, which the counter does not see, exactly as the plan splits them.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "base/config.h"
#include "runtime/model/init.h"
#include "runtime/model/llama.h"
#include "runtime/model/lora.h"
#include "runtime/model/rope.h"
#include "sharding/engine.h"
#include "sharding/memory_plan.h"
#include "sharding/mpi_communicator.h"
#include "tests/sharding/counting_cpu_allocator.h"

namespace dstrain::sharding {
namespace {

using testing::AllocatorScope;
using testing::CountingCpuAllocator;

constexpr int64_t kSeed = 7;
constexpr int kSteps = 2;
constexpr double kTolerance = 0.05;

struct Case {
  const char* name;
  int64_t stage;
  const char* checkpointing;
  int64_t micro_batch;
  bool lora = false;
  const char* offload_optimizer = "none";
  const char* dtype = "fp32";
  const char* reduce_dtype = "fp32";
  double offload_ratio = 1.0;
  int64_t recompute_layers = -1;
};

// Activations and parameters both matter at this size: neither hides an error in the other.
base::Config make_config(const Case& c, int world) {
  base::Config cfg;
  cfg.model.vocab_size = 512;
  cfg.model.hidden_size = 128;
  cfg.model.intermediate_size = 352;
  cfg.model.num_layers = 4;
  cfg.model.num_heads = 4;
  cfg.model.num_kv_heads = 2;
  cfg.model.init_std = 0.05;
  cfg.train.seq_len = 64;
  cfg.train.micro_batch = c.micro_batch;
  cfg.train.global_batch = c.micro_batch * world;
  cfg.train.dtype = c.dtype;
  cfg.train.activation_checkpointing = c.checkpointing;
  cfg.zero.stage = c.stage;
  cfg.zero.reduce_dtype = c.reduce_dtype;
  cfg.offload.optimizer = c.offload_optimizer;
  cfg.offload.ratio = c.offload_ratio;
  cfg.train.recompute_layers = c.recompute_layers;
  cfg.lora.enabled = c.lora;
  cfg.lora.rank = 8;
  cfg.lora.targets = {"all-linear"};
  return cfg;
}

MicroBatch make_micro_batch(const base::Config& cfg, at::ScalarType dtype) {
  const int64_t b = cfg.train.micro_batch, t = cfg.train.seq_len;
  MicroBatch mb;
  mb.input_ids = at::randint(cfg.model.vocab_size, {b, t}, at::kLong);
  mb.target_ids = at::randint(cfg.model.vocab_size, {b, t}, at::kLong);
  const at::Tensor positions = at::arange(t, at::kLong).unsqueeze(0).expand({b, t}).contiguous();
  mb.ctx = runtime::make_step_context(cfg.model, positions, dtype);
  mb.ctx.training = true;
  return mb;
}

struct Figures {
  int64_t predicted = 0;
  int64_t measured = 0;
};

// Bytes live at the highest point of kSteps optimizer steps, over what was live before the engine
// existed (its state included, its creation's transients not).
Figures run_case(const Case& c, Communicator& comm, CountingCpuAllocator& counter) {
  const base::Config cfg = make_config(c, comm.size());
  const at::ScalarType dtype = cfg.train.dtype == "bf16" ? at::kBFloat16 : at::kFloat;
  base::UnitList units = runtime::build_llama(cfg.model);
  if (cfg.lora.enabled) EXPECT_TRUE(runtime::apply_lora(units, cfg.lora).ok());
  PlanOptions po;
  po.world = comm.size();
  po.cuda = false;
  auto plan = plan_memory(units, cfg, po);
  EXPECT_TRUE(plan.ok()) << plan.status().to_string();
  Figures f;
  if (!plan.ok()) return f;
  f.predicted = plan->device.peak;

  at::manual_seed(kSeed);
  const MicroBatch mb = make_micro_batch(cfg, dtype);
  EngineOptions options;
  options.zero = cfg.zero;
  options.optim.lr = 1e-3;
  options.compute_dtype = dtype;
  options.activation_checkpointing = cfg.train.activation_checkpointing;
  options.recompute_layers = cfg.train.recompute_layers;
  options.offload = cfg.offload;
  options.offload_threads = 1;
  options.replicate_frozen = plan->replicate_frozen;
  auto init = [](const base::Unit& unit, at::TensorList out) {
    return runtime::init_unit_params(unit, out, kSeed);
  };
  const int64_t before = counter.live();
  {
    auto engine = Engine::create(std::move(units), options, comm, init);
    EXPECT_TRUE(engine.ok()) << engine.status().to_string();
    if (!engine.ok()) return f;
    counter.reset_peak();
    const double weight =
        1.0 / static_cast<double>(cfg.train.micro_batch * cfg.train.seq_len * comm.size());
    for (int s = 0; s < kSteps; ++s) {
      auto ce = (*engine)->forward_backward(mb, weight, /*last_micro_batch=*/true);
      EXPECT_TRUE(ce.ok()) << ce.status().to_string();
      auto step = (*engine)->step(1e-3);
      EXPECT_TRUE(step.ok()) << step.status().to_string();
    }
    f.measured = counter.peak() - before;
  }
  return f;
}

TEST(MemoryPlan, PredictsTheMeasuredPeakWithinFivePercent) {
  CountingCpuAllocator counter;
  AllocatorScope scope(&counter);
  {  // the counter really sees LibTorch's CPU allocations
    const int64_t before = counter.live();
    at::Tensor probe = at::empty({1 << 16}, at::kFloat);
    ASSERT_EQ(counter.live() - before, int64_t{4} << 16);
  }
  auto comm = MpiCommunicator::create(MPI_COMM_WORLD);
  ASSERT_TRUE(comm.ok()) << comm.status().to_string();
  const int rank = (*comm)->rank();
  const std::vector<Case> cases = {
      {"stage0 none mb2", 0, "none", 2},
      {"stage1 selective mb2", 1, "selective", 2},
      {"stage2 full mb1", 2, "full", 1},
      {"stage3 none mb2", 3, "none", 2},
      {"stage3 full mb1", 3, "full", 1},
      {"lora stage0 none mb2", 0, "none", 2, true},
      {"lora stage3 selective mb2", 3, "selective", 2, true},
      {"offload cpu stage2 none mb2", 2, "none", 2, false, "cpu"},
      {"offload cpu stage0 selective mb1", 0, "selective", 1, false, "cpu"},
      // Half the units keep their state on the device, the other half in host memory.
      {"offload cpu ratio 0.5 stage3 none mb2", 3, "none", 2, false, "cpu", "fp32", "fp32", 0.5},
      {"offload cpu ratio 0.5 stage1 full mb1", 1, "full", 1, false, "cpu", "fp32", "fp32", 0.5},
      {"bf16 stage2 none mb2", 2, "none", 2, false, "none", "bf16"},
      {"bf16 reduce stage1 none mb2", 1, "none", 2, false, "none", "fp32", "bf16"},
      // One of the decoder layers recomputed instead of every other.
      {"stage3 selective 1 layer mb2", 3, "selective", 2, false, "none", "fp32", "fp32", 1.0, 1},
  };
  for (const Case& c : cases) {
    const Figures f = run_case(c, **comm, counter);
    const double ratio = static_cast<double>(f.predicted) / static_cast<double>(f.measured);
    if (rank == 0) {
      std::printf("[plan] world %d | %-38s | predicted %10lld | measured %10lld | ratio %.3f\n",
                  (*comm)->size(), c.name, static_cast<long long>(f.predicted),
                  static_cast<long long>(f.measured), ratio);
      std::fflush(stdout);
    }
    EXPECT_GT(f.measured, 0) << c.name;
    EXPECT_NEAR(ratio, 1.0, kTolerance) << c.name << " on rank " << rank << ": predicted "
                                        << f.predicted << " bytes, measured " << f.measured;
  }
}

}  // namespace
}  // namespace dstrain::sharding
