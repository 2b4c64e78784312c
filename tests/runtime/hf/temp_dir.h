#pragma once
// Per-test scratch directory, removed with its contents at the end of the test. ctest runs tests
// in parallel, so each gets its own mkdtemp directory.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

namespace dstrain::runtime::hf {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = testing::TempDir() + "dstrain_hf_XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) ADD_FAILURE() << "mkdtemp failed for " << tmpl;
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline void write_bytes(const std::string& path, const std::string& bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  ASSERT_NE(f, nullptr) << path;
  ASSERT_EQ(std::fwrite(bytes.data(), 1, bytes.size(), f), bytes.size());
  ASSERT_EQ(std::fclose(f), 0);
}

inline std::string u64_le(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

// A safetensors file with a hand-written header and `data_bytes` bytes of data (value 0xAB).
inline void write_crafted(const std::string& path, const std::string& header, size_t data_bytes) {
  write_bytes(path, u64_le(header.size()) + header + std::string(data_bytes, '\xab'));
}

}  // namespace dstrain::runtime::hf
