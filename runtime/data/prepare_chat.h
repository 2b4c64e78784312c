#pragma once
// `dstrain prepare --format chat`: chat JSONL (chat_template.h) to a .dstok file with documents
// and a loss mask, tokenized by the model's own tokenizer, through prepare_jsonl (parallel,
// resumable).
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "runtime/data/chat_template.h"
#include "runtime/data/prepare.h"
#include "runtime/data/tokenizer/tokenizer.h"

namespace dstrain::runtime {

// One conversation (a non-blank JSONL line, `line` its 1-based number in `file`) rendered in
// `format` and tokenized, appended to `tokens` and `mask` (1 on assistant content and
// end-of-turn tokens). Errors are kBadInput "file:line: problem".
base::Status encode_chat_record(ChatFormat format, const Tokenizer& tokenizer,
                                const std::string& file, int64_t line, std::string_view record,
                                std::vector<uint32_t>& tokens, std::vector<uint8_t>& mask);

// Each non-blank line of each input becomes one document.
base::Status prepare_chat_jsonl(const std::vector<std::string>& inputs, const std::string& out,
                                ChatFormat format, const PrepareOptions& options,
                                PrepareStats* stats);

}  // namespace dstrain::runtime
