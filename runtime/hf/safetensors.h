#pragma once
// Reading and writing Hugging Face safetensors files without LibTorch.
// Layout: u64 little-endian header length N, N bytes of JSON header, then the data section.
// The header maps tensor names to {dtype, shape, data_offsets:[begin,end]} (offsets relative to
// the data section) plus an optional "__metadata__" string map.
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/status.h"
#include "runtime/hf/unique_fd.h"

namespace dstrain::runtime::hf {

// Bytes per element of a safetensors dtype name ("F32", "BF16", ...); 0 when unknown.
size_t dtype_size(const std::string& dtype);

// Largest header accepted; real headers are kilobytes, this bounds memory for a hostile file.
inline constexpr uint64_t kMaxHeaderBytes = 100ull * 1000 * 1000;

struct TensorInfo {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets from the start of the FILE (not of the data section)
  uint64_t end = 0;
  uint64_t nbytes() const { return end - begin; }
};

// An open, fully validated safetensors file. Move-only; owns the file descriptor.
// read() uses pread only, so one SafetensorsFile may be read from several threads at once.
class SafetensorsFile {
 public:
  // Opens and validates the header (bounds, JSON, dtypes, shapes, offsets tiling the data section
  // exactly, unique names) before any tensor data is read. Every problem is kBadInput naming the
  // file, and the tensor when one is involved.
  static base::StatusOr<SafetensorsFile> open(const std::string& path);

  SafetensorsFile(SafetensorsFile&&) = default;
  SafetensorsFile& operator=(SafetensorsFile&&) = default;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // In file order: by data offset (ties between empty tensors by name).
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // nullptr when the file has no tensor of that name.
  const TensorInfo* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  uint64_t file_size() const { return file_size_; }

  // Copies bytes [offset, offset + nbytes) of `t`'s data into `dst` (the caller owns dst, at
  // least nbytes long), so a rank reads only the ranges it keeps. `t` must come from this file.
  base::Status read(const TensorInfo& t, uint64_t offset, uint64_t nbytes, void* dst) const;

 private:
  SafetensorsFile() = default;

  std::string path_;
  UniqueFd fd_;
  uint64_t file_size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

// One tensor to write; `data` is borrowed (nbytes long, host memory) for the call only.
struct TensorData {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  uint64_t nbytes = 0;
};

// Writes a safetensors file that Hugging Face's loaders read: data ordered by tensor name, header
// padded with spaces to a multiple of 8 bytes so the data section is aligned. Writes `path.tmp`,
// fsyncs it, then renames it over `path`, so readers never see a partial file. A malformed
// request (unknown dtype, size not matching shape, repeated name) is kInvalidArgument; a refusal
// of the file system is kIOError.
base::Status write_safetensors(const std::string& path, const std::vector<TensorData>& tensors,
                               const std::map<std::string, std::string>& metadata);

}  // namespace dstrain::runtime::hf
