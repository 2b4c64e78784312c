#include "runtime/model/llama.h"

#include <memory>
#include <string>
#include <utility>

#include "runtime/model/layers.h"
#include "runtime/model/rope.h"

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

class EmbedUnit final : public base::Unit {
 public:
  explicit EmbedUnit(const base::ModelConfig& cfg) {
    schema_.push_back(weight_spec(kEmbedName, {cfg.vocab_size, cfg.hidden_size}, cfg.init_std));
  }
  const std::string& name() const override { return name_; }
  const std::vector<base::ParamSpec>& schema() const override { return schema_; }
  at::Tensor forward(const at::Tensor& x, at::TensorList params,
                     const base::StepContext& /*ctx*/) const override {
    return at::embedding(params[0], x);
  }

 private:
  std::string name_ = "embed";
  std::vector<base::ParamSpec> schema_;
};

// Positions of a decoder layer's parameters in its schema; kAbsent for missing biases.
struct LayerSlots {
  int input_norm = kAbsent, q = kAbsent, q_bias = kAbsent, k = kAbsent, k_bias = kAbsent;
  int v = kAbsent, v_bias = kAbsent, o = kAbsent, o_bias = kAbsent, post_norm = kAbsent;
  int gate = kAbsent, gate_bias = kAbsent, up = kAbsent, up_bias = kAbsent, down = kAbsent;
  int down_bias = kAbsent;
};

class DecoderLayerUnit final : public base::Unit {
 public:
  DecoderLayerUnit(const base::ModelConfig& cfg, int64_t index)
      : name_("layers." + std::to_string(index)), eps_(cfg.rms_norm_eps) {
    shape_.num_heads = cfg.num_heads;
    shape_.num_kv_heads = cfg.num_kv_heads;
    shape_.head_dim = cfg.resolved_head_dim();
    shape_.sliding_window = cfg.sliding_window;
    const std::string prefix = "model.layers." + std::to_string(index) + ".";
    const int64_t h = cfg.hidden_size;
    const int64_t q_out = cfg.num_heads * shape_.head_dim;
    const int64_t kv_out = cfg.num_kv_heads * shape_.head_dim;
    const int64_t inter = cfg.intermediate_size;
    const bool o_bias = cfg.attention_bias && cfg.architecture == "llama";

    auto add = [&](base::ParamSpec spec) {
      schema_.push_back(std::move(spec));
      return static_cast<int>(schema_.size()) - 1;
    };
    auto add_linear = [&](const std::string& name, int64_t out, int64_t in, bool bias,
                          int* weight_slot, int* bias_slot) {
      *weight_slot = add(weight_spec(prefix + name + ".weight", {out, in}, cfg.init_std));
      if (bias) *bias_slot = add(bias_spec(prefix + name + ".bias", out));
    };
    slots_.input_norm = add(norm_spec(prefix + "input_layernorm.weight", h));
    add_linear("self_attn.q_proj", q_out, h, cfg.attention_bias, &slots_.q, &slots_.q_bias);
    add_linear("self_attn.k_proj", kv_out, h, cfg.attention_bias, &slots_.k, &slots_.k_bias);
    add_linear("self_attn.v_proj", kv_out, h, cfg.attention_bias, &slots_.v, &slots_.v_bias);
    add_linear("self_attn.o_proj", h, q_out, o_bias, &slots_.o, &slots_.o_bias);
    slots_.post_norm = add(norm_spec(prefix + "post_attention_layernorm.weight", h));
    add_linear("mlp.gate_proj", inter, h, cfg.mlp_bias, &slots_.gate, &slots_.gate_bias);
    add_linear("mlp.up_proj", inter, h, cfg.mlp_bias, &slots_.up, &slots_.up_bias);
    add_linear("mlp.down_proj", h, inter, cfg.mlp_bias, &slots_.down, &slots_.down_bias);
  }

  const std::string& name() const override { return name_; }
  const std::vector<base::ParamSpec>& schema() const override { return schema_; }

  at::Tensor forward(const at::Tensor& x, at::TensorList params,
                     const base::StepContext& ctx) const override {
    AttentionWeights attn;
    attn.q = params[slots_.q];
    attn.k = params[slots_.k];
    attn.v = params[slots_.v];
    attn.o = params[slots_.o];
    attn.q_bias = slot(params, slots_.q_bias);
    attn.k_bias = slot(params, slots_.k_bias);
    attn.v_bias = slot(params, slots_.v_bias);
    attn.o_bias = slot(params, slots_.o_bias);
    MlpWeights mlp;
    mlp.gate = params[slots_.gate];
    mlp.up = params[slots_.up];
    mlp.down = params[slots_.down];
    mlp.gate_bias = slot(params, slots_.gate_bias);
    mlp.up_bias = slot(params, slots_.up_bias);
    mlp.down_bias = slot(params, slots_.down_bias);

    const at::Tensor h =
        x + attention(rms_norm(x, params[slots_.input_norm], eps_), attn, shape_, ctx.rope_cos,
                      ctx.rope_sin, ctx.attn_mask);
    return h + swiglu_mlp(rms_norm(h, params[slots_.post_norm], eps_), mlp);
  }

 private:
  std::string name_;
  double eps_;
  AttentionShape shape_;
  LayerSlots slots_;
  std::vector<base::ParamSpec> schema_;
};

class HeadUnit final : public base::Unit {
 public:
  explicit HeadUnit(const base::ModelConfig& cfg) : eps_(cfg.rms_norm_eps) {
    schema_.push_back(norm_spec("model.norm.weight", cfg.hidden_size));
    base::ParamSpec head =
        weight_spec("lm_head.weight", {cfg.vocab_size, cfg.hidden_size}, cfg.init_std);
    if (cfg.tie_embeddings) head.tied_to = kEmbedName;
    schema_.push_back(std::move(head));
  }
  const std::string& name() const override { return name_; }
  const std::vector<base::ParamSpec>& schema() const override { return schema_; }
  at::Tensor forward(const at::Tensor& x, at::TensorList params,
                     const base::StepContext& /*ctx*/) const override {
    return at::linear(rms_norm(x, params[kNormSlot], eps_), params[kLmHeadSlot]);
  }

 private:
  static constexpr int kNormSlot = 0;
  static constexpr int kLmHeadSlot = 1;
  std::string name_ = "head";
  double eps_;
  std::vector<base::ParamSpec> schema_;
};

base::Status positive(const char* key, int64_t value) {
  if (value > 0) return base::Status::Ok();
  return base::Status::InvalidArgument(std::string("model.") + key + " must be > 0, got " +
                                       std::to_string(value));
}

}  // namespace

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
    return base::Status::InvalidArgument(
        "model.num_heads (" + std::to_string(cfg.num_heads) +
        ") must be a multiple of model.num_kv_heads (" + std::to_string(cfg.num_kv_heads) + ")");
  }
  if (cfg.head_dim < 0) {
    return base::Status::InvalidArgument("model.head_dim must be >= 0 (0: hidden/heads), got " +
                                         std::to_string(cfg.head_dim));
  }
  if (cfg.head_dim == 0 && cfg.hidden_size % cfg.num_heads != 0) {
    return base::Status::InvalidArgument(
        "model.hidden_size (" + std::to_string(cfg.hidden_size) +
        ") must be a multiple of model.num_heads (" + std::to_string(cfg.num_heads) +
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
