#pragma once
// The unit interface: the contract between the model (runtime/) and the engine (sharding/).
// A model is a sequence of units (embedding, each decoder block, final norm + LM head). A unit
// declares a parameter schema and a forward function over parameter tensors it is handed; it
// owns no storage and knows nothing of sharding, offload or LoRA.
#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "base/grad_sink.h"

namespace dstrain::base {

enum class InitKind { kNormal, kZeros, kOnes, kKaimingUniform };

struct ParamSpec {
  std::string name;  // full Hugging Face name, e.g. "model.layers.0.mlp.up_proj.weight"
  std::vector<int64_t> shape;
  InitKind init = InitKind::kNormal;
  double init_std = 0.02;  // for kNormal
  bool decay = true;       // weight decay applies (false for norms and biases)
  bool trainable = true;   // false: frozen (LoRA base), no gradient, no optimizer state
  std::string tied_to;     // non-empty: this parameter shares storage with the named one,
                           // owned by an earlier unit (tied embedding / LM head)
  bool grad_sink = false;  // the unit's forward can deliver this parameter's gradient into a
                           // GradSink (base/grad_sink.h) instead of through autograd
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

// Per-batch inputs shared by all units of one forward. Built once per micro-batch by the model.
struct StepContext {
  at::Tensor position_ids;  // [B, T] int64
  at::Tensor rope_cos;      // [B, T, head_dim] in the compute dtype
  at::Tensor rope_sin;      // [B, T, head_dim]
  at::Tensor attn_mask;     // undefined: causal (+ sliding window) mask is implied;
                            // defined: boolean [B, 1, T, T], true = attend (packed documents)
  // Packed documents again, for variable-length (flash) attention over the B * T slots laid end
  // to end: document d is slots [cu_seqlens[d], cu_seqlens[d + 1]), int32 on the activations'
  // device; max_seqlen is the longest. Defined for every packed batch; attention takes the
  // variable-length path where it serves (CUDA, bf16/fp16) and the mask elsewhere, so attn_mask
  // may be left undefined only where the variable-length path serves.
  at::Tensor cu_seqlens;
  int64_t max_seqlen = 0;
  // Randomness (LoRA dropout) is keyed per sample, never per rank, so any world size and any
  // recomputation replays it: sample_keys [B] int64 on the CPU, one key per row, derived from the
  // run seed and the row's global sample index. Undefined, or training false: no dropout.
  at::Tensor sample_keys;
  bool training = false;
  // [B, T] int64 next-token targets, -100 where no loss. Defined: the head returns the loss.
  at::Tensor targets;
};

class Unit {
 public:
  virtual ~Unit() = default;
  // "embed", "layers.N" or "head".
  virtual const std::string& name() const = 0;
  virtual const std::vector<ParamSpec>& schema() const = 0;
  // `params` follows schema() order (tied parameters included, as views of their owner).
  // embed: x is token ids [B, T] int64 -> hidden [B, T, H]; layers.N: hidden -> hidden;
  // head: hidden -> logits [B, T, V]; or, when ctx.targets is defined, the summed
  // cross-entropy against them (an fp32 scalar), computed without the full logits.
  // `sinks` is empty or follows schema() order: where sinks[i] is defined (only for a parameter
  // whose ParamSpec::grad_sink is set), params[i] needs no gradient and backward writes the
  // parameter's gradient into the sink instead.
  virtual at::Tensor forward(const at::Tensor& x, at::TensorList params, const GradSinks& sinks,
                             const StepContext& ctx) const = 0;
  at::Tensor forward(const at::Tensor& x, at::TensorList params, const StepContext& ctx) const {
    return forward(x, params, GradSinks(), ctx);
  }
};

using UnitList = std::vector<std::unique_ptr<Unit>>;

}  // namespace dstrain::base
