// The equality proof for the ZeRO engine: on every rank, a single-process stage-0 engine over
// MPI_COMM_SELF trains on the whole global batch; the engine under test trains on this rank's
// slice over MPI_COMM_WORLD at stage 0..3 with a different accumulation. In fp32 on CPU the
// per-step losses, gradient norms and final parameters must agree to rounding. Activation
// checkpointing must not change them at all: each policy is compared with "none" on the same
// ranks, and its saved activation memory is measured with a counting CPU allocator.
#include <gtest/gtest.h>
#include <mpi.h>

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <torch/csrc/autograd/autograd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/config.h"
#include "runtime/model/init.h"
#include "runtime/model/llama.h"
#include "runtime/model/lora.h"
#include "runtime/model/rope.h"
#include "sharding/activation_checkpointing.h"
#include "sharding/engine.h"
#include "sharding/gathered_storage.h"
#include "sharding/mpi_communicator.h"
#include "tests/sharding/counting_cpu_allocator.h"

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
    const uint64_t h = mix((static_cast<uint64_t>(step) << 40) ^
                           (static_cast<uint64_t>(index) << 20) ^ static_cast<uint64_t>(t));
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

// keyed: training batch with per-sample randomness keys (LoRA dropout), as the trainer builds.
HostBatch make_micro_batch(const base::ModelConfig& cfg, int64_t step, int64_t first, int64_t count,
                           bool keyed = false) {
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
  at::Tensor positions =
      at::arange(kSeqLen, at::kLong).unsqueeze(0).expand({count, kSeqLen}).contiguous();
  hb.mb.input_ids = input;
  hb.mb.target_ids = target;
  hb.mb.ctx = runtime::make_step_context(cfg, positions, at::kFloat);
  if (keyed) {
    std::vector<int64_t> keys;
    for (int64_t b = 0; b < count; ++b) {
      keys.push_back(static_cast<int64_t>(
          mix((static_cast<uint64_t>(step) << 32) ^ static_cast<uint64_t>(first + b)) >> 1));
    }
    hb.mb.ctx.sample_keys = at::tensor(keys, at::kLong);
    hb.mb.ctx.training = true;
  }
  return hb;
}

double sum_over(Communicator& comm, double value) {
  at::Tensor t = at::full({1}, value, at::kDouble);
  EXPECT_TRUE(all_reduce_now(comm, t, ReduceOp::kSum).ok());
  return t.item<double>();
}

// lora_dropout >= 0: LoRA on every projection with that dropout.
std::unique_ptr<Engine> make_engine(const base::ModelConfig& cfg, int64_t stage, Communicator& comm,
                                    int64_t prefetch_depth = 1,
                                    const std::string& activation_checkpointing = "none",
                                    double lora_dropout = -1, Communicator* replicas = nullptr,
                                    bool fused_weight_grad = true) {
  EngineOptions options = engine_options(stage);
  options.zero.prefetch_depth = prefetch_depth;
  options.activation_checkpointing = activation_checkpointing;
  options.fused_weight_grad = fused_weight_grad;
  auto init = [](const base::Unit& unit, at::TensorList out) {
    return runtime::init_unit_params(unit, out, kSeed);
  };
  base::UnitList units = runtime::build_llama(cfg);
  if (lora_dropout >= 0) {
    base::LoraConfig lora;
    lora.rank = 4;
    lora.dropout = lora_dropout;
    lora.targets = {"all-linear"};
    base::Status st = runtime::apply_lora(units, lora);
    EXPECT_TRUE(st.ok()) << st.to_string();
  }
  auto engine = Engine::create(std::move(units), options, comm, init, replicas);
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
                 int64_t count, int64_t micro, bool keyed = false) {
  Trajectory tr;
  for (int64_t step = 0; step < kSteps; ++step) {
    std::vector<HostBatch> batches;
    double local_targets = 0;
    for (int64_t i = 0; i < count; i += micro) {
      batches.push_back(make_micro_batch(cfg, step, first + i, std::min(micro, count - i), keyed));
      local_targets += static_cast<double>(batches.back().targets);
    }
    const double global_targets = sum_over(comm, local_targets);
    double local_ce = 0;
    for (size_t i = 0; i < batches.size(); ++i) {
      auto ce =
          engine.forward_backward(batches[i].mb, 1.0 / global_targets, i + 1 == batches.size());
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
  // Micro-batches of 2 here against 4 in the reference: the accumulation differs at every world
  // size.
  const Trajectory got =
      train(*engine, **comm, cfg, world_rank() * per_rank, per_rank, /*micro=*/2);
  ASSERT_EQ(static_cast<int64_t>(got.losses.size()), kSteps);
  for (int64_t s = 0; s < kSteps; ++s) {
    EXPECT_NEAR(got.losses[s], ref.losses[s], kTolerance * std::abs(ref.losses[s])) << "step " << s;
    EXPECT_NEAR(got.grad_norms[s], ref.grad_norms[s], kTolerance * ref.grad_norms[s])
        << "step " << s;
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

// Activation checkpointing recomputes the same operations on the same inputs: on the same
// ranks, every policy must reproduce "none" (CPU kernels are deterministic, so to rounding at
// most; the relative difference is printed).
constexpr double kCheckpointTolerance = 1e-6;

struct CheckpointCase {
  int64_t stage;
  bool tie;
  std::string policy;
  double lora_dropout;  // < 0: no LoRA
};

void expect_same_training(const Trajectory& ref, const Trajectory& got, const std::string& what) {
  ASSERT_EQ(static_cast<int64_t>(ref.losses.size()), kSteps) << what;
  ASSERT_EQ(static_cast<int64_t>(got.losses.size()), kSteps) << what;
  double worst = 0;
  for (int64_t s = 0; s < kSteps; ++s) {
    EXPECT_NEAR(got.losses[s], ref.losses[s], kCheckpointTolerance * std::abs(ref.losses[s]))
        << what << " step " << s;
    EXPECT_NEAR(got.grad_norms[s], ref.grad_norms[s], kCheckpointTolerance * ref.grad_norms[s])
        << what << " step " << s;
    worst = std::max(worst, std::abs(got.losses[s] - ref.losses[s]) / std::abs(ref.losses[s]));
  }
  const double params = max_relative_diff(ref.params, got.params);
  EXPECT_LT(params, kCheckpointTolerance) << what;
  if (world_rank() == 0) {
    std::printf("[checkpointing] %s: max relative loss diff %.3g, parameter diff %.3g\n",
                what.c_str(), worst, params);
  }
}

class CheckpointingEquality : public ::testing::TestWithParam<CheckpointCase> {};

TEST_P(CheckpointingEquality, MatchesNoCheckpointing) {
  const CheckpointCase c = GetParam();
  const base::ModelConfig cfg = tiny_model(c.tie);
  auto comm = MpiCommunicator::create(MPI_COMM_WORLD);
  ASSERT_TRUE(comm.ok()) << comm.status().to_string();
  const int world = (*comm)->size();
  ASSERT_EQ(kGlobalBatch % world, 0);
  const int64_t per_rank = kGlobalBatch / world;
  const int64_t first = world_rank() * per_rank;
  const bool keyed = c.lora_dropout > 0;
  std::unique_ptr<Engine> plain = make_engine(cfg, c.stage, **comm, 1, "none", c.lora_dropout);
  ASSERT_NE(plain, nullptr);
  const Trajectory ref = train(*plain, **comm, cfg, first, per_rank, /*micro=*/2, keyed);
  plain.reset();
  std::unique_ptr<Engine> ckpt = make_engine(cfg, c.stage, **comm, 1, c.policy, c.lora_dropout);
  ASSERT_NE(ckpt, nullptr);
  const Trajectory got = train(*ckpt, **comm, cfg, first, per_rank, /*micro=*/2, keyed);
  expect_same_training(ref, got, "stage " + std::to_string(c.stage) + " " + c.policy);
  if (c.stage == 3) EXPECT_EQ(got.parameter_numel_after_step, 0);
  if (keyed) {
    // The dropout masks matter, so a recompute that drew different ones would be caught.
    std::unique_ptr<Engine> unkeyed =
        make_engine(cfg, c.stage, **comm, 1, c.policy, c.lora_dropout);
    ASSERT_NE(unkeyed, nullptr);
    const Trajectory off = train(*unkeyed, **comm, cfg, first, per_rank, /*micro=*/2, false);
    ASSERT_EQ(static_cast<int64_t>(off.losses.size()), kSteps);
    EXPECT_GT(std::abs(off.losses.back() - ref.losses.back()), 1e-4 * std::abs(ref.losses.back()));
  }
}

std::string checkpoint_case_name(const ::testing::TestParamInfo<CheckpointCase>& info) {
  std::string policy = info.param.policy;
  policy[0] = static_cast<char>(std::toupper(policy[0]));
  return "Stage" + std::to_string(info.param.stage) + (info.param.tie ? "Tied" : "Untied") +
         policy + (info.param.lora_dropout > 0 ? "LoraDropout" : "");
}

INSTANTIATE_TEST_SUITE_P(
    Policies, CheckpointingEquality,
    ::testing::Values(CheckpointCase{0, false, "full", -1},
                      CheckpointCase{0, true, "selective", -1}, CheckpointCase{1, true, "full", -1},
                      CheckpointCase{2, false, "full", -1}, CheckpointCase{3, false, "full", -1},
                      CheckpointCase{3, true, "full", -1}, CheckpointCase{3, true, "selective", -1},
                      CheckpointCase{0, false, "full", 0.3}, CheckpointCase{3, true, "full", 0.3}),
    checkpoint_case_name);

// offload.overlap_step: the host AdamW of step t runs on its own thread while step t + 1's
// forward goes on, each unit waiting only for its own shards. A forward that read a shard
// before its update, a backward that wrote a gradient the step still reads, or state read
// mid-update would change the numbers: the trajectories must be bitwise those of the
// synchronous host step, with and without parameter offload, tied and untied.
TEST(OverlappedHostStep, BitwiseEqualToTheSynchronousStep) {
  auto comm = MpiCommunicator::create(MPI_COMM_WORLD);
  ASSERT_TRUE(comm.ok()) << comm.status().to_string();
  const int world = (*comm)->size();
  const int64_t per_rank = kGlobalBatch / world;
  const int64_t first = world_rank() * per_rank;
  for (const bool tie : {false, true}) {
    for (const char* params : {"none", "cpu"}) {
      const base::ModelConfig cfg = tiny_model(tie);
      Trajectory runs[2];
      std::vector<std::vector<double>> slices[2];  // state read right after each step
      for (const bool overlap : {false, true}) {
        EngineOptions options = engine_options(3);
        options.offload.optimizer = "cpu";
        options.offload.params = params;
        options.offload.overlap_step = overlap;
        options.offload_threads = 1;
        auto init = [](const base::Unit& unit, at::TensorList out) {
          return runtime::init_unit_params(unit, out, kSeed);
        };
        auto engine = Engine::create(runtime::build_llama(cfg), options, **comm, init);
        ASSERT_TRUE(engine.ok()) << engine.status().to_string();
        runs[overlap] = train(**engine, **comm, cfg, first, per_rank, /*micro=*/2);
        // One more step, then the state as a checkpoint reads it while the step may still run.
        HostBatch hb = make_micro_batch(cfg, kSteps + 1, first, per_rank);
        ASSERT_TRUE((*engine)->forward_backward(hb.mb, 1.0 / 64, true).ok());
        ASSERT_TRUE((*engine)->step(3e-3).ok());
        for (const StateSlice& slice : (*engine)->state_slices(/*owned_only=*/true)) {
          const at::Tensor t = slice.data.to(at::kDouble).contiguous();
          slices[overlap].emplace_back(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
        }
      }
      const std::string what = std::string(tie ? "tied" : "untied") + ", params " + params;
      ASSERT_EQ(static_cast<int64_t>(runs[1].losses.size()), kSteps) << what;
      EXPECT_EQ(runs[1].losses, runs[0].losses) << what;
      EXPECT_EQ(runs[1].grad_norms, runs[0].grad_norms) << what;
      EXPECT_EQ(runs[1].eval_loss, runs[0].eval_loss) << what;
      EXPECT_EQ(max_relative_diff(runs[0].params, runs[1].params), 0.0) << what;
      EXPECT_EQ(slices[1], slices[0]) << what;
    }
  }
}

TEST(CheckpointingPlan, PoliciesPickUnitsByName) {
  base::ModelConfig cfg = tiny_model(/*tie=*/false);
  cfg.num_layers = 5;
  const base::UnitList units = runtime::build_llama(cfg);  // embed, layers.0-4, head
  auto none = recompute_plan(units, "none");
  auto full = recompute_plan(units, "full");
  auto selective = recompute_plan(units, "selective");
  ASSERT_TRUE(none.ok() && full.ok() && selective.ok());
  EXPECT_EQ(*none, std::vector<bool>(7, false));
  EXPECT_EQ(*full, (std::vector<bool>{true, true, true, true, true, true, false}));
  EXPECT_EQ(*selective, (std::vector<bool>{false, true, false, true, false, true, false}));
  // A number of layers, spread evenly; every other one is what -1 means.
  auto one = recompute_plan(units, "selective", 1);
  auto four = recompute_plan(units, "selective", 4);
  auto three = recompute_plan(units, "selective", 3);
  ASSERT_TRUE(one.ok() && four.ok() && three.ok());
  EXPECT_EQ(*one, (std::vector<bool>{false, true, false, false, false, false, false}));
  EXPECT_EQ(*four, (std::vector<bool>{false, true, false, true, true, true, false}));
  EXPECT_EQ(*three, *selective);
  EXPECT_EQ(*recompute_plan(units, "selective", 0), *none);
  auto too_many = recompute_plan(units, "selective", 6);
  ASSERT_FALSE(too_many.ok());
  EXPECT_NE(too_many.status().message().find("train.recompute_layers"), std::string::npos);
  auto bad = recompute_plan(units, "everything");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), base::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("train.activation_checkpointing"), std::string::npos);
}

// Peak bytes of CPU memory allocated during one forward_backward over long sequences, beyond
// what was live when it started: the activations the graphs save, plus the transient peak.
int64_t forward_backward_peak_bytes(int64_t stage, const std::string& policy,
                                    bool fused_weight_grad = true) {
  base::ModelConfig cfg = tiny_model(/*tie=*/false);
  cfg.hidden_size = 64;
  cfg.intermediate_size = 128;
  cfg.num_layers = 6;
  cfg.max_position_embeddings = 4096;
  constexpr int64_t kLongSeq = 1024;
  constexpr int64_t kBatch = 2;
  auto comm = MpiCommunicator::create(MPI_COMM_WORLD);
  EXPECT_TRUE(comm.ok()) << comm.status().to_string();
  if (!comm.ok()) return -1;
  std::unique_ptr<Engine> engine =
      make_engine(cfg, stage, **comm, 1, policy, -1, nullptr, fused_weight_grad);
  if (!engine) return -1;
  MicroBatch mb;
  mb.input_ids = at::randint(cfg.vocab_size, {kBatch, kLongSeq}, at::kLong);
  mb.target_ids = at::randint(cfg.vocab_size, {kBatch, kLongSeq}, at::kLong);
  at::Tensor positions =
      at::arange(kLongSeq, at::kLong).unsqueeze(0).expand({kBatch, kLongSeq}).contiguous();
  mb.ctx = runtime::make_step_context(cfg, positions, at::kFloat);
  // A first pass so that lazily made state (stage-2/3 gradient buffers) is not counted.
  EXPECT_TRUE(engine->forward_backward(mb, 1e-3, /*last_micro_batch=*/true).ok());
  EXPECT_TRUE(engine->step(1e-3).ok());
  // Lives as long as the process: tensors it allocated may outlive the scope.
  static testing::CountingCpuAllocator* counting = new testing::CountingCpuAllocator();
  testing::AllocatorScope scope(counting);
  const int64_t before = counting->live();
  counting->reset_peak();
  auto ce = engine->forward_backward(mb, 1e-3, /*last_micro_batch=*/true);
  EXPECT_TRUE(ce.ok()) << ce.status().to_string();
  const int64_t peak = counting->peak() - before;
  EXPECT_TRUE(engine->step(1e-3).ok());
  return peak;
}

TEST(CheckpointingMemory, FullSavesMostActivationMemory) {
  for (int64_t stage : {0, 3}) {
    const int64_t none = forward_backward_peak_bytes(stage, "none");
    const int64_t selective = forward_backward_peak_bytes(stage, "selective");
    const int64_t full = forward_backward_peak_bytes(stage, "full");
    if (world_rank() == 0) {
      std::printf(
          "[checkpointing] stage %lld, 6 layers, batch 2 x 1024 tokens, hidden 64: peak "
          "forward/backward bytes none %lld, selective %lld, full %lld\n",
          static_cast<long long>(stage), static_cast<long long>(none),
          static_cast<long long>(selective), static_cast<long long>(full));
    }
    ASSERT_GT(none, 0);
    EXPECT_LT(selective, none) << "stage " << stage;
    EXPECT_LT(full, selective) << "stage " << stage;
    EXPECT_LT(full * 2, none) << "stage " << stage;
  }
}

// train.fused_weight_grad: the matrix products write weight gradients into the fp32 buffers
// (sinks) instead of autograd forming them. Same training as through autograd, at every stage,
// tied and untied (a tied head keeps autograd for the shared buffer), with recomputation (the
// recompute makes the sinks backward writes) and with a frozen embedding (no earlier unit
// trains, yet the layers' sinks must still be written).
struct FusedCase {
  int64_t stage;
  bool tie;
  std::string policy;
  bool frozen_embedding;
};

class FusedWeightGradEquality : public ::testing::TestWithParam<FusedCase> {};

TEST_P(FusedWeightGradEquality, MatchesAutogradGradients) {
  const FusedCase c = GetParam();
  const base::ModelConfig cfg = tiny_model(c.tie);
  auto comm = MpiCommunicator::create(MPI_COMM_WORLD);
  ASSERT_TRUE(comm.ok()) << comm.status().to_string();
  const int64_t per_rank = kGlobalBatch / (*comm)->size();
  const int64_t first = world_rank() * per_rank;
  Trajectory runs[2];
  for (bool fused : {false, true}) {
    base::UnitList units = runtime::build_llama(cfg);
    if (c.frozen_embedding) static_cast<runtime::LlamaUnit&>(*units[0]).freeze();
    EngineOptions options = engine_options(c.stage);
    options.activation_checkpointing = c.policy;
    options.fused_weight_grad = fused;
    auto init = [](const base::Unit& unit, at::TensorList out) {
      return runtime::init_unit_params(unit, out, kSeed);
    };
    auto engine = Engine::create(std::move(units), options, **comm, init);
    ASSERT_TRUE(engine.ok()) << engine.status().to_string();
    runs[fused ? 1 : 0] = train(**engine, **comm, cfg, first, per_rank, /*micro=*/2);
  }
  expect_same_training(runs[0], runs[1],
                       "fused weight gradients, stage " + std::to_string(c.stage) + " " + c.policy);
  EXPECT_LT(runs[1].losses.back(), runs[1].losses.front());
}

std::string fused_case_name(const ::testing::TestParamInfo<FusedCase>& info) {
  std::string policy = info.param.policy;
  policy[0] = static_cast<char>(std::toupper(policy[0]));
  return "Stage" + std::to_string(info.param.stage) + (info.param.tie ? "Tied" : "Untied") +
         policy + (info.param.frozen_embedding ? "FrozenEmbedding" : "");
}

INSTANTIATE_TEST_SUITE_P(
    Stages, FusedWeightGradEquality,
    ::testing::Values(FusedCase{0, false, "none", false}, FusedCase{1, true, "none", false},
                      FusedCase{2, false, "none", false}, FusedCase{3, false, "none", false},
                      FusedCase{3, true, "full", false}, FusedCase{3, false, "none", true},
                      FusedCase{0, true, "selective", true}),
    fused_case_name);

// The sinks are really used: backward no longer forms the compute-dtype gradient of each flat
// buffer next to the fp32 one, so a micro-batch's peak memory drops.
TEST(FusedWeightGradMemory, BackwardPeakIsLower) {
  for (int64_t stage : {0, 3}) {
    const int64_t autograd = forward_backward_peak_bytes(stage, "none", false);
    const int64_t fused = forward_backward_peak_bytes(stage, "none", true);
    if (world_rank() == 0) {
      std::printf(
          "[fused weight grad] stage %lld: peak forward/backward bytes %lld through "
          "autograd, %lld fused\n",
          static_cast<long long>(stage), static_cast<long long>(autograd),
          static_cast<long long>(fused));
    }
    ASSERT_GT(autograd, 0);
    EXPECT_LT(fused, autograd) << "stage " << stage;
  }
}

// Hybrid sharding (zero.shard_group = "node") with the nodes faked: the world splits into
// "nodes" of world / 2 consecutive ranks (2 x 2 at 4 ranks, 2 x 1 at 2). The engine shards over
// its node and all-reduces across nodes; it must still train exactly like the single process.
struct HybridGroups {
  std::unique_ptr<MpiCommunicator> world;
  std::unique_ptr<MpiCommunicator> shard;     // this "node"
  std::unique_ptr<MpiCommunicator> replicas;  // same local rank on every "node"
  int node = 0;
  int local_rank = 0;
  int ranks_per_node = 1;
};

HybridGroups hybrid_groups() {
  HybridGroups g;
  const int world = world_size();
  g.ranks_per_node = world / 2;
  g.node = world_rank() / g.ranks_per_node;
  g.local_rank = world_rank() % g.ranks_per_node;
  MPI_Comm node, across;
  MPI_Comm_split(MPI_COMM_WORLD, g.node, world_rank(), &node);
  MPI_Comm_split(MPI_COMM_WORLD, g.local_rank, world_rank(), &across);
  auto w = MpiCommunicator::create(MPI_COMM_WORLD);
  EXPECT_TRUE(w.ok()) << w.status().to_string();
  g.world = std::move(w).value();
  // One thread for all three groups, as train_command builds them.
  auto s = g.world->create_sharing_thread(node);
  auto r = g.world->create_sharing_thread(across);
  EXPECT_TRUE(s.ok() && r.ok());
  g.shard = std::move(s).value();
  g.replicas = std::move(r).value();
  MPI_Comm_free(&node);
  MPI_Comm_free(&across);
  return g;
}

class HybridEquality : public ::testing::TestWithParam<Case> {};

TEST_P(HybridEquality, MatchesSingleProcessStageZero) {
  const Case c = GetParam();
  const base::ModelConfig cfg = tiny_model(c.tie);
  const Trajectory& ref = reference(c.tie);
  ASSERT_EQ(static_cast<int64_t>(ref.losses.size()), kSteps);
  const int world = world_size();
  ASSERT_EQ(world % 2, 0);
  HybridGroups g = hybrid_groups();
  ASSERT_EQ(g.shard->size(), g.ranks_per_node);
  ASSERT_EQ(g.shard->rank(), g.local_rank);
  ASSERT_EQ(g.replicas->size(), 2);
  ASSERT_EQ(g.replicas->rank(), g.node);
  std::unique_ptr<Engine> engine = make_engine(cfg, c.stage, *g.shard, c.prefetch_depth, "none",
                                               /*lora_dropout=*/-1, g.replicas.get());
  ASSERT_NE(engine, nullptr);
  const int64_t per_rank = kGlobalBatch / world;
  const Trajectory got =
      train(*engine, *g.world, cfg, world_rank() * per_rank, per_rank, /*micro=*/2);
  ASSERT_EQ(static_cast<int64_t>(got.losses.size()), kSteps);
  for (int64_t s = 0; s < kSteps; ++s) {
    EXPECT_NEAR(got.losses[s], ref.losses[s], kTolerance * std::abs(ref.losses[s])) << "step " << s;
    EXPECT_NEAR(got.grad_norms[s], ref.grad_norms[s], kTolerance * ref.grad_norms[s])
        << "step " << s;
  }
  EXPECT_NEAR(got.eval_loss, ref.eval_loss, kTolerance * ref.eval_loss);
  EXPECT_LT(max_relative_diff(ref.params, got.params), kTolerance);

  // Sharded within the node only: each rank holds 1 / ranks_per_node of the optimizer state.
  std::unique_ptr<Engine> replicated = make_engine(cfg, 0, *g.shard);
  ASSERT_NE(replicated, nullptr);
  if (c.stage > 0) {
    EXPECT_EQ(engine->optimizer_state_numel() * g.ranks_per_node,
              replicated->optimizer_state_numel());
  }
  // What checkpoints save: the first node's ranks own every element of every state once, the
  // other nodes' replicas nothing.
  double owned = 0;
  for (const StateSlice& s : engine->state_slices(/*owned_only=*/true)) owned += s.data.numel();
  if (g.node != 0) EXPECT_EQ(owned, 0);
  EXPECT_EQ(static_cast<int64_t>(sum_over(*g.world, owned)),
            3 * engine->num_trainable_parameters());
  replicated.reset();
  engine.reset();
}

INSTANTIATE_TEST_SUITE_P(Stages, HybridEquality,
                         ::testing::Values(Case{0, true, 1}, Case{1, false, 1}, Case{2, true, 1},
                                           Case{3, false, 1}, Case{3, true, 1}),
                         case_name);

}  // namespace
}  // namespace dstrain::sharding
