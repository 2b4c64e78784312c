// Model properties that need no reference implementation: schemas, tying, deterministic
// initialisation, causality, sliding windows, explicit masks, rope variants, validation.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "base/config.h"
#include "runtime/model/init.h"
#include "runtime/model/layers.h"
#include "runtime/model/llama.h"
#include "runtime/model/rope.h"

namespace dstrain::runtime {
namespace {

using Params = std::vector<std::vector<at::Tensor>>;

base::ModelConfig tiny_config() {
  base::ModelConfig cfg;
  cfg.vocab_size = 50;
  cfg.hidden_size = 32;
  cfg.intermediate_size = 48;
  cfg.num_layers = 2;
  cfg.num_heads = 4;
  cfg.num_kv_heads = 2;
  cfg.head_dim = 12;
  cfg.init_std = 0.1;
  return cfg;
}

Params make_params(const base::UnitList& units, int64_t seed = 7) {
  auto params = make_model_params(units, at::TensorOptions().dtype(at::kFloat), seed);
  EXPECT_TRUE(params.ok()) << params.status().to_string();
  return std::move(params).value();
}

at::Tensor positions(int64_t batch, int64_t seq) {
  return at::arange(seq, at::kLong).unsqueeze(0).expand({batch, seq}).contiguous();
}

at::Tensor logits_of(const base::ModelConfig& cfg, const base::UnitList& units,
                     const Params& params, const at::Tensor& ids) {
  const base::StepContext ctx =
      make_step_context(cfg, positions(ids.size(0), ids.size(1)), at::kFloat);
  return forward_all(units, params, ids, ctx);
}

std::vector<std::string> names_of(const base::Unit& unit) {
  std::vector<std::string> names;
  for (const auto& spec : unit.schema()) names.push_back(spec.name);
  return names;
}

TEST(LlamaSchema, UnitNamesParamNamesAndShapes) {
  base::ModelConfig cfg = tiny_config();
  cfg.attention_bias = true;
  cfg.architecture = "qwen2";
  ASSERT_TRUE(validate_llama_config(cfg).ok());
  const base::UnitList units = build_llama(cfg);
  ASSERT_EQ(units.size(), 4u);
  EXPECT_EQ(units[0]->name(), "embed");
  EXPECT_EQ(units[1]->name(), "layers.0");
  EXPECT_EQ(units[2]->name(), "layers.1");
  EXPECT_EQ(units[3]->name(), "head");

  const std::string p = "model.layers.1.";
  EXPECT_EQ(
      names_of(*units[2]),
      (std::vector<std::string>{p + "input_layernorm.weight", p + "self_attn.q_proj.weight",
                                p + "self_attn.q_proj.bias", p + "self_attn.k_proj.weight",
                                p + "self_attn.k_proj.bias", p + "self_attn.v_proj.weight",
                                p + "self_attn.v_proj.bias", p + "self_attn.o_proj.weight",
                                p + "post_attention_layernorm.weight", p + "mlp.gate_proj.weight",
                                p + "mlp.up_proj.weight", p + "mlp.down_proj.weight"}));
  const auto& s = units[2]->schema();
  EXPECT_EQ(s[1].shape, (std::vector<int64_t>{48, 32}));  // q: heads * head_dim (12) != hidden
  EXPECT_EQ(s[2].shape, (std::vector<int64_t>{48}));
  EXPECT_EQ(s[3].shape, (std::vector<int64_t>{24, 32}));   // k: kv_heads * head_dim
  EXPECT_EQ(s[7].shape, (std::vector<int64_t>{32, 48}));   // o
  EXPECT_EQ(s[9].shape, (std::vector<int64_t>{48, 32}));   // gate
  EXPECT_EQ(s[11].shape, (std::vector<int64_t>{32, 48}));  // down
  for (const auto& spec : s) {
    const bool is_weight_matrix = spec.shape.size() == 2;
    EXPECT_EQ(spec.decay, is_weight_matrix) << spec.name;
    EXPECT_TRUE(spec.trainable) << spec.name;
    EXPECT_TRUE(spec.tied_to.empty()) << spec.name;
    if (is_weight_matrix) {
      EXPECT_EQ(spec.init, base::InitKind::kNormal) << spec.name;
      EXPECT_DOUBLE_EQ(spec.init_std, 0.1) << spec.name;
    }
  }
  EXPECT_EQ(s[0].init, base::InitKind::kOnes);
  EXPECT_EQ(s[2].init, base::InitKind::kZeros);
  EXPECT_EQ(names_of(*units[0]), std::vector<std::string>{"model.embed_tokens.weight"});
  EXPECT_EQ(units[0]->schema()[0].shape, (std::vector<int64_t>{50, 32}));
  EXPECT_EQ(names_of(*units[3]), (std::vector<std::string>{"model.norm.weight", "lm_head.weight"}));
  EXPECT_FALSE(units[3]->schema()[0].decay);
}

TEST(LlamaSchema, BiasesFollowEachArchitecture) {
  base::ModelConfig cfg = tiny_config();
  cfg.attention_bias = true;
  cfg.mlp_bias = true;
  cfg.architecture = "llama";  // LlamaAttention gives o_proj a bias under the same flag
  const auto llama = names_of(*build_llama(cfg)[1]);
  EXPECT_EQ(llama.size(), 16u);
  EXPECT_NE(std::find(llama.begin(), llama.end(), "model.layers.0.self_attn.o_proj.bias"),
            llama.end());
  EXPECT_NE(std::find(llama.begin(), llama.end(), "model.layers.0.mlp.down_proj.bias"),
            llama.end());
  cfg.architecture = "qwen2";
  cfg.mlp_bias = false;
  const auto qwen = names_of(*build_llama(cfg)[1]);
  EXPECT_EQ(qwen.size(), 12u);
  EXPECT_EQ(std::find(qwen.begin(), qwen.end(), "model.layers.0.self_attn.o_proj.bias"),
            qwen.end());
}

TEST(LlamaSchema, TiedHeadSharesTheEmbedding) {
  base::ModelConfig cfg = tiny_config();
  cfg.tie_embeddings = true;
  const base::UnitList units = build_llama(cfg);
  const auto& head = units.back()->schema();
  ASSERT_EQ(head.size(), 2u);
  EXPECT_EQ(head[1].name, "lm_head.weight");
  EXPECT_EQ(head[1].tied_to, "model.embed_tokens.weight");
  EXPECT_EQ(head[1].shape, (std::vector<int64_t>{50, 32}));
  EXPECT_TRUE(build_llama(tiny_config()).back()->schema()[1].tied_to.empty());

  Params params = make_params(units);
  EXPECT_TRUE(params.back()[1].is_same(params[0][0]));
  // Both uses contribute to the one shared gradient.
  for (auto& unit : params)
    for (auto& p : unit)
      if (!p.requires_grad()) p.requires_grad_(true);
  const at::Tensor ids = at::randint(0, cfg.vocab_size, {1, 6}, at::kLong);
  logits_of(cfg, units, params, ids).sum().backward();
  const at::Tensor grad = params[0][0].grad();
  ASSERT_TRUE(grad.defined());
  // The head's contribution reaches rows of tokens never looked up.
  const at::Tensor seen = at::zeros({cfg.vocab_size}, at::kBool).index_fill_(0, ids.view(-1), true);
  EXPECT_GT(grad.index({seen.logical_not()}).abs().sum().item<double>(), 0.0);
}

TEST(LlamaInit, SameSeedAndNameGiveSameValues) {
  const base::ModelConfig cfg = tiny_config();
  const base::UnitList units = build_llama(cfg);
  const Params a = make_params(units, 11);
  const Params b = make_params(units, 11);
  const Params c = make_params(units, 12);
  for (size_t u = 0; u < units.size(); ++u) {
    for (size_t i = 0; i < a[u].size(); ++i) {
      const auto& spec = units[u]->schema()[i];
      EXPECT_TRUE(at::equal(a[u][i], b[u][i])) << spec.name;
      if (spec.init == base::InitKind::kNormal) {
        EXPECT_FALSE(at::equal(a[u][i], c[u][i])) << spec.name;
      }
    }
  }
  // Same shape, different names: different values.
  EXPECT_FALSE(at::equal(a[1][1], a[2][1]));        // layers.0 vs layers.1 q_proj
  EXPECT_TRUE(at::equal(a[1][0], at::ones({32})));  // norm
  const double std = a[0][0].std().item<double>();
  EXPECT_NEAR(std, 0.1, 0.01);
  EXPECT_NEAR(a[0][0].mean().item<double>(), 0.0, 0.01);
}

TEST(LlamaInit, ValuesIndependentOfDtype) {
  base::ModelConfig cfg = tiny_config();
  cfg.attention_bias = true;
  const base::UnitList units = build_llama(cfg);
  const base::Unit& layer = *units[1];
  std::vector<at::Tensor> fp32, bf16;
  for (const auto& spec : layer.schema()) {
    fp32.push_back(at::empty(spec.shape, at::kFloat));
    bf16.push_back(at::empty(spec.shape, at::kBFloat16));
  }
  ASSERT_TRUE(init_unit_params(layer, fp32, 5).ok());
  ASSERT_TRUE(init_unit_params(layer, bf16, 5).ok());
  for (size_t i = 0; i < fp32.size(); ++i) {
    EXPECT_TRUE(at::equal(fp32[i].to(at::kBFloat16), bf16[i])) << layer.schema()[i].name;
  }
  EXPECT_TRUE(at::equal(fp32[2], at::zeros({48})));  // q bias
  // The per-parameter seed is a fixed function (FNV-1a), the same on every platform.
  EXPECT_EQ(param_seed(1234, "model.embed_tokens.weight"), 15842265015090506052ULL);
}

TEST(LlamaInit, RejectsWrongShapesAndCounts) {
  const base::UnitList units = build_llama(tiny_config());
  std::vector<at::Tensor> wrong = {at::empty({50, 31})};
  const base::Status s = init_unit_params(*units[0], wrong, 1);
  EXPECT_EQ(s.code(), base::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("model.embed_tokens.weight"), std::string::npos);
  std::vector<at::Tensor> none;
  EXPECT_EQ(init_unit_params(*units[0], none, 1).code(), base::StatusCode::kInvalidArgument);
}

TEST(LlamaForward, LaterTokensDoNotChangeEarlierLogits) {
  const base::ModelConfig cfg = tiny_config();
  const base::UnitList units = build_llama(cfg);
  const Params params = make_params(units);
  const at::Tensor ids = at::randint(0, cfg.vocab_size, {2, 16}, at::kLong);
  at::Tensor changed = ids.clone();
  changed.select(1, 10).copy_(ids.select(1, 10).add(1).remainder(cfg.vocab_size));
  const at::Tensor a = logits_of(cfg, units, params, ids);
  const at::Tensor b = logits_of(cfg, units, params, changed);
  EXPECT_EQ(a.sizes(), (std::vector<int64_t>{2, 16, 50}));
  EXPECT_TRUE(at::allclose(a.narrow(1, 0, 10), b.narrow(1, 0, 10), 0.0, 1e-6));
  for (int64_t t = 10; t < 16; ++t) {
    EXPECT_GT((a.select(1, t) - b.select(1, t)).abs().max().item<double>(), 1e-4) << t;
  }
}

TEST(LlamaForward, SlidingWindowLimitsTheReach) {
  base::ModelConfig cfg = tiny_config();
  cfg.num_layers = 1;  // one layer: position i sees tokens i-3 .. i
  cfg.sliding_window = 4;
  const base::UnitList units = build_llama(cfg);
  const Params params = make_params(units);
  const at::Tensor ids = at::randint(0, cfg.vocab_size, {1, 16}, at::kLong);
  at::Tensor changed = ids.clone();
  changed.select(1, 2).fill_((ids[0][2].item<int64_t>() + 1) % cfg.vocab_size);
  const at::Tensor a = logits_of(cfg, units, params, ids);
  const at::Tensor b = logits_of(cfg, units, params, changed);
  for (int64_t t = 0; t < 16; ++t) {
    const double diff = (a.select(1, t) - b.select(1, t)).abs().max().item<double>();
    if (t >= 2 && t < 6) {
      EXPECT_GT(diff, 1e-4) << t;
    } else {
      EXPECT_LT(diff, 1e-6) << t;
    }
  }
  // Without the window the change reaches every later position.
  cfg.sliding_window = 0;
  const base::UnitList full = build_llama(cfg);
  const at::Tensor c = logits_of(cfg, full, params, changed);
  const at::Tensor d = logits_of(cfg, full, params, ids);
  EXPECT_GT((c.select(1, 12) - d.select(1, 12)).abs().max().item<double>(), 1e-4);
}

TEST(LlamaForward, SlidingWindowMaskPattern) {
  const at::Tensor m = sliding_window_mask(5, 2, at::kCPU);
  const at::Tensor want = at::tensor({1, 0, 0, 0, 0,  //
                                      1, 1, 0, 0, 0,  //
                                      0, 1, 1, 0, 0,  //
                                      0, 0, 1, 1, 0,  //
                                      0, 0, 0, 1, 1},
                                     at::kLong)
                              .view({5, 5})
                              .to(at::kBool);
  EXPECT_TRUE(at::equal(m, want));
}

TEST(LlamaForward, ExplicitMaskSeparatesPackedDocuments) {
  const base::ModelConfig cfg = tiny_config();
  const base::UnitList units = build_llama(cfg);
  const Params params = make_params(units);
  const int64_t seq = 12, first = 5;
  const at::Tensor ids = at::randint(0, cfg.vocab_size, {1, seq}, at::kLong);

  // A causal mask given explicitly matches the implied one.
  base::StepContext ctx = make_step_context(cfg, positions(1, seq), at::kFloat);
  const at::Tensor implied = forward_all(units, params, ids, ctx);
  ctx.attn_mask = at::ones({seq, seq}, at::kBool).tril().view({1, 1, seq, seq});
  EXPECT_TRUE(at::allclose(forward_all(units, params, ids, ctx), implied, 1e-5, 1e-5));

  // Two documents packed in one row, positions restarting: the second one's logits equal a
  // separate run on it alone.
  at::Tensor mask = at::ones({seq, seq}, at::kBool).tril();
  mask.narrow(0, first, seq - first).narrow(1, 0, first).fill_(false);
  at::Tensor pos =
      at::cat({at::arange(first, at::kLong), at::arange(seq - first, at::kLong)}).view({1, seq});
  base::StepContext packed = make_step_context(cfg, pos, at::kFloat);
  packed.attn_mask = mask.view({1, 1, seq, seq});
  const at::Tensor together = forward_all(units, params, ids, packed);
  const at::Tensor second = ids.narrow(1, first, seq - first).contiguous();
  const at::Tensor alone = logits_of(cfg, units, params, second);
  EXPECT_TRUE(at::allclose(together.narrow(1, first, seq - first), alone, 1e-5, 1e-5));
}

TEST(LlamaForward, ComputeDtypeCarriesThrough) {
  const base::ModelConfig cfg = tiny_config();
  const base::UnitList units = build_llama(cfg);
  auto params = make_model_params(units, at::TensorOptions().dtype(at::kBFloat16), 3);
  ASSERT_TRUE(params.ok());
  const at::Tensor ids = at::randint(0, cfg.vocab_size, {2, 8}, at::kLong);
  const base::StepContext ctx = make_step_context(cfg, positions(2, 8), at::kBFloat16);
  EXPECT_EQ(ctx.rope_cos.scalar_type(), at::kBFloat16);
  EXPECT_EQ(ctx.rope_cos.sizes(), (std::vector<int64_t>{2, 8, 12}));
  const at::Tensor logits = forward_all(units, *params, ids, ctx);
  EXPECT_EQ(logits.scalar_type(), at::kBFloat16);
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{2, 8, 50}));
  EXPECT_TRUE(logits.isfinite().all().item<bool>());
}

TEST(Rope, DefaultStartsAtIdentity) {
  const base::ModelConfig cfg = tiny_config();
  const base::StepContext ctx = make_step_context(cfg, positions(1, 4), at::kFloat);
  EXPECT_TRUE(at::allclose(ctx.rope_cos[0][0], at::ones({12})));
  EXPECT_TRUE(at::allclose(ctx.rope_sin[0][0], at::zeros({12})));
  // The two halves repeat the same frequencies (rotate_half convention).
  EXPECT_TRUE(at::equal(ctx.rope_cos.narrow(-1, 0, 6), ctx.rope_cos.narrow(-1, 6, 6)));
  const auto freq = rope_frequencies(cfg, 4, at::kCPU);
  ASSERT_TRUE(freq.ok());
  EXPECT_NEAR(freq->inv_freq[1].item<double>(), std::pow(10000.0, -2.0 / 12.0), 1e-7);
}

TEST(Rope, Llama3KeepsHighAndScalesLowFrequencies) {
  base::ModelConfig cfg = tiny_config();
  cfg.rope_theta = 500000.0;
  const auto plain = rope_frequencies(cfg, 8, at::kCPU);
  cfg.rope_scaling.type = "llama3";
  cfg.rope_scaling.factor = 8.0;
  cfg.rope_scaling.original_max_position_embeddings = 64;
  const auto scaled = rope_frequencies(cfg, 8, at::kCPU);
  ASSERT_TRUE(plain.ok() && scaled.ok());
  const at::Tensor p = plain->inv_freq, s = scaled->inv_freq;
  int high = 0, low = 0;
  for (int64_t i = 0; i < p.size(0); ++i) {
    const double wavelen = 2 * M_PI / p[i].item<double>();
    if (wavelen < 64.0 / 4.0) {
      EXPECT_EQ(s[i].item<float>(), p[i].item<float>()) << i;
      ++high;
    } else if (wavelen > 64.0) {
      EXPECT_NEAR(s[i].item<double>(), p[i].item<double>() / 8.0, 1e-9) << i;
      ++low;
    }
  }
  EXPECT_GT(high, 0);
  EXPECT_GT(low, 0);
}

TEST(Rope, YarnScalesCosAndSin) {
  base::ModelConfig cfg = tiny_config();
  cfg.rope_scaling.type = "yarn";
  cfg.rope_scaling.factor = 4.0;
  cfg.rope_scaling.original_max_position_embeddings = 32;
  const base::StepContext ctx = make_step_context(cfg, positions(1, 3), at::kFloat);
  EXPECT_NEAR(ctx.rope_cos[0][0][0].item<double>(), 0.1 * std::log(4.0) + 1.0, 1e-6);
}

TEST(Rope, DynamicChangesOnlyBeyondMaxPositions) {
  base::ModelConfig cfg = tiny_config();
  cfg.max_position_embeddings = 16;
  const auto plain = rope_frequencies(cfg, 8, at::kCPU);
  cfg.rope_scaling.type = "dynamic";
  cfg.rope_scaling.factor = 2.0;
  const auto within = rope_frequencies(cfg, 16, at::kCPU);
  const auto beyond = rope_frequencies(cfg, 24, at::kCPU);
  ASSERT_TRUE(plain.ok() && within.ok() && beyond.ok());
  EXPECT_TRUE(at::allclose(within->inv_freq, plain->inv_freq, 1e-6, 0));
  EXPECT_LT(beyond->inv_freq[5].item<double>(), plain->inv_freq[5].item<double>() * 0.99);
  // make_step_context reads the batch's largest position.
  const base::StepContext ctx = make_step_context(cfg, positions(1, 24), at::kFloat);
  const at::Tensor angle = at::atan2(ctx.rope_sin[0][1][5], ctx.rope_cos[0][1][5]);
  EXPECT_NEAR(angle.item<double>(), beyond->inv_freq[5].item<double>(), 1e-6);
}

TEST(LlamaConfig, ValidationNamesTheProblem) {
  base::ModelConfig cfg = tiny_config();
  EXPECT_TRUE(validate_llama_config(cfg).ok());
  cfg.num_kv_heads = 3;
  base::Status s = validate_llama_config(cfg);
  EXPECT_EQ(s.code(), base::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("num_kv_heads (3)"), std::string::npos) << s.message();

  cfg = tiny_config();
  cfg.head_dim = 7;
  EXPECT_EQ(validate_llama_config(cfg).code(), base::StatusCode::kInvalidArgument);
  cfg = tiny_config();
  cfg.rope_scaling.type = "longrope";
  s = validate_llama_config(cfg);
  EXPECT_NE(s.message().find("longrope"), std::string::npos) << s.message();
  EXPECT_FALSE(rope_frequencies(cfg, 4, at::kCPU).ok());
  cfg = tiny_config();
  cfg.architecture = "gpt2";
  EXPECT_EQ(validate_llama_config(cfg).code(), base::StatusCode::kInvalidArgument);
  cfg = tiny_config();
  cfg.head_dim = 0;
  cfg.hidden_size = 30;
  EXPECT_EQ(validate_llama_config(cfg).code(), base::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace dstrain::runtime
