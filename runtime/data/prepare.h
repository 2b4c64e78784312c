#pragma once
// Text and JSONL to .dstok with a model's tokenizer (tokenizer/tokenizer.h; "byte" is the built-in
// byte tokenizer). The CLI wires these to `dstrain prepare`; bad input is kBadInput with
// `file:line: problem`.
//
// Large inputs are cut into pieces at line boundaries (prepare_parts.h); several worker threads,
// each with its own tokenizer, tokenize pieces into part files under `<out>.parts/`, which are
// then concatenated in order. The cut points depend on the inputs only, so any number of workers
// writes the same file, and a re-run after an interruption reuses the finished parts.
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "runtime/data/tokenizer/tokenizer.h"

namespace dstrain::runtime {

struct PrepareStats {
  int64_t num_docs = 0;
  int64_t num_tokens = 0;
  int64_t num_target_tokens = 0;  // tokens whose mask is 1 (every token when there is no mask)
  int64_t reused_parts = 0;       // parts a previous, interrupted run had finished
  int64_t num_parts = 0;
};

struct PrepareOptions {
  std::string tokenizer = "byte";  // what load_tokenizer takes
  int workers = 1;                 // worker threads (each loads its own tokenizer)
  bool progress = false;           // a progress line on stderr
  uint64_t piece_bytes = 0;        // 0: the format's piece size; tests set small ones
};

// Each input file becomes one document: [bos] + its text + [eos] (bos and eos where the tokenizer
// has them). The output is a stream file (no mask) that also records the document offsets. Files
// must be UTF-8. A file up to 64 MiB is tokenized as one text; a larger one in pieces cut after a
// line break, each tokenized on its own.
base::Status prepare_text(const std::vector<std::string>& inputs, const std::string& out,
                          const PrepareOptions& options, PrepareStats* stats);

// Each non-blank line of each input is {"prompt": "...", "completion": "..."} (other fields are
// ignored) and becomes one document [bos] + prompt + completion + [eos], with mask 0 on bos and the
// prompt, 1 on the completion and eos: loss only where the model should answer.
base::Status prepare_sft_jsonl(const std::vector<std::string>& inputs, const std::string& out,
                               const PrepareOptions& options, PrepareStats* stats);

// The byte tokenizer on one worker, as before --tokenizer existed.
base::Status prepare_text(const std::vector<std::string>& inputs, const std::string& out,
                          PrepareStats* stats);
base::Status prepare_sft_jsonl(const std::vector<std::string>& inputs, const std::string& out,
                               PrepareStats* stats);

// One JSONL record (a non-blank line, `line` its 1-based number in `file`) to a document's tokens
// and loss mask (one 0/1 byte per token), appended to the empty `tokens` and `mask`. Errors are
// kBadInput "file:line: problem". For record formats beyond sft (chat).
using RecordEncoder = std::function<base::Status(
    const Tokenizer& tokenizer, const std::string& file, int64_t line, std::string_view record,
    std::vector<uint32_t>& tokens, std::vector<uint8_t>& mask)>;

// Every non-blank line of the inputs through `encode`, in parallel as above. `format` names the
// encoding in the resume key (parts of another format are never reused).
base::Status prepare_jsonl(const std::vector<std::string>& inputs, const std::string& out,
                           const std::string& format, const RecordEncoder& encode,
                           const PrepareOptions& options, PrepareStats* stats);

}  // namespace dstrain::runtime
