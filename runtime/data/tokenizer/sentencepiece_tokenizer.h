#pragma once
// A SentencePiece tokenizer.model (Llama 2, Mistral) through Debian's libsentencepiece.
#include <memory>
#include <string>

#include "base/status.h"
#include "runtime/data/tokenizer/tokenizer.h"

namespace dstrain::runtime {

// `config_path`: a tokenizer_config.json naming bos/eos, or empty (the model's own then).
base::StatusOr<std::unique_ptr<Tokenizer>> load_sentencepiece_tokenizer(
    const std::string& model_path, const std::string& config_path);

}  // namespace dstrain::runtime
