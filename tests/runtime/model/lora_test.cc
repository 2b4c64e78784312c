#include "runtime/model/lora.h"

#include <gtest/gtest.h>

#include <cmath>

#include "runtime/model/init.h"
#include "runtime/model/llama.h"
#include "runtime/model/rope.h"

namespace dstrain::runtime {
namespace {

base::ModelConfig tiny() {
  base::ModelConfig cfg;
  cfg.vocab_size = 40;
  cfg.hidden_size = 32;
  cfg.intermediate_size = 48;
  cfg.num_layers = 2;
  cfg.num_heads = 4;
  cfg.num_kv_heads = 2;
  return cfg;
}

base::LoraConfig lora(std::vector<std::string> targets, double dropout = 0.0) {
  base::LoraConfig l;
  l.enabled = true;
  l.rank = 4;
  l.alpha = 8;
  l.dropout = dropout;
  l.targets = std::move(targets);
  return l;
}

TEST(Lora, FreezesTheBaseAndAddsPeftNamedAdapters) {
  base::UnitList units = build_llama(tiny());
  ASSERT_TRUE(apply_lora(units, lora({"q", "down"})).ok());
  int adapters = 0;
  for (const auto& unit : units) {
    for (const base::ParamSpec& spec : unit->schema()) {
      const bool is_adapter = spec.name.find(".lora_") != std::string::npos;
      EXPECT_EQ(spec.trainable, is_adapter) << spec.name;
      if (!is_adapter) continue;
      ++adapters;
      if (spec.name.find("lora_A") != std::string::npos) {
        EXPECT_EQ(spec.shape[0], 4);
        EXPECT_EQ(spec.init, base::InitKind::kKaimingUniform);
      } else {
        EXPECT_EQ(spec.shape[1], 4);
        EXPECT_EQ(spec.init, base::InitKind::kZeros);
      }
    }
  }
  EXPECT_EQ(adapters, 2 * 2 * 2);  // 2 layers x 2 projections x (A, B)
  EXPECT_EQ(units[1]->schema().back().name, "model.layers.0.mlp.down_proj.lora_B.weight");
}

TEST(Lora, ScaleAndTargets) {
  auto l = lora({"all-linear"});
  EXPECT_DOUBLE_EQ(lora_scale(l), 2.0);
  l.rslora = true;
  EXPECT_DOUBLE_EQ(lora_scale(l), 4.0);
  EXPECT_EQ(lora_target_list(l).size(), 7u);
  base::UnitList units = build_llama(tiny());
  auto bad = lora({"q"});
  bad.rank = 0;
  EXPECT_EQ(apply_lora(units, bad).code(), base::StatusCode::kInvalidArgument);
  base::UnitList more = build_llama(tiny());
  EXPECT_EQ(apply_lora(more, lora({})).code(), base::StatusCode::kInvalidArgument);
}

TEST(Lora, FreshAdaptersLeaveTheModelUnchanged) {
  const base::ModelConfig cfg = tiny();
  base::UnitList plain = build_llama(cfg);
  base::UnitList adapted = build_llama(cfg);
  ASSERT_TRUE(apply_lora(adapted, lora({"all-linear"})).ok());
  auto p = make_model_params(plain, at::kFloat, 7);
  auto q = make_model_params(adapted, at::kFloat, 7);
  ASSERT_TRUE(p.ok() && q.ok());
  const at::Tensor ids = at::randint(0, cfg.vocab_size, {2, 8}, at::kLong);
  const base::StepContext ctx =
      make_step_context(cfg, at::arange(8).unsqueeze(0).expand({2, 8}), at::kFloat);
  EXPECT_TRUE(at::allclose(forward_all(plain, *p, ids, ctx), forward_all(adapted, *q, ids, ctx)));
}

TEST(Lora, DropoutIsKeyedBySampleAndOffInEvaluation) {
  const base::ModelConfig cfg = tiny();
  base::UnitList units = build_llama(cfg);
  ASSERT_TRUE(apply_lora(units, lora({"q", "v", "up"}, 0.5)).ok());
  auto params = make_model_params(units, at::kFloat, 3);
  ASSERT_TRUE(params.ok());
  // Non-zero B so that the adapters (and their dropout) show in the output.
  for (auto& unit_params : *params) {
    for (auto& t : unit_params) {
      if (t.dim() == 2 && t.size(1) == 4) t.normal_(0.0, 0.5);
    }
  }
  const at::Tensor ids = at::randint(0, cfg.vocab_size, {2, 8}, at::kLong);
  base::StepContext ctx =
      make_step_context(cfg, at::arange(8).unsqueeze(0).expand({2, 8}), at::kFloat);
  const at::Tensor eval = forward_all(units, *params, ids, ctx);
  ctx.training = true;
  ctx.sample_keys = at::tensor({int64_t{11}, int64_t{12}}, at::kLong);
  const at::Tensor a = forward_all(units, *params, ids, ctx);
  const at::Tensor b = forward_all(units, *params, ids, ctx);
  EXPECT_TRUE(at::equal(a, b));         // replayable: recomputation sees the same masks
  EXPECT_FALSE(at::allclose(a, eval));  // and they do drop something
  // A row's mask depends on its own key only: the same sample alone gives the same row.
  base::StepContext one = make_step_context(cfg, at::arange(8).unsqueeze(0), at::kFloat);
  one.training = true;
  one.sample_keys = at::tensor({int64_t{12}}, at::kLong);
  const at::Tensor row = forward_all(units, *params, ids.narrow(0, 1, 1), one);
  EXPECT_TRUE(at::allclose(row, a.narrow(0, 1, 1), 1e-5, 1e-6));
}

}  // namespace
}  // namespace dstrain::runtime
