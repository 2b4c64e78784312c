#pragma once
// The built-in byte-level tokenizer: ids 0..255 are the bytes themselves, then three specials.
// Used by `prepare` and the demo corpus; real models bring their own tokenizer and token files.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/data/tokenizer/utf8.h"  // first_invalid_utf8, used with byte_encode

namespace dstrain::runtime {

inline constexpr uint32_t kByteBos = 256;
inline constexpr uint32_t kByteEos = 257;
inline constexpr uint32_t kBytePad = 258;
inline constexpr uint64_t kByteVocabSize = 259;

// Appends one id per byte of `text` to `out`.
void byte_encode(std::string_view text, std::vector<uint32_t>& out);
// The bytes back; special ids are dropped.
std::string byte_decode(const std::vector<uint32_t>& ids);

}  // namespace dstrain::runtime
