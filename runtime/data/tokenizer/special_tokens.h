#pragma once
// bos/eos named in a Hugging Face tokenizer_config.json.
#include <optional>
#include <string>

#include "base/status.h"

namespace dstrain::runtime {

struct SpecialTokenNames {
  std::optional<std::string> bos;  // content of bos_token, when set and not null
  std::optional<std::string> eos;
};

// Reads `path`; a missing file gives no names. A file that is not JSON is kBadInput.
base::StatusOr<SpecialTokenNames> read_special_token_names(const std::string& path);

}  // namespace dstrain::runtime
