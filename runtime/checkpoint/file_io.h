#pragma once
// The checkpoint's write path goes through this interface so tests can make it fail (ENOSPC,
// EIO) at a chosen byte, as RocksDB's fault-injection file system does.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "base/status.h"

namespace dstrain::runtime::checkpoint {

// What direct I/O asks of a request: file offset, length and memory address all multiples of it.
inline constexpr int64_t kDirectIoAlignment = 4096;

// One open file. Not thread-safe: one thread at a time calls it (a write pipeline hands it from
// thread to thread, one call after another).
class FileWriter {
 public:
  virtual ~FileWriter() = default;
  virtual base::Status write_at(int64_t offset, const void* data, size_t n) = 0;
  // fsync: the bytes written so far are durable when this returns Ok.
  virtual base::Status sync() = 0;
};

class CheckpointIo {
 public:
  virtual ~CheckpointIo() = default;
  // Opens `path` for writing; `truncate` creates it or empties it, otherwise it must exist.
  virtual base::StatusOr<std::unique_ptr<FileWriter>> open(const std::string& path,
                                                           bool truncate) = 0;
  // Opens the existing `path` for large writes that should bypass the page cache: the parts of a
  // write that are aligned to kDirectIoAlignment (offset, length and memory) go straight to the
  // disk where the file system allows, the rest through the page cache. Same bytes either way.
  virtual base::StatusOr<std::unique_ptr<FileWriter>> open_direct(const std::string& path) {
    return open(path, /*truncate=*/false);
  }
};

// The real thing: pwrite + fsync; open_direct adds an O_DIRECT descriptor for aligned writes.
class PosixIo : public CheckpointIo {
 public:
  base::StatusOr<std::unique_ptr<FileWriter>> open(const std::string& path, bool truncate) override;
  base::StatusOr<std::unique_ptr<FileWriter>> open_direct(const std::string& path) override;
};

// Passes writes to `base` until `budget_bytes` have been written in total (over every file it
// opened), then fails each further write with ENOSPC, as a full disk does.
class FaultInjectionIo : public CheckpointIo {
 public:
  FaultInjectionIo(CheckpointIo& base, int64_t budget_bytes) : base_(base), budget_(budget_bytes) {}
  base::StatusOr<std::unique_ptr<FileWriter>> open(const std::string& path, bool truncate) override;
  base::StatusOr<std::unique_ptr<FileWriter>> open_direct(const std::string& path) override;
  int64_t written() const { return written_; }

 private:
  friend class FaultInjectionWriter;
  CheckpointIo& base_;
  int64_t budget_;
  int64_t written_ = 0;
};

// Host memory aligned for direct I/O, owned; its contents start undefined.
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  // IOError when the memory cannot be had.
  static base::StatusOr<AlignedBuffer> allocate(size_t bytes);
  ~AlignedBuffer();
  AlignedBuffer(AlignedBuffer&& o) noexcept;
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  char* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  AlignedBuffer(char* data, size_t size) : data_(data), size_(size) {}
  char* data_ = nullptr;
  size_t size_ = 0;
};

// Writes `text` to `path` through `io` and fsyncs it.
base::Status write_file(CheckpointIo& io, const std::string& path, const std::string& text);
// fsync of a directory, so renames and new entries in it are durable.
base::Status sync_dir(const std::string& dir);
// rename(2) with a Status.
base::Status rename_path(const std::string& from, const std::string& to);
// The whole file as text; kBadInput naming it when missing.
base::StatusOr<std::string> read_text_file(const std::string& path);

}  // namespace dstrain::runtime::checkpoint
