#pragma once
// Bytes the model's forward keeps for backward, per unit and micro-batch, as arithmetic over the
// model's shape (no tensor is made): the plan's account of activations (docs/plan.md). Each term
// names the tensor of runtime/model/ (layers.cc, llama.cc, fused_cross_entropy.cc) that autograd
// saves, and a tensor is counted only where its producer or consumer needs a gradient, because
// autograd saves nothing else: a LoRA layer keeps much less than a fully trained one.
//
// Torch-free: plain integers over base::ModelConfig.
#include <cstdint>
#include <string>
#include <vector>

#include "base/config.h"

namespace dstrain::sharding {

struct ActivationShape {
  int64_t batch = 1;  // sequences per micro-batch
  int64_t seq = 1;
  int64_t hidden = 0;
  int64_t inter = 0;
  int64_t vocab = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t dtype_bytes = 4;  // the compute dtype
  // CUDA: rms_norm is one fused kernel that keeps its input and the fp32 rstd; elsewhere the
  // composite keeps an fp32 copy of its input and, for the weight's gradient, the fp32 normalised
  // input.
  bool cuda = false;
  // LoRA: every base weight frozen; adapters of `lora_rank` on the projections in `lora_targets`
  // ("q" "k" "v" "o" "gate" "up" "down").
  bool lora = false;
  int64_t lora_rank = 0;
  std::vector<std::string> lora_targets;
  bool lora_dropout = false;
};

ActivationShape activation_shape(const base::ModelConfig& model, const base::TrainConfig& train,
                                 const base::LoraConfig& lora, bool cuda);

// What one unit keeps between its forward and its backward, beyond its input (the previous
// unit's output) and its own output.
struct UnitActivations {
  int64_t saved = 0;        // kept for backward when the unit is not recomputed
  int64_t output = 0;       // the unit's output (the next unit's input)
  int64_t forward_ws = 0;   // transient during its forward (the head's loss chunk)
  int64_t backward_ws = 0;  // transient during its backward: gradients of its activations
};

// `input_grad`: the unit's input requires a gradient (an earlier unit trains, or the unit's ops
// write weight gradients into sinks). `sinks`: they do (train.fused_weight_grad, base/grad_sink.h).
UnitActivations embed_activations(const ActivationShape& s);
UnitActivations layer_activations(const ActivationShape& s, bool input_grad, bool sinks);
// The head with the fused linear cross-entropy (the loss and its gradients formed chunk by chunk
// in the forward). `head_trainable`: lm_head.weight needs a gradient.
UnitActivations head_activations(const ActivationShape& s, bool input_grad, bool head_trainable,
                                 bool sinks);

}  // namespace dstrain::sharding
