#pragma once
// Owned POSIX file handles for the data layer: a descriptor, a read-only mapping, and a write
// loop that reports errno. Torch-free.
#include <cstddef>
#include <cstdint>
#include <string>

#include "base/status.h"

namespace dstrain::runtime {

// Owns one file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  ~UniqueFd();

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release();
  // Closes now and reports a failed close (which can carry a deferred write error).
  base::Status close(const std::string& path);

 private:
  int fd_ = -1;
};

// A whole file mapped read-only; unmapped on destruction. An empty file maps to nothing.
class MappedFile {
 public:
  MappedFile() = default;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  ~MappedFile();

  // Errors are kBadInput: a data file the user named is missing or unreadable.
  static base::StatusOr<MappedFile> open(const std::string& path);

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  void unmap();
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// Writes all of [data, data + size) at the descriptor's position, retrying short writes and EINTR.
base::Status write_all(int fd, const void* data, size_t size, const std::string& path);
// Same at an explicit offset (pwrite), leaving the descriptor's position alone.
base::Status pwrite_all(int fd, const void* data, size_t size, uint64_t offset,
                        const std::string& path);

// "path: what: strerror(errno)" as an I/O error.
base::Status errno_status(const std::string& path, const std::string& what, int err);

}  // namespace dstrain::runtime
