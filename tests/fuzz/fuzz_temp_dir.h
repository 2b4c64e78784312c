#pragma once
// A per-process scratch directory for fuzz targets whose parser reads a file, not a buffer.
// Removed when the process exits normally; libFuzzer's crash exits leave it for inspection.
#include <stdlib.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

namespace dstrain::fuzz {

class TempDir {
 public:
  TempDir() {
    const char* tmp = getenv("TMPDIR");
    std::string pattern = std::string(tmp != nullptr ? tmp : "/tmp") + "/dstrain-fuzz-XXXXXX";
    if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  bool ok() const { return !path_.empty(); }
  const std::string& path() const { return path_; }

  // Writes `data` to `<dir>/name` (replacing it); false when the file system refuses.
  bool write(const std::string& name, const uint8_t* data, size_t size) const {
    std::FILE* f = std::fopen((path_ + "/" + name).c_str(), "wb");
    if (f == nullptr) return false;
    bool good = size == 0 || std::fwrite(data, 1, size, f) == size;
    return std::fclose(f) == 0 && good;
  }

 private:
  std::string path_;
};

}  // namespace dstrain::fuzz
