#include "runtime/model/llama.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <memory>
#include <string>
#include <utility>

#include "runtime/model/fused_cross_entropy.h"
#include "runtime/model/init.h"
#include "runtime/model/layers.h"
#include "runtime/model/rope.h"
#include "runtime/model/sink_linear.h"

namespace dstrain::runtime {
namespace {

constexpr int kAbsent = -1;
const char kEmbedName[] = "model.embed_tokens.weight";

base::ParamSpec weight_spec(std::string name, std::vector<int64_t> shape, double std) {
  base::ParamSpec p;
  p.name = std::move(name);
  p.shape = std::move(shape);
  p.init = base::InitKind::kNormal;
  p.init_std = std;
  return p;
}

// A matrix multiplied by the layer input: its ops can write its gradient into a sink.
base::ParamSpec matrix_spec(std::string name, std::vector<int64_t> shape, double std) {
  base::ParamSpec p = weight_spec(std::move(name), std::move(shape), std);
  p.grad_sink = true;
  return p;
}

// Norm weights (ones) and biases (zeros): 1-D, no weight decay.
base::ParamSpec vector_spec(std::string name, int64_t size, base::InitKind init) {
  base::ParamSpec p;
  p.name = std::move(name);
  p.shape = {size};
  p.init = init;
  p.decay = false;
  return p;
}

base::ParamSpec norm_spec(std::string name, int64_t size) {
  return vector_spec(std::move(name), size, base::InitKind::kOnes);
}

base::ParamSpec bias_spec(std::string name, int64_t size) {
  return vector_spec(std::move(name), size, base::InitKind::kZeros);
}

// A tensor from `params`, or an undefined one for an absent optional slot.
at::Tensor slot(at::TensorList params, int index) {
  return index == kAbsent ? at::Tensor() : params[index];
}

class EmbedUnit final : public LlamaUnit {
 public:
  explicit EmbedUnit(const base::ModelConfig& cfg) : LlamaUnit("embed") {
    add(weight_spec(kEmbedName, {cfg.vocab_size, cfg.hidden_size}, cfg.init_std));
  }
  at::Tensor forward(const at::Tensor& x, at::TensorList params, const base::GradSinks& /*sinks*/,
                     const base::StepContext& /*ctx*/) const override {
    return at::embedding(params[0], x);
  }
};

// The seven projections of a decoder layer, in schema order.
enum Proj { kQ, kK, kV, kO, kGate, kUp, kDown, kNumProj };
constexpr const char* kProjName[kNumProj] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
constexpr const char* kProjTarget[kNumProj] = {"q", "k", "v", "o", "gate", "up", "down"};

// Where one projection's tensors sit in the layer's schema (kAbsent when it has none).
struct ProjSlots {
  int64_t in = 0;
  int64_t out = 0;
  int weight = kAbsent;
  int bias = kAbsent;
  int lora_a = kAbsent;
  int lora_b = kAbsent;
  double lora_scale = 0.0;
};

// Dropout masks [B, T, in] scaled by 1 / (1 - p) for an adapter's input; `x` is the layer's
// input (batch, length, device, dtype). Each row's mask comes from a generator keyed by the row's
// sample key and the adapter's name, so recomputation and any world size replay it.
at::Tensor lora_dropout_mask(const at::Tensor& x, int64_t in, double p,
                             const base::StepContext& ctx, const std::string& name) {
  const int64_t rows = ctx.sample_keys.size(0);
  const int64_t* keys = ctx.sample_keys.data_ptr<int64_t>();
  const auto cpu = at::TensorOptions().dtype(at::kFloat);
  std::vector<at::Tensor> masks;
  for (int64_t r = 0; r < rows; ++r) {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(param_seed(keys[r], name));
    masks.push_back(at::empty({x.size(1), in}, cpu).bernoulli_(1.0 - p, gen));
  }
  return (at::stack(masks) / (1.0 - p)).to(x.device(), x.scalar_type());
}

class DecoderLayerUnit final : public LlamaUnit {
 public:
  DecoderLayerUnit(const base::ModelConfig& cfg, int64_t index)
      : LlamaUnit("layers." + std::to_string(index)),
        prefix_("model.layers." + std::to_string(index) + "."),
        eps_(cfg.rms_norm_eps) {
    shape_.num_heads = cfg.num_heads;
    shape_.num_kv_heads = cfg.num_kv_heads;
    shape_.head_dim = cfg.resolved_head_dim();
    shape_.sliding_window = cfg.sliding_window;
    const int64_t h = cfg.hidden_size;
    const int64_t q_out = cfg.num_heads * shape_.head_dim;
    const int64_t kv_out = cfg.num_kv_heads * shape_.head_dim;
    const int64_t inter = cfg.intermediate_size;
    const bool o_bias = cfg.attention_bias && cfg.architecture == "llama";
    const int64_t dims[kNumProj][2] = {{q_out, h}, {kv_out, h}, {kv_out, h}, {h, q_out},
                                       {inter, h}, {inter, h},  {h, inter}};
    const bool bias[kNumProj] = {cfg.attention_bias, cfg.attention_bias, cfg.attention_bias, o_bias,
                                 cfg.mlp_bias,       cfg.mlp_bias,       cfg.mlp_bias};
    auto add_linear = [&](Proj p) {
      ProjSlots& s = proj_[p];
      s.out = dims[p][0];
      s.in = dims[p][1];
      s.weight = add(matrix_spec(prefix_ + kProjName[p] + ".weight", {s.out, s.in}, cfg.init_std));
      if (bias[p]) s.bias = add(bias_spec(prefix_ + kProjName[p] + ".bias", s.out));
    };
    input_norm_ = add(norm_spec(prefix_ + "input_layernorm.weight", h));
    for (Proj p : {kQ, kK, kV, kO}) add_linear(p);
    post_norm_ = add(norm_spec(prefix_ + "post_attention_layernorm.weight", h));
    for (Proj p : {kGate, kUp, kDown}) add_linear(p);
  }

  int add_lora(const std::vector<std::string>& targets, int64_t rank, double scale,
               double dropout) override {
    lora_dropout_ = dropout;
    int added = 0;
    for (int p = 0; p < kNumProj; ++p) {
      if (std::find(targets.begin(), targets.end(), kProjTarget[p]) == targets.end()) continue;
      ProjSlots& s = proj_[p];
      base::ParamSpec a;
      a.name = prefix_ + kProjName[p] + ".lora_A.weight";
      a.shape = {rank, s.in};
      a.init = base::InitKind::kKaimingUniform;
      base::ParamSpec b;
      b.name = prefix_ + kProjName[p] + ".lora_B.weight";
      b.shape = {s.out, rank};
      b.init = base::InitKind::kZeros;
      s.lora_a = add(std::move(a));
      s.lora_b = add(std::move(b));
      s.lora_scale = scale;
      ++added;
    }
    return added;
  }

  at::Tensor forward(const at::Tensor& x, at::TensorList params, const base::GradSinks& sinks,
                     const base::StepContext& ctx) const override {
    auto w = [&](Proj p) { return weights(p, params, sinks, x, ctx); };
    const AttentionWeights attn{w(kQ), w(kK), w(kV), w(kO)};
    const MlpWeights mlp{w(kGate), w(kUp), w(kDown)};
    const at::Tensor h = x + attention(rms_norm(x, params[input_norm_], eps_), attn, shape_, ctx);
    return h + swiglu_mlp(rms_norm(h, params[post_norm_], eps_), mlp);
  }

 private:
  // The projection's tensors; `x` (the layer input) only shapes its dropout mask.
  LinearWeights weights(Proj p, at::TensorList params, const base::GradSinks& sinks,
                        const at::Tensor& x, const base::StepContext& ctx) const {
    const ProjSlots& s = proj_[p];
    LinearWeights w;
    w.weight = params[s.weight];
    w.bias = slot(params, s.bias);
    if (!sinks.empty()) w.sink = sinks[s.weight];
    if (s.lora_a == kAbsent) return w;
    w.lora.a = params[s.lora_a];
    w.lora.b = params[s.lora_b];
    w.lora.scale = s.lora_scale;
    if (lora_dropout_ > 0.0 && ctx.training && ctx.sample_keys.defined()) {
      w.lora.dropout_mask = lora_dropout_mask(x, s.in, lora_dropout_, ctx, schema_[s.lora_a].name);
    }
    return w;
  }

  std::string prefix_;
  double eps_;
  AttentionShape shape_;
  int input_norm_ = kAbsent;
  int post_norm_ = kAbsent;
  ProjSlots proj_[kNumProj];
  double lora_dropout_ = 0.0;
};

class HeadUnit final : public LlamaUnit {
 public:
  explicit HeadUnit(const base::ModelConfig& cfg)
      : LlamaUnit("head"),
        eps_(cfg.rms_norm_eps),
        chunk_tokens_(cross_entropy_chunk_tokens(cfg.vocab_size)) {
    add(norm_spec("model.norm.weight", cfg.hidden_size));
    base::ParamSpec head =
        matrix_spec("lm_head.weight", {cfg.vocab_size, cfg.hidden_size}, cfg.init_std);
    if (cfg.tie_embeddings) head.tied_to = kEmbedName;
    add(std::move(head));
  }
  at::Tensor forward(const at::Tensor& x, at::TensorList params, const base::GradSinks& sinks,
                     const base::StepContext& ctx) const override {
    const at::Tensor h = rms_norm(x, params[kNormSlot], eps_);
    const base::GradSink sink = sinks.empty() ? base::GradSink() : sinks[kLmHeadSlot];
    if (!ctx.targets.defined()) {
      return sink.defined() ? sink_linear(h, params[kLmHeadSlot], at::Tensor(), sink)
                            : at::linear(h, params[kLmHeadSlot]);
    }
    return fused_linear_cross_entropy(h, params[kLmHeadSlot], ctx.targets, chunk_tokens_, sink);
  }

 private:
  static constexpr int kNormSlot = 0;
  static constexpr int kLmHeadSlot = 1;
  double eps_;
  int64_t chunk_tokens_;
};

base::Status positive(const char* key, int64_t value) {
  if (value > 0) return base::Status::Ok();
  return base::Status::InvalidArgument(std::string("model.") + key + " must be > 0, got " +
                                       std::to_string(value));
}

}  // namespace

void LlamaUnit::freeze() {
  for (base::ParamSpec& spec : schema_) spec.trainable = false;
}

int LlamaUnit::add(base::ParamSpec spec) {
  schema_.push_back(std::move(spec));
  return static_cast<int>(schema_.size()) - 1;
}

base::Status validate_llama_config(const base::ModelConfig& cfg) {
  const std::string& arch = cfg.architecture;
  if (arch != "llama" && arch != "qwen2" && arch != "mistral") {
    return base::Status::InvalidArgument("model.architecture: unknown '" + arch +
                                         "' (llama|qwen2|mistral)");
  }
  RETURN_IF_ERROR(positive("vocab_size", cfg.vocab_size));
  RETURN_IF_ERROR(positive("hidden_size", cfg.hidden_size));
  RETURN_IF_ERROR(positive("intermediate_size", cfg.intermediate_size));
  RETURN_IF_ERROR(positive("num_layers", cfg.num_layers));
  RETURN_IF_ERROR(positive("num_heads", cfg.num_heads));
  RETURN_IF_ERROR(positive("num_kv_heads", cfg.num_kv_heads));
  if (cfg.num_heads % cfg.num_kv_heads != 0) {
    return base::Status::InvalidArgument("model.num_heads (" + std::to_string(cfg.num_heads) +
                                         ") must be a multiple of model.num_kv_heads (" +
                                         std::to_string(cfg.num_kv_heads) + ")");
  }
  if (cfg.head_dim < 0) {
    return base::Status::InvalidArgument("model.head_dim must be >= 0 (0: hidden/heads), got " +
                                         std::to_string(cfg.head_dim));
  }
  if (cfg.head_dim == 0 && cfg.hidden_size % cfg.num_heads != 0) {
    return base::Status::InvalidArgument("model.hidden_size (" + std::to_string(cfg.hidden_size) +
                                         ") must be a multiple of model.num_heads (" +
                                         std::to_string(cfg.num_heads) +
                                         ") when model.head_dim is 0");
  }
  const int64_t head_dim = cfg.resolved_head_dim();
  if (head_dim % 2 != 0) {
    return base::Status::InvalidArgument("head_dim must be even for rotary embeddings, got " +
                                         std::to_string(head_dim));
  }
  if (!(cfg.rms_norm_eps > 0.0)) {
    return base::Status::InvalidArgument("model.rms_norm_eps must be > 0");
  }
  if (cfg.sliding_window < 0) {
    return base::Status::InvalidArgument("model.sliding_window must be >= 0 (0: none), got " +
                                         std::to_string(cfg.sliding_window));
  }
  if (!(cfg.init_std > 0.0)) {
    return base::Status::InvalidArgument("model.init_std must be > 0");
  }
  return validate_rope_config(cfg);
}

base::UnitList build_llama(const base::ModelConfig& cfg) {
  base::UnitList units;
  units.reserve(static_cast<size_t>(cfg.num_layers) + 2);
  units.push_back(std::make_unique<EmbedUnit>(cfg));
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    units.push_back(std::make_unique<DecoderLayerUnit>(cfg, i));
  }
  units.push_back(std::make_unique<HeadUnit>(cfg));
  return units;
}

at::Tensor forward_all(const base::UnitList& units,
                       const std::vector<std::vector<at::Tensor>>& params, const at::Tensor& ids,
                       const base::StepContext& ctx) {
  at::Tensor x = ids;
  for (size_t i = 0; i < units.size(); ++i) x = units[i]->forward(x, params[i], ctx);
  return x;
}

}  // namespace dstrain::runtime
