#pragma once
// GPT-2's byte-to-character map, which byte-level BPE vocabularies are written in: every byte is
// one printable code point, so a vocabulary key is a string of such characters.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace dstrain::runtime {

class ByteLevelMap {
 public:
  ByteLevelMap();
  // The UTF-8 of the character that stands for `byte`.
  const std::string& encode_byte(uint8_t byte) const { return chars_[byte]; }
  // The raw bytes a vocabulary key stands for, or nullopt when it holds a character outside the
  // map (such a key can only be reached as an added token).
  std::optional<std::string> decode(std::string_view key) const;

 private:
  std::array<std::string, 256> chars_;
  std::array<int16_t, 324> byte_of_code_point_;  // -1: not a mapped character
};

}  // namespace dstrain::runtime
