#pragma once
// The pre_tokenizer chain of a tokenizer.json: regex Split steps (PCRE2 with UTF and UCP, JIT
// compiled), Digits, and ByteLevel's optional GPT-2 split and prefix space. Each step splits every
// piece the previous step produced, as Hugging Face `tokenizers` does.
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace dstrain::runtime {

class PreTokenizer {
 public:
  // `spec` is the JSON text of the "pre_tokenizer" value; `file` names it in errors.
  // `has_byte_level` tells whether a ByteLevel step was seen (byte-level BPE needs one).
  static base::StatusOr<PreTokenizer> parse(const std::string& spec, const std::string& file,
                                            bool* has_byte_level);

  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;
  ~PreTokenizer();

  // Calls `sink` with each pre-token of `text` (valid UTF-8) in order, empty ones left out. A
  // pre-token is valid only during its call (a prefix space makes new text). Streaming keeps the
  // memory flat for texts of any size.
  using Sink = std::function<void(std::string_view)>;
  void split(std::string_view text, const Sink& sink) const;

  struct Step;

 private:
  PreTokenizer();
  void run(size_t step, std::string_view piece, const Sink& sink) const;
  std::vector<std::unique_ptr<Step>> steps_;
};

}  // namespace dstrain::runtime
