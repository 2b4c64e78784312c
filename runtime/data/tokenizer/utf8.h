#pragma once
// UTF-8 checks shared by the tokenizers and `prepare`.
#include <cstdint>
#include <string>
#include <string_view>

namespace dstrain::runtime {

// Offset of the first byte that breaks UTF-8 (overlong forms, surrogates and code points above
// U+10FFFF included), or -1 when `text` is valid.
int64_t first_invalid_utf8(std::string_view text);

// `text` with each byte that starts no valid sequence replaced by U+FFFD, so a regex engine in
// UTF mode can read it.
std::string repair_utf8(std::string_view text);

}  // namespace dstrain::runtime
