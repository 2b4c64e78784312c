#pragma once
// The checkpoint's write path goes through this interface so tests can make it fail (ENOSPC,
// EIO) at a chosen byte, as RocksDB's fault-injection file system does.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "base/status.h"

namespace dstrain::runtime::checkpoint {

// One open file. Not thread-safe; owned by the thread that writes the file.
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
  virtual base::StatusOr<std::unique_ptr<FileWriter>> open(const std::string& path, bool truncate) = 0;
};

// The real thing: pwrite + fsync.
class PosixIo : public CheckpointIo {
 public:
  base::StatusOr<std::unique_ptr<FileWriter>> open(const std::string& path, bool truncate) override;
};

// Passes writes to `base` until `budget_bytes` have been written in total (over every file it
// opened), then fails each further write with ENOSPC, as a full disk does.
class FaultInjectionIo : public CheckpointIo {
 public:
  FaultInjectionIo(CheckpointIo& base, int64_t budget_bytes) : base_(base), budget_(budget_bytes) {}
  base::StatusOr<std::unique_ptr<FileWriter>> open(const std::string& path, bool truncate) override;
  int64_t written() const { return written_; }

 private:
  friend class FaultInjectionWriter;
  CheckpointIo& base_;
  int64_t budget_;
  int64_t written_ = 0;
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
