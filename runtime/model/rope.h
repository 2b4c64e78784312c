#pragma once
// Rotary position embeddings with Hugging Face's scaling variants (transformers'
// modeling_rope_utils.py): default, linear, dynamic (NTK), llama3 and yarn.
#include <ATen/ATen.h>

#include <cstdint>
#include <string>

#include "base/config.h"
#include "base/status.h"
#include "base/unit.h"

namespace dstrain::runtime {

enum class RopeType { kDefault, kLinear, kDynamic, kLlama3, kYarn };

// "none" and "default" are both the unscaled rotary embedding.
base::StatusOr<RopeType> parse_rope_type(const std::string& name);

// Checks the rope_scaling fields the chosen type reads.
base::Status validate_rope_config(const base::ModelConfig& cfg);

struct RopeFrequencies {
  at::Tensor inv_freq;             // [head_dim / 2] fp32, on the requested device
  double attention_scaling = 1.0;  // multiplies cos and sin (yarn)
};

// Inverse frequencies as HF computes them, in fp32. `seq_len` (max position + 1 of the batch)
// matters only for dynamic scaling, which rescales the base beyond max_position_embeddings.
base::StatusOr<RopeFrequencies> rope_frequencies(const base::ModelConfig& cfg, int64_t seq_len,
                                                 const at::Device& device);

// Rotary cos/sin [B, T, head_dim] for `position_ids` [B, T], computed once per micro-batch in
// fp32 and cast to `dtype`; attn_mask is left undefined (causal). Dynamic scaling reads the
// largest position on the host (one synchronisation per batch, only for that type).
// Precondition: validate_rope_config(cfg) is ok (checked at model build); otherwise it fails
// as an ATen argument check does (c10::Error), which the caller's forward boundary converts.
base::StepContext make_step_context(const base::ModelConfig& cfg, const at::Tensor& position_ids,
                                    at::ScalarType dtype);

}  // namespace dstrain::runtime
