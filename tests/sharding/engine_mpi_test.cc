// The equality proof for the ZeRO engine: on every rank, a single-process stage-0 engine over
// MPI_COMM_SELF trains on the whole global batch; the engine under test trains on this rank's
// slice over MPI_COMM_WORLD at stage 0..3 with a different accumulation. In fp32 on CPU the
// per-step losses, gradient norms and final parameters must agree to rounding.
#include <gtest/gtest.h>
#include <mpi.h>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/config.h"
#include "runtime/model/init.h"
#include "runtime/model/llama.h"
#include "runtime/model/rope.h"
#include "sharding/engine.h"
#include "sharding/gathered_storage.h"
#include "sharding/mpi_communicator.h"

namespace dstrain::sharding {
namespace {

constexpr int64_t kSeqLen = 16;
constexpr int64_t kGlobalBatch = 8;
constexpr int64_t kSteps = 10;
constexpr int64_t kSeed = 1234;
// Small enough that every step's gradient is clipped (checked below).
constexpr double kGradClip = 0.05;
constexpr double kTolerance = 1e-5;

base::ModelConfig tiny_model(bool tie) {
  base::ModelConfig cfg;
  cfg.vocab_size = 64;
  cfg.hidden_size = 32;
  cfg.intermediate_size = 48;
  cfg.num_layers = 2;
  cfg.num_heads = 4;
  cfg.num_kv_heads = 2;
  cfg.tie_embeddings = tie;
  cfg.init_std = 0.05;
  return cfg;
}

EngineOptions engine_options(int64_t stage) {
  EngineOptions o;
  o.zero.stage = stage;
  o.zero.prefetch_depth = 1;
  o.optim.lr = 3e-3;
  o.optim.weight_decay = 0.1;
  o.optim.grad_clip = kGradClip;
  o.compute_dtype = at::kFloat;
  return o;
}

uint64_t mix(uint64_t x) {  // splitmix64 finaliser
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Sample `index` of optimizer step `step`: kSeqLen + 1 tokens from a skewed distribution (so the
// model has something to learn), and a number of leading targets masked out that varies by
// sample, so ranks hold different target counts and the global normalisation matters.
struct Sample {
  std::vector<int64_t> tokens;
  int64_t masked = 0;
};
Sample make_sample(int64_t step, int64_t index, int64_t vocab) {
  Sample s;
  for (int64_t t = 0; t <= kSeqLen; ++t) {
    const uint64_t h = mix((static_cast<uint64_t>(step) << 40) ^ (static_cast<uint64_t>(index) << 20) ^
                           static_cast<uint64_t>(t));
    // Half the tokens follow a pattern (previous + 1), the rest are skewed towards small ids.
    if (t > 0 && (h & 1)) {
      s.tokens.push_back((s.tokens.back() + 1) % vocab);
    } else {
      const int64_t r = static_cast<int64_t>((h >> 8) % static_cast<uint64_t>(vocab));
      s.tokens.push_back((r * r) / vocab);
    }
  }
  s.masked = (index * 5 + step) % 7;
  return s;
}

struct HostBatch {
  MicroBatch mb;
  int64_t targets = 0;
};

HostBatch make_micro_batch(const base::ModelConfig& cfg, int64_t step, int64_t first, int64_t count) {
  at::Tensor input = at::empty({count, kSeqLen}, at::kLong);
  at::Tensor target = at::empty({count, kSeqLen}, at::kLong);
  HostBatch hb;
  for (int64_t b = 0; b < count; ++b) {
    const Sample s = make_sample(step, first + b, cfg.vocab_size);
    for (int64_t t = 0; t < kSeqLen; ++t) {
      input[b][t] = s.tokens[t];
      const bool masked = t < s.masked;
      target[b][t] = masked ? -100 : s.tokens[t + 1];
      if (!masked) ++hb.targets;
    }
  }
  at::Tensor positions = at::arange(kSeqLen, at::kLong).unsqueeze(0).expand({count, kSeqLen}).contiguous();
  hb.mb.input_ids = input;
  hb.mb.target_ids = target;
  hb.mb.ctx = runtime::make_step_context(cfg, positions, at::kFloat);
  return hb;
}

double sum_over(Communicator& comm, double value) {
  at::Tensor t = at::full({1}, value, at::kDouble);
  EXPECT_TRUE(all_reduce_now(comm, t, ReduceOp::kSum).ok());
  return t.item<double>();
}

std::unique_ptr<Engine> make_engine(const base::ModelConfig& cfg, int64_t stage, Communicator& comm,
                                    int64_t prefetch_depth = 1) {
  EngineOptions options = engine_options(stage);
  options.zero.prefetch_depth = prefetch_depth;
  auto init = [](const base::Unit& unit, at::TensorList out) {
    return runtime::init_unit_params(unit, out, kSeed);
  };
  auto engine = Engine::create(runtime::build_llama(cfg), options, comm, init);
  EXPECT_TRUE(engine.ok()) << engine.status().to_string();
  return engine.ok() ? std::move(engine).value() : nullptr;
}

struct Trajectory {
  std::vector<double> losses;
  std::vector<double> grad_norms;
  double eval_loss = 0;  // forward only, on the next step's batch, after training
  int64_t parameter_numel_after_step = -1;
  std::map<std::string, at::Tensor> params;
};

// Trains `engine` for kSteps on samples [first, first + count) of each step's global batch, in
// micro-batches of `micro`, the loss normalised by the global target count (as the trainer does).
Trajectory train(Engine& engine, Communicator& comm, const base::ModelConfig& cfg, int64_t first,
                 int64_t count, int64_t micro) {
  Trajectory tr;
  for (int64_t step = 0; step < kSteps; ++step) {
    std::vector<HostBatch> batches;
    double local_targets = 0;
    for (int64_t i = 0; i < count; i += micro) {
      batches.push_back(make_micro_batch(cfg, step, first + i, std::min(micro, count - i)));
      local_targets += static_cast<double>(batches.back().targets);
    }
    const double global_targets = sum_over(comm, local_targets);
    double local_ce = 0;
    for (size_t i = 0; i < batches.size(); ++i) {
      auto ce = engine.forward_backward(batches[i].mb, 1.0 / global_targets, i + 1 == batches.size());
      EXPECT_TRUE(ce.ok()) << ce.status().to_string();
      if (!ce.ok()) return tr;
      local_ce += *ce;
    }
    auto result = engine.step(/*lr=*/3e-3);
    EXPECT_TRUE(result.ok()) << result.status().to_string();
    if (!result.ok()) return tr;
    EXPECT_FALSE(result->skipped);
    tr.grad_norms.push_back(result->grad_norm);
    tr.losses.push_back(sum_over(comm, local_ce) / global_targets);
    tr.parameter_numel_after_step = engine.local_parameter_numel();
  }
  double eval_ce = 0, eval_targets = 0;
  for (int64_t i = 0; i < count; i += micro) {
    HostBatch hb = make_micro_batch(cfg, kSteps, first + i, std::min(micro, count - i));
    auto ce = engine.eval_loss_sum(hb.mb);
    EXPECT_TRUE(ce.ok()) << ce.status().to_string();
    if (!ce.ok()) return tr;
    eval_ce += *ce;
    eval_targets += static_cast<double>(hb.targets);
  }
  tr.eval_loss = sum_over(comm, eval_ce) / sum_over(comm, eval_targets);
  auto params = engine.full_parameters();
  EXPECT_TRUE(params.ok()) << params.status().to_string();
  if (params.ok()) {
    for (auto& [name, t] : *params) tr.params[name] = t;
  }
  return tr;
}

// The stage-3 mechanism in isolation: forward, free the buffer's memory, re-fill the same
// storage through a raw pointer, backward. The gradient must be the one without the round trip,
// and must change when different values are written back (the graph really reads the re-filled
// memory, so this test can fail).
at::Tensor weight_grad_after_refill(const at::Tensor& values, const at::Tensor& refill,
                                    const at::Tensor& x) {
  at::Tensor full = values.clone();
  at::Tensor leaf = full.detach().requires_grad_();
  at::Tensor w = leaf.view({4, 4});
  at::Tensor y = x.matmul(w.t()).tanh().matmul(w).pow(2).sum();
  const size_t nbytes = full.nbytes();
  release_storage(full);
  EXPECT_EQ(storage_bytes(full), 0u);
  allocate_storage(full, nbytes);
  EXPECT_EQ(storage_bytes(full), nbytes);
  std::memcpy(full.data_ptr(), refill.data_ptr(), nbytes);
  return torch::autograd::grad({y}, {leaf})[0];
}

TEST(GatheredStorage, BackwardReadsRefilledStorage) {
  at::manual_seed(3);
  const at::Tensor values = at::randn({16});
  const at::Tensor x = at::randn({3, 4});
  at::Tensor expected;
  {
    at::Tensor leaf = values.clone().requires_grad_();
    at::Tensor w = leaf.view({4, 4});
    at::Tensor y = x.matmul(w.t()).tanh().matmul(w).pow(2).sum();
    expected = torch::autograd::grad({y}, {leaf})[0];
  }
  EXPECT_TRUE(at::allclose(weight_grad_after_refill(values, values, x), expected, 0, 0));
  EXPECT_FALSE(at::allclose(weight_grad_after_refill(values, values * 2, x), expected));
}

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int s = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

// The single-process reference, computed once per tie setting on every rank. Its communicator
// is destroyed before the world communicator is used, so only one thread at a time calls MPI.
const Trajectory& reference(bool tie) {
  static std::map<bool, Trajectory> cache;
  auto it = cache.find(tie);
  if (it != cache.end()) return it->second;
  auto self = MpiCommunicator::create(MPI_COMM_SELF);
  EXPECT_TRUE(self.ok()) << self.status().to_string();
  const base::ModelConfig cfg = tiny_model(tie);
  std::unique_ptr<Engine> engine = make_engine(cfg, /*stage=*/0, **self);
  Trajectory tr;
  if (engine) tr = train(*engine, **self, cfg, 0, kGlobalBatch, /*micro=*/4);
  engine.reset();
  self->reset();
  return cache.emplace(tie, std::move(tr)).first->second;
}

// Largest |a - b| over all parameters, relative to the largest |a|.
double max_relative_diff(const std::map<std::string, at::Tensor>& a,
                         const std::map<std::string, at::Tensor>& b) {
  double diff = 0, scale = 0;
  for (const auto& [name, t] : a) {
    auto it = b.find(name);
    if (it == b.end() || !t.sizes().equals(it->second.sizes())) return INFINITY;
    diff = std::max(diff, (t - it->second).abs().max().item<double>());
    scale = std::max(scale, t.abs().max().item<double>());
  }
  return diff / std::max(scale, 1e-30);
}

struct Case {
  int64_t stage;
  bool tie;
  int64_t prefetch_depth;
};

class EngineEquality : public ::testing::TestWithParam<Case> {};

TEST_P(EngineEquality, MatchesSingleProcessStageZero) {
  const Case c = GetParam();
  const base::ModelConfig cfg = tiny_model(c.tie);
  const Trajectory& ref = reference(c.tie);
  ASSERT_EQ(static_cast<int64_t>(ref.losses.size()), kSteps);
  for (double n : ref.grad_norms) EXPECT_GT(n, kGradClip) << "clipping must be exercised";
  EXPECT_LT(ref.losses.back(), ref.losses.front()) << "the reference should learn";

  const int world = world_size();
  ASSERT_EQ(kGlobalBatch % world, 0);
  auto comm = MpiCommunicator::create(MPI_COMM_WORLD);
  ASSERT_TRUE(comm.ok()) << comm.status().to_string();
  std::unique_ptr<Engine> engine = make_engine(cfg, c.stage, **comm, c.prefetch_depth);
  ASSERT_NE(engine, nullptr);
  const int64_t per_rank = kGlobalBatch / world;
  // Micro-batches of 2 here against 4 in the reference: the accumulation differs at every world size.
  const Trajectory got = train(*engine, **comm, cfg, world_rank() * per_rank, per_rank, /*micro=*/2);
  ASSERT_EQ(static_cast<int64_t>(got.losses.size()), kSteps);
  for (int64_t s = 0; s < kSteps; ++s) {
    EXPECT_NEAR(got.losses[s], ref.losses[s], kTolerance * std::abs(ref.losses[s])) << "step " << s;
    EXPECT_NEAR(got.grad_norms[s], ref.grad_norms[s], kTolerance * ref.grad_norms[s]) << "step " << s;
  }
  EXPECT_NEAR(got.eval_loss, ref.eval_loss, kTolerance * ref.eval_loss);
  ASSERT_EQ(got.params.size(), ref.params.size());
  EXPECT_LT(max_relative_diff(ref.params, got.params), kTolerance);
  // Stage 3 holds no full parameters between steps; the others hold all of them.
  if (c.stage == 3) {
    EXPECT_EQ(got.parameter_numel_after_step, 0);
  } else {
    EXPECT_GE(got.parameter_numel_after_step, engine->num_parameters());
  }
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  return "Stage" + std::to_string(info.param.stage) + (info.param.tie ? "Tied" : "Untied") +
         "Prefetch" + std::to_string(info.param.prefetch_depth);
}

INSTANTIATE_TEST_SUITE_P(Stages, EngineEquality,
                         ::testing::Values(Case{0, false, 1}, Case{0, true, 1}, Case{1, false, 1},
                                           Case{1, true, 1}, Case{2, false, 1}, Case{2, true, 1},
                                           Case{3, false, 1}, Case{3, true, 1}, Case{3, false, 0},
                                           Case{3, true, 0}, Case{3, true, 3}),
                         case_name);

// Optimizer state (fp32 master + two moments) at stage >= 1 is split evenly: each rank holds
// 1/W of what a stage-0 engine with the same layout holds on every rank. Stage 3 also holds no
// full parameters between steps.
TEST(EngineSharding, OptimizerStateIsOneWorldthPerRank) {
  const base::ModelConfig cfg = tiny_model(/*tie=*/true);
  auto comm = MpiCommunicator::create(MPI_COMM_WORLD);
  ASSERT_TRUE(comm.ok()) << comm.status().to_string();
  const int world = (*comm)->size();
  std::unique_ptr<Engine> replicated = make_engine(cfg, 0, **comm);
  ASSERT_NE(replicated, nullptr);
  const int64_t total = replicated->optimizer_state_numel();
  EXPECT_GE(total, 3 * replicated->num_trainable_parameters());
  EXPECT_EQ(replicated->local_parameter_numel(), total / 3);
  for (int64_t stage : {1, 2, 3}) {
    std::unique_ptr<Engine> sharded = make_engine(cfg, stage, **comm);
    ASSERT_NE(sharded, nullptr);
    const int64_t local = sharded->optimizer_state_numel();
    EXPECT_EQ(local * world, total) << "stage " << stage;
    EXPECT_EQ(static_cast<int64_t>(sum_over(**comm, static_cast<double>(local))), total);
    // Stages 1 and 2 keep the full parameters between steps, stage 3 only shards.
    EXPECT_EQ(sharded->local_parameter_numel(), stage == 3 ? 0 : total / 3) << "stage " << stage;
  }
}

}  // namespace
}  // namespace dstrain::sharding
