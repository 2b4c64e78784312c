#pragma once
// Hugging Face tokenizer.json byte-level BPE (GPT-2, Llama 3, Qwen2, DeepSeek): normalizer,
// pre_tokenizer chain, merges by rank, added tokens. Equal, id for id, to `tokenizers`' encode
// with add_special_tokens=False and special tokens read as text.
#include <memory>
#include <string>

#include "base/status.h"
#include "runtime/data/tokenizer/tokenizer.h"

namespace dstrain::runtime {

// `json_path` is the tokenizer.json; `config_path` a tokenizer_config.json for bos/eos, or empty.
base::StatusOr<std::unique_ptr<Tokenizer>> load_bpe_tokenizer(const std::string& json_path,
                                                              const std::string& config_path);

}  // namespace dstrain::runtime
