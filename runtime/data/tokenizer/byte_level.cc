#include "runtime/data/tokenizer/byte_level.h"

namespace dstrain::runtime {
namespace {

std::string utf8_of(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else {
    // Every mapped code point is below U+0800, so two bytes suffice.
    s.push_back(static_cast<char>(0xc0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3f)));
  }
  return s;
}

bool printable_latin1(uint32_t b) {
  return (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
}

}  // namespace

ByteLevelMap::ByteLevelMap() {
  byte_of_code_point_.fill(-1);
  // Printable Latin-1 bytes stand for themselves; the rest take code points 256, 257, ... in
  // byte order, which keeps every character visible in the vocabulary file.
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    uint32_t cp = printable_latin1(b) ? b : next++;
    chars_[b] = utf8_of(cp);
    byte_of_code_point_[cp] = static_cast<int16_t>(b);
  }
}

std::optional<std::string> ByteLevelMap::decode(std::string_view key) const {
  std::string out;
  out.reserve(key.size());
  size_t i = 0;
  while (i < key.size()) {
    auto c = static_cast<unsigned char>(key[i]);
    uint32_t cp;
    if (c < 0x80) {
      cp = c;
      i += 1;
    } else if ((c & 0xe0) == 0xc0 && i + 1 < key.size()) {
      cp = ((c & 0x1fu) << 6) | (static_cast<unsigned char>(key[i + 1]) & 0x3fu);
      i += 2;
    } else {
      return std::nullopt;
    }
    if (cp >= byte_of_code_point_.size() || byte_of_code_point_[cp] < 0) return std::nullopt;
    out.push_back(static_cast<char>(byte_of_code_point_[cp]));
  }
  return out;
}

}  // namespace dstrain::runtime
