#pragma once
// The tokenizer interface `prepare` (and chat rendering) codes against, and the loader that picks
// an implementation from a path. Torch-free.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace dstrain::runtime {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Appends the ids of `text`, read as plain text (special-token strings inside it are
  // NOT turned into special ids), to `out`.
  virtual void encode(std::string_view text, std::vector<uint32_t>& out) const = 0;
  // The id of a token given by its exact content (added/special tokens such as
  // "<|im_start|>", or any vocabulary entry), or std::nullopt.
  virtual std::optional<uint32_t> token_id(std::string_view content) const = 0;
  virtual std::optional<uint32_t> bos_id() const = 0;  // from tokenizer_config / model
  virtual std::optional<uint32_t> eos_id() const = 0;
  virtual uint64_t vocab_size() const = 0;  // including added tokens
  virtual std::string decode(const std::vector<uint32_t>& ids) const = 0;
};

// A tokenizer.json (HF byte-level BPE), a tokenizer.model (SentencePiece), or a Hugging Face
// directory holding one of them (+ tokenizer_config.json for bos/eos). "byte" gives the
// built-in byte tokenizer. Bad files: kBadInput naming the file and the problem.
base::StatusOr<std::unique_ptr<Tokenizer>> load_tokenizer(const std::string& path);

}  // namespace dstrain::runtime
