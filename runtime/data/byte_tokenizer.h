#pragma once
// The built-in byte-level tokenizer: ids 0..255 are the bytes themselves, then three specials.
// Used by `prepare` and the demo corpus; real models bring their own tokenizer and token files.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dstrain::runtime {

inline constexpr uint32_t kByteBos = 256;
inline constexpr uint32_t kByteEos = 257;
inline constexpr uint32_t kBytePad = 258;
inline constexpr uint64_t kByteVocabSize = 259;

// Appends one id per byte of `text` to `out`.
void byte_encode(std::string_view text, std::vector<uint32_t>& out);
// The bytes back; special ids are dropped.
std::string byte_decode(const std::vector<uint32_t>& ids);

// Offset of the first byte that breaks UTF-8 (overlong forms, surrogates and code points above
// U+10FFFF included), or -1 when `text` is valid.
int64_t first_invalid_utf8(std::string_view text);

}  // namespace dstrain::runtime
