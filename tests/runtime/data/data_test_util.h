#pragma once
// Shared by the data tests: a scratch directory removed afterwards, and raw .dstok images that
// tests can corrupt byte by byte.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "runtime/data/token_file_format.h"

namespace dstrain::runtime::testing {

class ScratchDir {
 public:
  ScratchDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "dstrain-data-XXXXXX").string();
    std::vector<char> buf(pattern.begin(), pattern.end());
    buf.push_back('\0');
    char* made = ::mkdtemp(buf.data());
    path_ = made != nullptr ? made : "";
  }
  ~ScratchDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline void write_bytes(const std::string& path, const std::vector<uint8_t>& bytes) {
  write_file(path, std::string(bytes.begin(), bytes.end()));
}

inline std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

template <typename T>
void append_le(std::vector<uint8_t>& out, T value) {
  uint8_t bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out.insert(out.end(), bytes, bytes + sizeof(T));
}

// A .dstok image assembled field by field, independently of the library's encoder, so the
// tests also pin the documented layout.
struct RawImage {
  uint32_t version = 1;
  uint32_t token_bytes = 2;
  uint64_t vocab_size = 512;
  std::vector<uint32_t> tokens;
  std::vector<uint64_t> doc_offsets;  // empty: num_docs 0
  std::vector<uint8_t> mask;          // empty: no mask flag
  uint64_t extra_flags = 0;

  std::vector<uint8_t> bytes() const {
    std::vector<uint8_t> out;
    const char magic[] = "DSTOK001";
    out.insert(out.end(), magic, magic + 8);
    append_le<uint32_t>(out, version);
    append_le<uint32_t>(out, token_bytes);
    append_le<uint64_t>(out, vocab_size);
    append_le<uint64_t>(out, tokens.size());
    append_le<uint64_t>(out, doc_offsets.empty() ? 0 : doc_offsets.size() - 1);
    append_le<uint64_t>(out, (mask.empty() ? 0 : 1) | extra_flags);
    out.resize(64, 0);
    for (uint32_t t : tokens) {
      if (token_bytes == 2) {
        append_le<uint16_t>(out, static_cast<uint16_t>(t));
      } else {
        append_le<uint32_t>(out, t);
      }
    }
    for (uint64_t o : doc_offsets) append_le<uint64_t>(out, o);
    out.insert(out.end(), mask.begin(), mask.end());
    return out;
  }
};

}  // namespace dstrain::runtime::testing
