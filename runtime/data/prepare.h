#pragma once
// Text to .dstok with the byte-level tokenizer (byte_tokenizer.h). The CLI wires these to
// `dstrain prepare`; bad input is kBadInput with `file:line: problem`.
#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace dstrain::runtime {

struct PrepareStats {
  int64_t num_docs = 0;
  int64_t num_tokens = 0;
  int64_t num_target_tokens = 0;  // tokens whose mask is 1 (every token when there is no mask)
};

// Each input file becomes one document: <bos> + its bytes + <eos>. The output is a stream file
// (no mask) that also records the document offsets. Files must be UTF-8.
base::Status prepare_text(const std::vector<std::string>& inputs, const std::string& out,
                          PrepareStats* stats);

// Each non-blank line of each input is {"prompt": "...", "completion": "..."} (other fields are
// ignored) and becomes one document <bos> + prompt + completion + <eos>, with mask 0 on <bos> and
// the prompt, 1 on the completion and <eos>: loss only where the model should answer.
base::Status prepare_sft_jsonl(const std::vector<std::string>& inputs, const std::string& out,
                               PrepareStats* stats);

}  // namespace dstrain::runtime
