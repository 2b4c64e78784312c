#include "runtime/data/byte_tokenizer.h"

namespace dstrain::runtime {

void byte_encode(std::string_view text, std::vector<uint32_t>& out) {
  out.reserve(out.size() + text.size());
  for (char c : text) out.push_back(static_cast<unsigned char>(c));
}

std::string byte_decode(const std::vector<uint32_t>& ids) {
  std::string out;
  for (uint32_t id : ids) {
    if (id < 256) out.push_back(static_cast<char>(id));
  }
  return out;
}

}  // namespace dstrain::runtime
