// The plan's arithmetic and its advice, over a hand-made Llama-shaped schema (the accuracy against
// real allocations is memory_plan_mpi_test.cc).
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "sharding/fit_advice.h"
#include "sharding/memory_plan.h"

namespace dstrain::sharding {
namespace {

constexpr int64_t kVocab = 1024, kHidden = 256, kInter = 704, kLayers = 4;

// A unit with a schema and no forward: the plan reads names and schemas only.
class SchemaUnit final : public base::Unit {
 public:
  SchemaUnit(std::string name, std::vector<base::ParamSpec> schema)
      : name_(std::move(name)), schema_(std::move(schema)) {}
  const std::string& name() const override { return name_; }
  const std::vector<base::ParamSpec>& schema() const override { return schema_; }
  at::Tensor forward(const at::Tensor& x, at::TensorList, const base::StepContext&) const override { return x; }

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

base::UnitList llama_units() {
  base::UnitList units;
  units.push_back(std::make_unique<SchemaUnit>("embed", std::vector<base::ParamSpec>{spec("embed", {kVocab, kHidden})}));
  for (int i = 0; i < kLayers; ++i) {
    const std::string p = "layers." + std::to_string(i) + ".";
    units.push_back(std::make_unique<SchemaUnit>(
        "layers." + std::to_string(i),
        std::vector<base::ParamSpec>{spec(p + "in_norm", {kHidden}, false), spec(p + "q", {kHidden, kHidden}),
                                     spec(p + "k", {kHidden, kHidden}), spec(p + "v", {kHidden, kHidden}),
                                     spec(p + "o", {kHidden, kHidden}), spec(p + "post_norm", {kHidden}, false),
                                     spec(p + "gate", {kInter, kHidden}), spec(p + "up", {kInter, kHidden}),
                                     spec(p + "down", {kHidden, kInter})}));
  }
  units.push_back(std::make_unique<SchemaUnit>(
      "head", std::vector<base::ParamSpec>{spec("norm", {kHidden}, false), spec("lm_head.weight", {kVocab, kHidden})}));
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
  // bf16 parameters, fp32 gradients, fp32 master and two moments: 2 + 4 + 12 bytes a parameter.
  EXPECT_NEAR(static_cast<double>(one.device.persistent), 18.0 * one.parameters, 0.01 * 18 * one.parameters);
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
