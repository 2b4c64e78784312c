#pragma once
// The Llama-family decoder (Llama, Qwen2, Mistral and the DeepSeek distills built on them) as a
// sequence of units: "embed", "layers.0" .. "layers.{L-1}", "head". Parameter names are Hugging
// Face's, so checkpoints map one to one.
#include <ATen/ATen.h>

#include <string>
#include <utility>
#include <vector>

#include "base/config.h"
#include "base/status.h"
#include "base/unit.h"

namespace dstrain::runtime {

// Base of the Llama-family units; carries the hooks LoRA (runtime/model/lora.h) applies to a
// built model.
class LlamaUnit : public base::Unit {
 public:
  const std::string& name() const override { return name_; }
  const std::vector<base::ParamSpec>& schema() const override { return schema_; }
  // Marks every parameter declared so far frozen: no gradient, no optimizer state.
  void freeze();
  // Adds low-rank adapters (lora_A [r, in] Kaiming-uniform, lora_B [out, r] zeros, trainable) to
  // the projections named in `targets` ("q", "k", "v", "o", "gate", "up", "down") that this unit
  // has; returns how many it added.
  virtual int add_lora(const std::vector<std::string>& targets, int64_t rank, double scale,
                       double dropout) {
    return 0;
  }

 protected:
  explicit LlamaUnit(std::string name) : name_(std::move(name)) {}
  int add(base::ParamSpec spec);  // returns its schema index

  std::string name_;
  std::vector<base::ParamSpec> schema_;
};

// Checks what build_llama and make_step_context rely on (divisible heads, even head_dim, a known
// architecture and rope type, ...); errors name the offending values.
base::Status validate_llama_config(const base::ModelConfig& cfg);

// Units in execution order. Biases follow HF: q/k/v biases when attention_bias (plus o_proj's
// for architecture "llama", whose o_proj shares the flag; Qwen2 and Mistral have none), all MLP
// biases when mlp_bias. With tie_embeddings the head's "lm_head.weight" entry is tied to
// "model.embed_tokens.weight" and receives the embedding weight in its slot.
// Precondition: validate_llama_config(cfg) is ok.
base::UnitList build_llama(const base::ModelConfig& cfg);

// Runs every unit in order: token ids [B, T] -> logits [B, T, V]. params[i] follows
// units[i]->schema() (tied slots hold their owner's tensor).
at::Tensor forward_all(const base::UnitList& units,
                       const std::vector<std::vector<at::Tensor>>& params, const at::Tensor& ids,
                       const base::StepContext& ctx);

}  // namespace dstrain::runtime
