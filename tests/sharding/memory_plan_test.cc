// The plan's arithmetic and its advice, over a hand-made Llama-shaped schema (the accuracy against
// real allocations is memory_plan_mpi_test.cc).
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "sharding/fit_advice.h"
#include "sharding/memory_plan.h"
#include "sharding/offload_split.h"

namespace dstrain::sharding {
namespace {

constexpr int64_t kVocab = 1024, kHidden = 256, kInter = 704, kLayers = 4;
constexpr int64_t kMiB = int64_t{1} << 20;

// A unit with a schema and no forward: the plan reads names and schemas only.
class SchemaUnit final : public base::Unit {
 public:
  SchemaUnit(std::string name, std::vector<base::ParamSpec> schema)
      : name_(std::move(name)), schema_(std::move(schema)) {}
  const std::string& name() const override { return name_; }
  const std::vector<base::ParamSpec>& schema() const override { return schema_; }
  using base::Unit::forward;
  at::Tensor forward(const at::Tensor& x, at::TensorList, const base::GradSinks&,
                     const base::StepContext&) const override {
    return x;
  }

 private:
  std::string name_;
  std::vector<base::ParamSpec> schema_;
};

base::ParamSpec spec(std::string name, std::vector<int64_t> shape, bool decay = true) {
  base::ParamSpec p;
  p.name = std::move(name);
  p.shape = std::move(shape);
  p.decay = decay;
  return p;
}

base::UnitList llama_units(int layers = kLayers) {
  base::UnitList units;
  units.push_back(std::make_unique<SchemaUnit>(
      "embed", std::vector<base::ParamSpec>{spec("embed", {kVocab, kHidden})}));
  for (int i = 0; i < layers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    units.push_back(std::make_unique<SchemaUnit>(
        "layers." + std::to_string(i),
        std::vector<base::ParamSpec>{
            spec(p + "in_norm", {kHidden}, false), spec(p + "q", {kHidden, kHidden}),
            spec(p + "k", {kHidden, kHidden}), spec(p + "v", {kHidden, kHidden}),
            spec(p + "o", {kHidden, kHidden}), spec(p + "post_norm", {kHidden}, false),
            spec(p + "gate", {kInter, kHidden}), spec(p + "up", {kInter, kHidden}),
            spec(p + "down", {kHidden, kInter})}));
  }
  units.push_back(std::make_unique<SchemaUnit>(
      "head", std::vector<base::ParamSpec>{spec("norm", {kHidden}, false),
                                           spec("lm_head.weight", {kVocab, kHidden})}));
  return units;
}

base::Config config() {
  base::Config cfg;
  cfg.model.vocab_size = kVocab;
  cfg.model.hidden_size = kHidden;
  cfg.model.intermediate_size = kInter;
  cfg.model.num_layers = kLayers;
  cfg.model.num_heads = 4;
  cfg.model.num_kv_heads = 4;
  cfg.train.dtype = "bf16";
  cfg.train.micro_batch = 4;
  cfg.train.global_batch = 4;
  cfg.train.seq_len = 512;
  return cfg;
}

// The CPU's figures: no CUDA constants in the way of the arithmetic.
PlanOptions cpu_options(int world = 1) {
  PlanOptions o;
  o.world = world;
  o.cuda = false;
  return o;
}

MemoryPlan plan(const base::Config& cfg, int world) {
  const PlanOptions o = cpu_options(world);
  auto p = plan_memory(llama_units(), cfg, o);
  EXPECT_TRUE(p.ok()) << p.status().to_string();
  return p.ok() ? *p : MemoryPlan();
}

TEST(MemoryPlan, Stage3ShardsEveryPersistentByteOverTheWorld) {
  base::Config cfg = config();
  cfg.zero.stage = 3;
  const MemoryPlan one = plan(cfg, 1), eight = plan(cfg, 8);
  EXPECT_EQ(one.parameters, eight.parameters);
  // bf16 parameters, fp32 master and two moments: 2 + 12 bytes a parameter held throughout; the
  // fp32 gradients (4 bytes) only from the backward's reductions to the step.
  EXPECT_NEAR(static_cast<double>(one.device.persistent), 14.0 * one.parameters,
              0.01 * 14 * one.parameters);
  EXPECT_NEAR(static_cast<double>(one.device.released_gradients), 4.0 * one.parameters,
              0.01 * 4 * one.parameters);
  EXPECT_NEAR(static_cast<double>(eight.device.released_gradients),
              one.device.released_gradients / 8.0, 0.01 * one.device.released_gradients / 8.0);
  EXPECT_NEAR(static_cast<double>(eight.device.persistent), one.device.persistent / 8.0,
              0.01 * one.device.persistent / 8.0);
  EXPECT_GT(eight.device.params_in_flight, 0);
  EXPECT_EQ(one.comm.intra_node + one.comm.inter_node, 0) << "one rank sends nothing";
  EXPECT_GT(eight.comm.intra_node, 0);
}

TEST(MemoryPlan, OffloadMovesTheOptimizerStateToItsTier) {
  base::Config cfg = config();
  cfg.zero.stage = 2;
  const MemoryPlan on_device = plan(cfg, 2);
  cfg.offload.optimizer = "cpu";
  const MemoryPlan on_host = plan(cfg, 2);
  EXPECT_EQ(on_host.device.optimizer, 0);
  EXPECT_EQ(on_host.host.optimizer, on_device.device.optimizer);
  EXPECT_GT(on_host.host.staging, 0);
  cfg.offload.optimizer = "nvme";
  cfg.offload.host_budget_gib = 0;
  const MemoryPlan on_nvme = plan(cfg, 2);
  EXPECT_EQ(on_nvme.nvme.optimizer, on_device.device.optimizer);
  EXPECT_EQ(on_nvme.host.optimizer, 0);
  EXPECT_GT(on_nvme.comm.nvme, 0);
}

TEST(MemoryPlan, HostParametersAreNotUploadedAfterTheHostStep) {
  // Per parameter and step, an offloaded optimizer takes the fp32 gradient down (4 bytes) and,
  // with the parameters on the device, sends the updated bf16 shard up (2); with the parameters
  // in host memory it writes them there and nothing goes up after the step, but each of the
  // forward's and the backward's gathers uploads the shard (2 + 2).
  base::Config cfg = config();
  cfg.zero.stage = 3;
  cfg.offload.optimizer = "cpu";
  const MemoryPlan device_params = plan(cfg, 1);
  cfg.offload.params = "cpu";
  const MemoryPlan host_params = plan(cfg, 1);
  ASSERT_GT(device_params.comm.host_device, 0);
  EXPECT_EQ(host_params.comm.host_device * 6, device_params.comm.host_device * 8);
}

TEST(MemoryPlan, OffloadRatioSplitsTheStateBetweenDeviceAndHost) {
  base::Config cfg = config();
  cfg.zero.stage = 3;
  cfg.offload.optimizer = "cpu";
  cfg.offload.params = "cpu";
  const MemoryPlan all = plan(cfg, 1);
  cfg.offload.ratio = 0.5;
  const MemoryPlan half = plan(cfg, 1);
  cfg.offload.optimizer = cfg.offload.params = "none";
  const MemoryPlan none = plan(cfg, 1);
  // Units go to the host from the last one back until they hold at least half the parameters.
  const std::vector<bool> units = offloaded_units(llama_units(), [] {
    base::OffloadConfig o;
    o.optimizer = "cpu";
    o.ratio = 0.5;
    return o;
  }());
  EXPECT_EQ(units, (std::vector<bool>{false, false, false, true, true, true}));
  // Together the two tiers hold what either holds alone.
  EXPECT_EQ(half.host.optimizer + half.device.optimizer, all.host.optimizer);
  EXPECT_EQ(half.host.params + half.device.params, all.host.params);
  EXPECT_GT(half.device.optimizer, 0);
  EXPECT_LT(half.device.optimizer, none.device.optimizer);
  const double host_share = static_cast<double>(half.host.optimizer) / all.host.optimizer;
  EXPECT_GE(host_share, 0.5);
  EXPECT_LT(host_share, 0.75);
  // Only the offloaded half crosses PCIe.
  EXPECT_GT(half.comm.host_device, 0);
  EXPECT_LT(half.comm.host_device, all.comm.host_device);
}

TEST(OffloadSplit, TakesUnitsFromTheLastOneBackUntilTheShareIsReached) {
  base::OffloadConfig o;
  const int n = kLayers + 2;
  EXPECT_EQ(offloaded_units(llama_units(), o), std::vector<bool>(n, false)) << "nothing offloaded";
  o.optimizer = "cpu";
  EXPECT_EQ(offloaded_units(llama_units(), o), std::vector<bool>(n, true)) << "ratio 1: everything";
  o.ratio = 1e-6;  // any positive share takes at least the last unit
  EXPECT_EQ(offloaded_units(llama_units(), o),
            (std::vector<bool>{false, false, false, false, false, true}));
  // A head tied to the embedding owns nothing: its parameters count with the embedding, so a
  // share that the head alone would have met now takes the last layer as well.
  base::UnitList tied = llama_units();
  base::ParamSpec head = spec("lm_head.weight", {kVocab, kHidden});
  head.tied_to = "embed";
  tied.back() = std::make_unique<SchemaUnit>(
      "head", std::vector<base::ParamSpec>{spec("norm", {kHidden}, false), head});
  o.ratio = 0.05;
  EXPECT_EQ(offloaded_units(tied, o), (std::vector<bool>{false, false, false, false, true, true}));
}

TEST(MemoryPlan, CheckpointingKeepsLessForBackward) {
  base::Config cfg = config();
  const int64_t none = plan(cfg, 1).activations_at_backward;
  cfg.train.activation_checkpointing = "selective";
  const int64_t selective = plan(cfg, 1).activations_at_backward;
  cfg.train.activation_checkpointing = "full";
  const int64_t full = plan(cfg, 1).activations_at_backward;
  EXPECT_LT(selective, none);
  EXPECT_LT(full, selective);
  cfg.train.activation_checkpointing = "none";
  cfg.train.micro_batch = 2;
  EXPECT_LT(plan(cfg, 1).activations_at_backward, none) << "half the micro-batch";
}

TEST(MemoryPlan, CudaAllocatorRoundsEveryTensorTo512Bytes) {
  EXPECT_EQ(cuda_allocated_bytes(0), 0);
  EXPECT_EQ(cuda_allocated_bytes(1), 512);
  EXPECT_EQ(cuda_allocated_bytes(512), 512);
  EXPECT_EQ(cuda_allocated_bytes(513), 1024);
  EXPECT_EQ(cuda_allocated_bytes(10 * kMiB + 1), 10 * kMiB + 512);
  // Stage 3 over 8 ranks: a layer's no-decay buffer (two norms, 512 elements) leaves a shard of
  // 64 elements, the head's (one norm) one of 32: a bf16 parameter shard and three persistent
  // fp32 tensors (master, two moments), each a 512-byte block on CUDA, and the fp32 gradient,
  // released between steps. Every other shard is a multiple of 512 bytes.
  base::Config cfg = config();
  cfg.zero.stage = 3;
  PlanOptions cuda = cpu_options(8);
  cuda.cuda = true;
  auto on_gpu = plan_memory(llama_units(), cfg, cuda);
  ASSERT_TRUE(on_gpu.ok());
  const MemoryPlan on_cpu = plan(cfg, 8);
  const int64_t layer = (512 - 2 * 64) + 3 * (512 - 4 * 64);
  const int64_t head = (512 - 2 * 32) + 3 * (512 - 4 * 32);
  EXPECT_EQ(on_gpu->device.persistent - on_cpu.device.persistent, kLayers * layer + head);
  EXPECT_EQ(on_gpu->device.released_gradients - on_cpu.device.released_gradients,
            kLayers * (512 - 4 * 64) + (512 - 4 * 32));
}

TEST(MemoryPlan, CudaCountsOneCublasWorkspacePerMatmulThread) {
  // A micro-batch this small leaves the walk's own workspace far below one cuBLAS workspace.
  base::Config cfg = config();
  cfg.train.micro_batch = 1;
  cfg.train.global_batch = 1;
  cfg.train.seq_len = 8;
  PlanOptions cuda = cpu_options();
  cuda.cuda = true;
  auto on_gpu = plan_memory(llama_units(), cfg, cuda);
  ASSERT_TRUE(on_gpu.ok());
  const MemoryPlan on_cpu = plan(cfg, 1);
  ASSERT_LT(on_cpu.device.workspace, 4 * kMiB);
  // The forward's thread and autograd's device thread: 32 MiB each.
  EXPECT_GE(on_gpu->device.workspace, 2 * 32 * kMiB);
  EXPECT_LT(on_gpu->device.workspace, 2 * 32 * kMiB + 4 * kMiB);
}

TEST(MemoryPlan, ReductionsInFlightAreBoundedByTheEnginesWindow) {
  // Stage 2 with every layer recomputed: the reduce-scatters dominate the backward. The engine
  // keeps kReductionsInFlight = 4 of them (two units' decay and no-decay buffers) besides the
  // unit just reduced, however deep the model.
  base::Config cfg = config();
  cfg.zero.stage = 2;
  cfg.train.activation_checkpointing = "full";
  const PlanOptions o = cpu_options(2);
  auto shallow = plan_memory(llama_units(4), cfg, o);
  auto deep = plan_memory(llama_units(12), cfg, o);
  ASSERT_TRUE(shallow.ok() && deep.ok());
  EXPECT_GT(shallow->device.comm_buffers, 0);
  EXPECT_EQ(deep->device.comm_buffers, shallow->device.comm_buffers);
  // Input (padded) and output (shard) in fp32 per buffer: the head's and two layers' buffers at
  // most, with 2 ranks.
  const int64_t layer = 4 * kHidden * kHidden + 3 * kInter * kHidden + 2 * kHidden;
  const int64_t head = kVocab * kHidden + kHidden;
  EXPECT_LE(shallow->device.comm_buffers, (head + 2 * layer) * (4 + 2));
}

TEST(MemoryPlan, Bf16AllReducesAtStage0KeepEveryCopyUntilTheStep) {
  // Stages 0 and 1 with reduce_dtype = bf16 all-reduce a bf16 copy of each fp32 gradient, and the
  // engine drains none of them before the step: late in the backward most trainable buffers'
  // copies are alive at once.
  base::Config cfg = config();
  cfg.zero.stage = 0;
  cfg.train.micro_batch = 1;  // few activations: the copies make the peak
  cfg.train.global_batch = 2;
  cfg.train.seq_len = 8;
  const MemoryPlan fp32_wire = plan(cfg, 2);
  cfg.zero.reduce_dtype = "bf16";
  const MemoryPlan bf16_wire = plan(cfg, 2);
  EXPECT_EQ(fp32_wire.device.comm_buffers, 0);
  const int64_t layer = 4 * kHidden * kHidden + 3 * kInter * kHidden + 2 * kHidden;
  const int64_t head = kVocab * kHidden + kHidden;
  const int64_t all = 2 * (kVocab * kHidden + kLayers * layer + head);
  EXPECT_GT(bf16_wire.device.comm_buffers, all / 2);
  EXPECT_LE(bf16_wire.device.comm_buffers, all);
  EXPECT_GT(bf16_wire.device.peak, fp32_wire.device.peak);
}

TEST(FitAdvice, EverySuggestedChangeFitsWhenPlannedAgain) {
  base::Config cfg = config();
  const MemoryPlan base = plan(cfg, 1);
  Hardware hw;
  hw.gpu_bytes = base.device.peak - base.device.activations / 4;  // too small by some activations
  const PlanOptions o = cpu_options();
  auto verdict = judge(llama_units(), cfg, o, hw);
  ASSERT_TRUE(verdict.ok()) << verdict.status().to_string();
  EXPECT_FALSE(verdict->fits);
  ASSERT_EQ(verdict->problems.size(), 1u);
  EXPECT_EQ(verdict->problems[0].rfind("gpu memory", 0), 0u) << verdict->problems[0];
  ASSERT_FALSE(verdict->fixes.empty());
  EXPECT_EQ(verdict->fixes[0].description, "train.activation_checkpointing=selective");
  for (const Change& c : verdict->fixes) {
    PlanOptions again = o;
    again.world = c.world;
    auto p = plan_memory(llama_units(), c.config, again);
    ASSERT_TRUE(p.ok());
    EXPECT_TRUE(fit_problems(*p, hw).empty()) << c.description;
  }
  hw.gpu_bytes = base.device.peak;
  auto fits = judge(llama_units(), cfg, o, hw);
  ASSERT_TRUE(fits.ok());
  EXPECT_TRUE(fits->fits);
}

// The suggestion of a given kind among a verdict's faster changes, or null.
const Change* faster_change(const Verdict& v, const std::string& prefix) {
  for (const Change& c : v.faster) {
    if (c.description.rfind(prefix, 0) == 0) return &c;
  }
  return nullptr;
}

TEST(FitAdvice, AnOffloadedRunThatFitsIsToldTheSmallestRatioThatStillFits) {
  base::Config cfg = config();
  cfg.zero.stage = 3;
  cfg.offload.optimizer = "cpu";
  cfg.offload.params = "cpu";
  cfg.offload.ratio = 0.5;
  const MemoryPlan half = plan(cfg, 1);
  Hardware hw;
  hw.gpu_bytes = half.device.peak * 20 / 19 + 20;  // room for half the state and 5% more, not more
  auto verdict = judge(llama_units(), cfg, cpu_options(), hw);
  ASSERT_TRUE(verdict.ok()) << verdict.status().to_string();
  EXPECT_TRUE(verdict->fits);
  EXPECT_EQ(faster_change(*verdict, "offload.ratio"), nullptr);
  cfg.offload.ratio = 1.0;
  verdict = judge(llama_units(), cfg, cpu_options(), hw);
  ASSERT_TRUE(verdict.ok());
  const Change* ratio = faster_change(*verdict, "offload.ratio=0.");
  ASSERT_NE(ratio, nullptr);
  // The same units as ratio 0.5: units are whole, so every ratio from 0.3 to 0.5 takes the last
  // three; 0.25 would take two, which does not fit.
  EXPECT_GT(ratio->config.offload.ratio, 0.25);
  EXPECT_LE(ratio->config.offload.ratio, 0.5 + 1e-9);
  EXPECT_EQ(ratio->plan.device.peak, half.device.peak);
  cfg.offload.optimizer = cfg.offload.params = "none";
  verdict = judge(llama_units(), cfg, cpu_options(), hw);
  ASSERT_TRUE(verdict.ok());
  EXPECT_TRUE(verdict->faster.empty()) << "nothing offloaded or recomputed: nothing to suggest";
}

TEST(FitAdvice, ACheckpointedRunThatFitsIsToldTheFewestRecomputedLayersThatStillFit) {
  base::Config cfg = config();
  cfg.train.activation_checkpointing = "selective";
  cfg.train.recompute_layers = 2;
  const MemoryPlan two = plan(cfg, 1);
  cfg.train.recompute_layers = 1;
  const MemoryPlan one = plan(cfg, 1);
  ASSERT_GT(one.device.peak, two.device.peak) << "each recomputed layer saves memory";
  Hardware hw;
  hw.gpu_bytes = two.device.peak * 20 / 19 + 20;  // two recomputed layers fit, one does not
  cfg.train.activation_checkpointing = "full";
  cfg.train.recompute_layers = -1;
  auto verdict = judge(llama_units(), cfg, cpu_options(), hw);
  ASSERT_TRUE(verdict.ok()) << verdict.status().to_string();
  ASSERT_TRUE(verdict->fits);
  ASSERT_EQ(verdict->faster.size(), 1u);
  EXPECT_EQ(verdict->faster[0].description,
            "train.activation_checkpointing=selective, train.recompute_layers=2");
  EXPECT_EQ(verdict->faster[0].plan.device.peak, two.device.peak);
  // With room for everything, no checkpointing at all.
  hw.gpu_bytes = plan(base::Config(config()), 1).device.peak * 2;
  verdict = judge(llama_units(), cfg, cpu_options(), hw);
  ASSERT_TRUE(verdict.ok());
  ASSERT_EQ(verdict->faster.size(), 1u);
  EXPECT_EQ(verdict->faster[0].description, "train.activation_checkpointing=none");
}

TEST(FitAdvice, HostMemoryIsSharedByTheRanksOfANode) {
  base::Config cfg = config();
  cfg.offload.optimizer = "cpu";
  const MemoryPlan p = plan(cfg, 8);
  Hardware hw;
  hw.host_bytes = p.host.total * 4;  // room for 4 ranks' state
  hw.ranks_per_node = 8;
  std::vector<std::string> problems = fit_problems(p, hw);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].rfind("host memory", 0), 0u) << problems[0];
  hw.ranks_per_node = 4;
  EXPECT_TRUE(fit_problems(p, hw).empty());
}

TEST(FitAdvice, NoSingleChangeFallsBackToCombinedChanges) {
  base::Config cfg = config();
  const MemoryPlan base = plan(cfg, 1);
  Hardware hw;
  hw.gpu_bytes = base.device.peak / 6;  // beyond any one lever on one rank
  auto verdict = judge(llama_units(), cfg, cpu_options(), hw);
  ASSERT_TRUE(verdict.ok());
  EXPECT_FALSE(verdict->fits);
  if (verdict->fixes.empty()) {
    EXPECT_TRUE(verdict->combined_fits);
    EXPECT_FALSE(verdict->combined.empty());
    EXPECT_TRUE(fit_problems(verdict->combined_plan, hw).empty());
  } else {
    EXPECT_TRUE(fit_problems(verdict->fixes[0].plan, hw).empty());
  }
}

}  // namespace
}  // namespace dstrain::sharding
