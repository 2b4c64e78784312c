// Per-rank memory falls as 1/W for what each ZeRO stage shards, measured by the bytes the CPU
// allocator hands out, not by the layout code's own accounting. For each stage the reference is
// the same engine on one rank (MPI_COMM_SELF); the engine under test runs over MPI_COMM_WORLD.
#include <ATen/ATen.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>

#include "base/config.h"
#include "runtime/model/init.h"
#include "runtime/model/llama.h"
#include "runtime/model/rope.h"
#include "sharding/engine.h"
#include "sharding/mpi_communicator.h"
#include "tests/sharding/counting_cpu_allocator.h"

namespace dstrain::sharding {
namespace {

constexpr int64_t kSeqLen = 16;
constexpr int64_t kBatch = 2;
constexpr int64_t kSeed = 99;

using testing::AllocatorScope;
using testing::CountingCpuAllocator;

// Large enough that per-buffer padding to a multiple of the world size is noise.
base::ModelConfig model_config() {
  base::ModelConfig cfg;
  cfg.vocab_size = 256;
  cfg.hidden_size = 128;
  cfg.intermediate_size = 256;
  cfg.num_layers = 4;
  cfg.num_heads = 4;
  cfg.num_kv_heads = 2;
  cfg.tie_embeddings = false;
  cfg.init_std = 0.05;
  return cfg;
}

// Parameters counted from the model's schemas, not from the engine.
int64_t parameter_count(const base::ModelConfig& cfg) {
  int64_t n = 0;
  for (const auto& unit : runtime::build_llama(cfg)) {
    for (const base::ParamSpec& p : unit->schema()) {
      if (p.tied_to.empty()) n += p.numel();
    }
  }
  return n;
}

MicroBatch make_micro_batch(const base::ModelConfig& cfg) {
  MicroBatch mb;
  mb.input_ids = at::randint(cfg.vocab_size, {kBatch, kSeqLen}, at::kLong);
  mb.target_ids = at::randint(cfg.vocab_size, {kBatch, kSeqLen}, at::kLong);
  at::Tensor positions =
      at::arange(kSeqLen, at::kLong).unsqueeze(0).expand({kBatch, kSeqLen}).contiguous();
  mb.ctx = runtime::make_step_context(cfg, positions, at::kFloat);
  return mb;
}

struct Footprint {
  int64_t live = 0;  // bytes held after create() and one step
  int64_t peak = 0;  // highest bytes held during create() and the step
};

// Bytes allocated by an engine of `stage` over `comm` and still held after one optimizer step,
// over what was live before it was created; the engine is destroyed before returning.
Footprint measure(int64_t stage, Communicator& comm, CountingCpuAllocator& counter) {
  const base::ModelConfig cfg = model_config();
  at::manual_seed(kSeed);
  const MicroBatch mb = make_micro_batch(cfg);
  EngineOptions options;
  options.zero.stage = stage;
  options.zero.prefetch_depth = 1;
  options.optim.lr = 1e-3;
  options.compute_dtype = at::kFloat;
  auto init = [](const base::Unit& unit, at::TensorList out) {
    return runtime::init_unit_params(unit, out, kSeed);
  };
  Footprint f;
  const int64_t before = counter.live();
  counter.reset_peak();
  {
    auto engine = Engine::create(runtime::build_llama(cfg), options, comm, init);
    EXPECT_TRUE(engine.ok()) << engine.status().to_string();
    if (!engine.ok()) return f;
    auto ce = (*engine)->forward_backward(mb, 1.0 / static_cast<double>(kBatch * kSeqLen), true);
    EXPECT_TRUE(ce.ok()) << ce.status().to_string();
    auto result = (*engine)->step(1e-3);
    EXPECT_TRUE(result.ok()) << result.status().to_string();
    f.live = counter.live() - before;
    f.peak = counter.peak() - before;
  }
  return f;
}

double mib(int64_t bytes) { return static_cast<double>(bytes) / (1 << 20); }

TEST(EngineMemory, ShardedStateFallsAsOneOverWorld) {
  CountingCpuAllocator counter;
  AllocatorScope scope(&counter);
  {  // the allocator really is in use
    const int64_t before = counter.live();
    at::Tensor probe = at::empty({1 << 20}, at::kFloat);
    ASSERT_EQ(counter.live() - before, int64_t{4} << 20);
  }
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const base::ModelConfig cfg = model_config();
  const double param_bytes = 4.0 * static_cast<double>(parameter_count(cfg));  // fp32

  // References first, each over its own communicator, destroyed before the world one exists,
  // so only one communication thread at a time calls MPI.
  Footprint single[4];
  for (int64_t stage = 0; stage <= 3; ++stage) {
    auto self = MpiCommunicator::create(MPI_COMM_SELF);
    ASSERT_TRUE(self.ok()) << self.status().to_string();
    single[stage] = measure(stage, **self, counter);
  }
  auto comm = MpiCommunicator::create(MPI_COMM_WORLD);
  ASSERT_TRUE(comm.ok()) << comm.status().to_string();
  const int world = (*comm)->size();
  const double shrink = 1.0 - 1.0 / world;

  for (int64_t stage = 0; stage <= 3; ++stage) {
    const Footprint got = measure(stage, **comm, counter);
    const double ref = static_cast<double>(single[stage].live);
    // In fp32 the parameters are the master weights, so an engine holds four parameter-sized
    // buffers: parameters, gradients and both AdamW moments. Stage 1 shards the moments (the
    // master shard is a slice of the whole parameters it keeps), stage 2 also the gradients,
    // stage 3 everything. Stages 2 and 3 give the gradient shards back after the step, until
    // the next backward's reductions: three buffers are left.
    const int held = stage >= 2 ? 3 : 4;
    double expected = ref;
    if (stage == 1) expected = ref - shrink * 2 * param_bytes;
    if (stage == 2) expected = ref - shrink * 2 * param_bytes;
    if (stage == 3) expected = ref / world;
    if (rank == 0) {
      std::printf(
          "[memory] world %d stage %lld: params %.3f MiB; live after step %.3f MiB (1 rank: "
          "%.3f MiB, expected %.3f MiB); peak %.3f MiB (1 rank: %.3f MiB)\n",
          world, static_cast<long long>(stage), param_bytes / (1 << 20), mib(got.live),
          mib(single[stage].live), expected / (1 << 20), mib(got.peak), mib(single[stage].peak));
      std::fflush(stdout);
    }
    // Slack: 1% of the single-rank footprint, covering shard padding and small per-rank scalars.
    const double slack = 0.01 * ref;
    EXPECT_NEAR(ref, held * param_bytes, slack)
        << "stage " << stage << ": one rank holds " << held << " buffers after the step";
    EXPECT_NEAR(static_cast<double>(got.live), expected, slack)
        << "stage " << stage << " world " << world;
    if (stage > 0) {
      EXPECT_LT(got.peak, single[stage].peak) << "stage " << stage << ": the peak must fall too";
    }
  }
}

}  // namespace
}  // namespace dstrain::sharding
