#pragma once
// Loading a Hugging Face checkpoint's weights into the ZeRO engine. Each rank reads from the
// safetensors files only the byte ranges of the parameter pieces it holds (its shards at stage 3,
// everything at stage 0), so no rank ever materialises more of the model than it keeps.
#include <string>

#include "base/status.h"
#include "base/unit.h"
#include "runtime/hf/sharded_index.h"
#include "sharding/engine.h"

namespace dstrain::runtime::hf_model {

// Checks `ckpt` against the model before any tensor data is read: every parameter the schemas own
// is present with the schema's shape and dtype F32, BF16 or F16 (a tied slot such as lm_head.weight
// under tie_word_embeddings, and LoRA adapters, which a base checkpoint lacks and which then keep
// their initialisation, may be absent); other tensors are ignored when they are buffers
// (rotary inv_freq) and refused when they look like weights ("*.weight", "*.bias") the model does
// not have. Errors are kBadInput naming the file and the tensor.
base::Status check_hf_checkpoint(const hf::ShardedCheckpoint& ckpt, const base::UnitList& units);

// Opens `<hf_dir>/model.safetensors` or the sharded index, checks it (check_hf_checkpoint), writes
// every parameter piece of engine.state_slices(false) converted to the piece's dtype (optimizer
// moments stay as they are: zero for a fresh engine) and calls engine.finish_load(). Collective:
// call on every rank. Host memory in flight is bounded by one read chunk.
base::Status load_hf_weights(const std::string& hf_dir, sharding::Engine& engine);

}  // namespace dstrain::runtime::hf_model
